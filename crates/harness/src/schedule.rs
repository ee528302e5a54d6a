//! The nemesis schedule: generated up front from the seed, so one seed is one schedule.
//!
//! The harness cluster runs with short leases ([`LEASE_MS`], [`GRACE_MS`]): a node that cannot
//! renew its lease for 2 s stops its VMs, and the leader declares it down (and re-places its
//! VMs) after 3 s of silence. So a kill, a pause or an isolation longer than 3 s is judged by the
//! never-ran-twice checker, and [`Fault::FreezeLeader`] always lasts past lease + grace.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Lease the harness cluster is created with (`--lease-ms` at `--init`).
pub const LEASE_MS: u64 = 2_000;
/// Grace after the lease before the leader declares a silent node down (`--grace-ms`).
pub const GRACE_MS: u64 = 1_000;
/// How often nodes heartbeat the leader (`--liveness-heartbeat-ms`).
pub const HEARTBEAT_MS: u64 = 250;

/// Seeds `crates/harness/tests/fault.rs` runs for 30 s on 3 nodes: together they draw every
/// fault kind except the membership change and netem (a unit test below checks it): seed 53 a
/// partition, a leader freeze, preemption and a shrink; 50 an isolated leader, a kill, a shrink
/// and preemption; 59 two pauses, preemption and a shrink.
pub const CI_SEEDS: [u64; 3] = [53, 50, 59];
/// The CI seed that draws the membership change (30 s, 3 nodes), with an isolated leader, a
/// leader freeze and a partition.
pub const CI_REPLACE_SEED: u64 = 14;
/// Workload length of the CI runs, in ms.
pub const CI_DURATION_MS: u64 = 30_000;

/// One fault. Nodes are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Node `node` cut off from every other node (a minority of one; the rest keep a majority).
    /// Clients still reach it: reads sent there must not be stale.
    Isolate { node: usize },
    /// Whoever leads when the fault starts is cut off from the others.
    IsolateLeader,
    /// Two halves that cannot talk: `side` against the rest (with 3 nodes, the same as Isolate).
    Partition { side: Vec<usize> },
    /// `kill -9` the daemon; restart it (same data dir) when the fault ends.
    Kill { node: usize },
    /// `SIGSTOP` the daemon; `SIGCONT` when the fault ends.
    Pause { node: usize },
    /// tc netem delay and loss on the node's link (skipped when the kernel lacks netem).
    Netem {
        node: usize,
        delay_ms: u64,
        loss_pct: u64,
    },
    /// Membership change: remove the node in slot `node` through Raft, then start a new node
    /// (fresh data dir, new id) in the same namespace that joins the cluster.
    Replace { node: usize },
    /// `SIGSTOP` whoever leads when the fault starts, for longer than lease + grace (so the
    /// others elect a new leader, which declares the frozen node down and re-places its VMs);
    /// `SIGCONT` when the fault ends. The woken ex-leader must not act on its old verdicts.
    FreezeLeader,
    /// A client creates a VM of priority 90 with `preempt`, pinned to the node running the most
    /// VMs and as large as a whole node (the harness gives each node [`crate::cluster::VCPUS`]),
    /// so every running VM there (all of lower priority) must stop before it starts; the VM is
    /// deleted when the fault ends.
    Preempt,
    /// Re-registration under load: the daemon running the most VMs gets SIGTERM and restarts
    /// from its data dir with [`crate::cluster::SHRUNK_VCPUS`] vCPUs, so its running VMs no
    /// longer fit and must stop there before they run elsewhere; when the fault ends it
    /// restarts again with its full capacity.
    Shrink,
}

