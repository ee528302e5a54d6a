//! Liveness settings and the failure detector's pure rules.
//!
//! The lease, its grace and the heartbeat interval are cluster settings in the replicated
//! state, so every node fences on the same numbers the leader judges by: a node configured with
//! a longer lease than the leader's `lease + grace` would otherwise run a VM twice.
//!
//! [`verdicts`] is the failure detector itself, a pure function of the leader's local view (when
//! it last heard from each worker, on a monotonic clock) and the applied workers: it is tested
//! without processes, and `node::liveness` only feeds it and proposes what it returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;
use crate::model::NodeState;
use crate::spec::NodeId;

/// Bounds on the settings, so a typo cannot disable failure detection.
pub const MIN_HEARTBEAT_MS: u64 = 50;
pub const MAX_HEARTBEAT_MS: u64 = 60_000;
pub const MAX_LEASE_MS: u64 = 600_000;
pub const MAX_GRACE_MS: u64 = 600_000;

/// The cluster's lease settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessSettings {
    /// How long a node may keep running its workloads after its last renewed heartbeat.
    pub lease_ms: u64,
    /// Extra silence the leader waits, past the lease, before declaring a node down.
    pub grace_ms: u64,
    /// How often nodes heartbeat the leader.
    pub heartbeat_ms: u64,
    /// The lease before the last change, and when the change was committed (proposer's wall
    /// clock, ms). Leases are granted by the leader with its applied setting, so a lease
    /// granted under the previous one ends at most `previous_lease_ms` after the change: until
    /// then (plus grace) the detector judges by the longer of the two.
    pub previous_lease_ms: u64,
    pub changed_ms: u64,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        Self {
            lease_ms: 10_000,
            grace_ms: 5_000,
            heartbeat_ms: 1_000,
            previous_lease_ms: 10_000,
            changed_ms: 0,
        }
    }
}

impl LivenessSettings {
    /// Grace must be positive, and a lease must span at least two heartbeats (so one lost
    /// heartbeat does not fence a healthy node).
    pub fn validate(&self) -> Result<(), ApplyError> {
        if !(MIN_HEARTBEAT_MS..=MAX_HEARTBEAT_MS).contains(&self.heartbeat_ms) {
            return Err(ApplyError::invalid(format!(
                "heartbeat must be between {MIN_HEARTBEAT_MS} and {MAX_HEARTBEAT_MS} ms, got {}",
                self.heartbeat_ms
            )));
        }
        if self.lease_ms < 2 * self.heartbeat_ms || self.lease_ms > MAX_LEASE_MS {
            return Err(ApplyError::invalid(format!(
                "lease must be at least two heartbeats ({} ms) and at most {MAX_LEASE_MS} ms, got {}",
                2 * self.heartbeat_ms,
                self.lease_ms
            )));
        }
        if self.grace_ms == 0 || self.grace_ms > MAX_GRACE_MS {
            return Err(ApplyError::invalid(format!(
                "grace must be between 1 and {MAX_GRACE_MS} ms, got {}",
                self.grace_ms
            )));
        }
        Ok(())
    }

    /// The settings after a change of some fields at `now_ms` (the entry's time). `fresh`:
    /// no lease can exist yet (the cluster has no worker), so nothing is judged by the old one.
    pub fn merged(
        &self,
        lease_ms: Option<u64>,
        grace_ms: Option<u64>,
        heartbeat_ms: Option<u64>,
        now_ms: u64,
        fresh: bool,
    ) -> Self {
        let lease = lease_ms.unwrap_or(self.lease_ms);
        // Still inside the previous change's window: keep the longest lease that may be out.
        let outstanding = if now_ms < self.window_end_ms() {
            self.lease_ms.max(self.previous_lease_ms)
        } else {
            self.lease_ms
        };
        Self {
            lease_ms: lease,
            grace_ms: grace_ms.unwrap_or(self.grace_ms),
            heartbeat_ms: heartbeat_ms.unwrap_or(self.heartbeat_ms),
            previous_lease_ms: if fresh { lease } else { outstanding },
            changed_ms: now_ms,
        }
    }

    fn window_end_ms(&self) -> u64 {
        self.changed_ms
            .saturating_add(self.previous_lease_ms)
            .saturating_add(self.grace_ms)
    }

    /// The lease the failure detector judges by at wall-clock `now_ms`.
    pub fn verdict_lease_ms(&self, now_ms: u64) -> u64 {
        if now_ms < self.window_end_ms() {
            self.lease_ms.max(self.previous_lease_ms)
        } else {
            self.lease_ms
        }
    }