impl Fault {
    /// The kind's name, as in the JSON schedule (`isolate`, `freeze_leader`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Isolate { .. } => "isolate",
            Fault::IsolateLeader => "isolate_leader",
            Fault::Partition { .. } => "partition",
            Fault::Kill { .. } => "kill",
            Fault::Pause { .. } => "pause",
            Fault::Netem { .. } => "netem",
            Fault::Replace { .. } => "replace",
            Fault::FreezeLeader => "freeze_leader",
            Fault::Preempt => "preempt",
            Fault::Shrink => "shrink",
        }
    }

    /// Shortest and longest duration (ms) drawn for the kind.
    fn durations(&self) -> (u64, u64) {
        match self {
            // past lease + grace counted from the next leader's election (up to ~2 s under load),
            // plus time for that leader to declare it down and move its VMs
            Fault::FreezeLeader => (LEASE_MS + GRACE_MS + 3_000, LEASE_MS + GRACE_MS + 5_000),
            // victims stop, then the preempting VM starts
            Fault::Preempt => (3_000, 6_000),
            // a graceful stop, a restart, re-registration and the evacuation
            Fault::Shrink => (4_000, 7_000),
            _ => (1_500, 5_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Start, in ms after the workload started.
    pub at_ms: u64,
    /// How long the fault lasts before it is healed.
    pub dur_ms: u64,
    pub fault: Fault,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub seed: u64,
    pub nodes: usize,
    pub duration_ms: u64,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Faults one at a time, each 1.5-5 s (longer than the election timeout; the freeze,
    /// preemption and shrink longer, see [`Fault`]), separated by 1-3 s of healthy network.
    /// The first fault always isolates one node for at least 3 s, so every run exercises reads
    /// served by a node cut off from the quorum.
    pub fn generate(seed: u64, nodes: usize, duration_ms: u64) -> Schedule {
        Self::generate_with(seed, nodes, duration_ms, true)
    }

    /// `replace`: whether membership changes may be scheduled (when not, a kill takes their
    /// place, so the rest of the schedule stays the same).
    pub fn generate_with(seed: u64, nodes: usize, duration_ms: u64, replace: bool) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut steps = Vec::new();
        let mut t = rng.gen_range(1_000..2_500);
        let end = duration_ms.saturating_sub(2_000);
        let mut first = true;
        let mut replaced = false;
        while t + 1_500 < end {
            let node = rng.gen_range(1..=nodes);
            let fault = if first {
                Fault::Isolate { node }
            } else {
                match rng.gen_range(0..10) {
                    0 => Fault::Isolate { node },
                    1 => Fault::IsolateLeader,
                    2 => {
                        let mut side: Vec<usize> =
                            (1..=nodes).filter(|_| rng.gen_bool(0.5)).collect();
                        if side.is_empty() || side.len() == nodes {
                            side = vec![node];
                        }
                        Fault::Partition { side }
                    }
                    3 => Fault::Kill { node },
                    4 => Fault::Pause { node },
                    6 if replace && !replaced => {
                        replaced = true;
                        Fault::Replace { node }
                    }
                    6 => Fault::Kill { node },
                    7 => Fault::FreezeLeader,
                    8 => Fault::Preempt,
                    9 => Fault::Shrink,
                    _ => Fault::Netem {
                        node,
                        delay_ms: rng.gen_range(20..200),
                        loss_pct: rng.gen_range(0..20),
                    },
                }
            };
            let (min, max) = if first {
                (3_000, 5_000)
            } else {
                fault.durations()
            };
            if t + min > end {
                // too close to the end for this fault to mean anything
                break;
            }
            let dur = rng.gen_range(min..max).min(end - t);
            steps.push(Step {
                at_ms: t,
                dur_ms: dur,
                fault,
            });
            t += dur + rng.gen_range(1_000..3_000);
            first = false;
        }
        Schedule {
            seed,
            nodes,
            duration_ms,
            steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let a = Schedule::generate(42, 3, 40_000);
        assert_eq!(a, Schedule::generate(42, 3, 40_000));
        assert_ne!(a, Schedule::generate(43, 3, 40_000));
        assert!(a.steps.len() >= 4, "{a:?}");
        assert!(matches!(a.steps[0].fault, Fault::Isolate { .. }));
        for w in a.steps.windows(2) {
            assert!(
                w[0].at_ms + w[0].dur_ms < w[1].at_ms,
                "faults overlap: {w:?}"
            );
        }
        assert!(a.steps.iter().all(|s| s.at_ms + s.dur_ms <= 38_000));
        for s in &a.steps {
            if s.fault == Fault::FreezeLeader {
                assert!(s.dur_ms > LEASE_MS + GRACE_MS, "{s:?}");
            }
        }
        for seed in 0..50 {
            let s = Schedule::generate_with(seed, 3, 40_000, false);
            assert!(!s
                .steps
                .iter()
                .any(|s| matches!(s.fault, Fault::Replace { .. })));
            assert_eq!(
                s.steps.len(),
                Schedule::generate(seed, 3, 40_000).steps.len()
            );
        }
    }

    /// The CI seeds draw the never-twice faults (freeze the leader past lease + grace,
    /// preemption under load, re-registration with less capacity) and every network and
    /// process fault; the replace seed draws the membership change.
    #[test]
    fn ci_seeds_draw_every_fault_kind() {
        let mut kinds = BTreeSet::new();
        for seed in CI_SEEDS {
            let s = Schedule::generate(seed, 3, CI_DURATION_MS);
            kinds.extend(s.steps.iter().map(|s| s.fault.kind()));
        }
        for k in [
            "freeze_leader",
            "preempt",
            "shrink",
            "isolate",
            "isolate_leader",
            "partition",
            "kill",
            "pause",
        ] {
            assert!(
                kinds.contains(k),
                "CI seeds {CI_SEEDS:?} never draw {k}: {kinds:?}"
            );
        }
        let r = Schedule::generate(CI_REPLACE_SEED, 3, CI_DURATION_MS);
        assert!(
            r.steps
                .iter()
                .any(|s| matches!(s.fault, Fault::Replace { .. })),
            "{r:?}"
        );
    }
}