    /// Silence after which the leader may declare a node down at wall-clock `now_ms`: every
    /// lease it may hold has provably expired.
    pub fn down_after_ms(&self, now_ms: u64) -> u64 {
        self.verdict_lease_ms(now_ms).saturating_add(self.grace_ms)
    }
}

/// The leader's local view of one worker, in milliseconds of a monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// Last heartbeat received (or the start of this leader's grace period).
    pub last_ms: u64,
    /// Since when its heartbeats have been steady again while it is down.
    pub back_since_ms: Option<u64>,
}

/// The failure detector: which workers to declare down (silent for longer than lease + grace,
/// so their lease has provably expired) or up (steady heartbeats for three intervals while
/// down). `view` must hold every worker (the caller seeds missing ones with "now": a fresh
/// grace period). Pure: the caller owns the clock and the proposing.
///
/// `wall_ms` is the leader's wall clock, only to tell whether a lease change is recent (see
/// [`LivenessSettings::verdict_lease_ms`]); silences are measured on the monotonic `now_ms`.
pub fn verdicts(
    settings: &LivenessSettings,
    wall_ms: u64,
    workers: &BTreeMap<NodeId, NodeState>,
    view: &mut BTreeMap<NodeId, Seen>,
    now_ms: u64,
) -> Vec<(NodeId, NodeState)> {
    let down_after = settings.down_after_ms(wall_ms);
    let mut out = Vec::new();
    for (id, state) in workers {
        let seen = view.entry(*id).or_insert(Seen {
            last_ms: now_ms,
            back_since_ms: None,
        });
        let silent = now_ms.saturating_sub(seen.last_ms);
        match state {
            NodeState::Down => {
                if steady(settings, seen, silent, now_ms) {
                    out.push((*id, NodeState::Up));
                }
            }
            // Stopping gracefully: back up once its heartbeats are steady again (it restarted),
            // down once it has been silent as long as any other node.
            NodeState::ShuttingDown => {
                if silent > down_after {
                    seen.back_since_ms = None;
                    out.push((*id, NodeState::Down));
                } else if steady(settings, seen, silent, now_ms) {
                    out.push((*id, NodeState::Up));
                }
            }
            _ => {
                seen.back_since_ms = None;
                if silent > down_after {
                    out.push((*id, NodeState::Down));
                }
            }
        }
    }
    view.retain(|id, _| workers.contains_key(id));
    out
}

/// Whether a node's heartbeats have been steady (no gap of two intervals) for three intervals:
/// only then is a node that was away trusted again (no flapping).
fn steady(settings: &LivenessSettings, seen: &mut Seen, silent: u64, now_ms: u64) -> bool {
    if silent < settings.heartbeat_ms * 2 {
        let back = *seen.back_since_ms.get_or_insert(now_ms);
        now_ms.saturating_sub(back) >= settings.heartbeat_ms * 3
    } else {
        seen.back_since_ms = None;
        false
    }
}

/// Grants every worker a fresh grace period: at the start of a term, and when the leader finds
/// that it was itself not running for a while (frozen, starved): the silence it would measure
/// is its own, not the workers'.
pub fn regrant(view: &mut BTreeMap<NodeId, Seen>, now_ms: u64) {
    for s in view.values_mut() {
        s.last_ms = now_ms;
        s.back_since_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> LivenessSettings {
        LivenessSettings {
            lease_ms: 1000,
            grace_ms: 500,
            heartbeat_ms: 100,
            previous_lease_ms: 1000,
            changed_ms: 0,
        }
    }

    #[test]
    fn validation() {
        assert!(s().validate().is_ok());
        assert!(LivenessSettings { grace_ms: 0, ..s() }.validate().is_err());
        assert!(LivenessSettings {
            lease_ms: 150,
            ..s()
        }
        .validate()
        .is_err());
        assert!(LivenessSettings {
            heartbeat_ms: 0,
            ..s()
        }
        .validate()
        .is_err());
        assert!(LivenessSettings::default().validate().is_ok());
    }

    #[test]
    fn a_shorter_lease_is_judged_by_the_old_one_until_every_old_lease_ended() {
        let m = s().merged(Some(400), None, None, 10_000, false);
        // Leases granted just before the change may last 1000 ms more; then grace.
        assert_eq!(
            (m.lease_ms, m.down_after_ms(10_000), m.down_after_ms(11_499)),
            (400, 1500, 1500)
        );
        assert_eq!(m.down_after_ms(11_500), 900);
        // Two quick changes keep the longest outstanding lease.
        let m2 = m.merged(Some(300), None, None, 10_100, false);
        assert_eq!(m2.down_after_ms(10_200), 1500);
        // A longer lease applies at once (it is judged by itself).
        let m3 = s().merged(Some(2000), None, None, 10_000, false);
        assert_eq!(m3.down_after_ms(10_000), 2500);
        // A new cluster's first settings: no lease exists yet.
        let fresh = LivenessSettings::default().merged(Some(400), None, None, 10_000, true);
        assert_eq!(fresh.down_after_ms(10_000), 400 + 5000);
    }

    #[test]
    fn silence_past_lease_and_grace_is_down_and_steady_heartbeats_are_up() {
        let workers = BTreeMap::from([(1, NodeState::Up), (2, NodeState::Up)]);
        let mut view = BTreeMap::new();
        assert!(verdicts(&s(), 1_000_000, &workers, &mut view, 0).is_empty());
        view.get_mut(&1).unwrap().last_ms = 1400;
        assert!(
            verdicts(&s(), 1_000_000, &workers, &mut view, 1500).is_empty(),
            "exactly lease + grace is not yet down"
        );
        assert_eq!(
            verdicts(&s(), 1_000_000, &workers, &mut view, 1501),
            vec![(2, NodeState::Down)]
        );
        let down = BTreeMap::from([(1, NodeState::Up), (2, NodeState::Down)]);
        view.get_mut(&1).unwrap().last_ms = 1600;
        view.get_mut(&2).unwrap().last_ms = 1600;
        assert!(verdicts(&s(), 1_000_000, &down, &mut view, 1600).is_empty());
        view.get_mut(&2).unwrap().last_ms = 1900;
        assert_eq!(
            verdicts(&s(), 1_000_000, &down, &mut view, 1900),
            vec![(2, NodeState::Up)]
        );
    }

    #[test]
    fn a_leader_that_was_frozen_regrants_instead_of_judging() {
        let workers = BTreeMap::from([(1, NodeState::Up), (2, NodeState::Up)]);
        let mut view = BTreeMap::new();
        verdicts(&s(), 1_000_000, &workers, &mut view, 0);
        // The leader itself did not run for 20 s: everyone looks silent.
        regrant(&mut view, 20_000);
        assert!(verdicts(&s(), 1_000_000, &workers, &mut view, 20_001).is_empty());
    }

    #[test]
    fn a_node_shutting_down_comes_back_up_on_steady_heartbeats_or_goes_down_when_silent() {
        let workers = BTreeMap::from([(1, NodeState::Up), (2, NodeState::ShuttingDown)]);
        let mut view = BTreeMap::new();
        assert!(verdicts(&s(), 1_000_000, &workers, &mut view, 0).is_empty());
        // Its last heartbeats before stopping are not "steady again": it stopped sending.
        view.get_mut(&1).unwrap().last_ms = 250;
        assert!(verdicts(&s(), 1_000_000, &workers, &mut view, 250).is_empty());
        assert!(verdicts(&s(), 1_000_000, &workers, &mut view, 400).is_empty());
        // Restarted: heartbeats every interval for three intervals.
        for t in [500u64, 600, 700] {
            view.get_mut(&1).unwrap().last_ms = t;
            view.get_mut(&2).unwrap().last_ms = t;
            assert!(verdicts(&s(), 1_000_000, &workers, &mut view, t).is_empty());
        }
        view.get_mut(&1).unwrap().last_ms = 800;
        view.get_mut(&2).unwrap().last_ms = 800;
        assert_eq!(
            verdicts(&s(), 1_000_000, &workers, &mut view, 800),
            vec![(2, NodeState::Up)]
        );
        // Never back: down after lease + grace of silence, like any node.
        let mut view = BTreeMap::new();
        verdicts(&s(), 1_000_000, &workers, &mut view, 0);
        view.get_mut(&1).unwrap().last_ms = 1501;
        assert_eq!(
            verdicts(&s(), 1_000_000, &workers, &mut view, 1501),
            vec![(2, NodeState::Down)]
        );
    }

    #[test]
    fn departed_workers_leave_the_view() {
        let mut view = BTreeMap::from([(9, Seen::default())]);
        verdicts(
            &s(),
            1_000_000,
            &BTreeMap::from([(1, NodeState::Up)]),
            &mut view,
            5,
        );
        assert!(!view.contains_key(&9) && view.contains_key(&1));
    }
}
