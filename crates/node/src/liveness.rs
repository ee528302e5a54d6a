//! Liveness, leases and fencing: how the cluster tells a dead node from a live one, and how a
//! node cut off from the cluster makes sure its VMs stop before they run elsewhere.
//!
//! - Every node heartbeats the leader (local traffic, not log entries). The leader answers
//!   only after confirming its leadership with a quorum (ReadIndex), so a reply proves that at
//!   the time it was sent, the cluster had not moved on without this node.
//! - A successful reply renews the node's lease until `sent + lease`. The expiry is written to
//!   the lease file as a CLOCK_BOOTTIME deadline with the host's boot id; every workload
//!   supervisor (VMs and tasks, `blixard_vmm::supervisor`) reads it and kills its workload as
//!   soon as it cannot prove the lease valid (fencing works even if the daemon is stopped or
//!   dead, and no wall-clock step matters). The executor also refuses to
//!   start anything without a lease, and until it has applied the index the leader returned.
//! - Lease, grace and heartbeat interval are cluster settings in the replicated state
//!   (`blixard_core::LivenessSettings`), read from the applied state at each use.
//! - The leader tracks when it last heard from each worker (local state). After
//!   `lease + grace` of silence (the pure rule `blixard_core::liveness::verdicts`) it proposes
//!   a `LivenessVerdict{down, term}` (`apply` then reschedules the node's workloads with new
//!   epochs); when heartbeats return steadily, `up`. A verdict belongs to the term that decided
//!   it: it is proposed only locally, by the leader of that term, never forwarded, and `apply`
//!   refuses it if its log entry is of another term. A new leader first grants every node a
//!   fresh grace period, and so does a leader that notices it was not running for a while
//!   (frozen, starved): the silence it would measure is its own.
//! - The leader also drives drains (moving VMs off draining nodes, a few at a time) and
//!   replaces voters that stay down when a healthy learner exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blixard_core::liveness::{regrant, verdicts, Seen};
use blixard_core::{Command, NodeState};
use openraft::ChangeMembers;

use crate::node::Node;

/// Local lease of this node.
#[derive(Debug, Default)]
struct Lease {
    /// On the monotonic clock: a wall-clock step cannot extend (or cut) it.
    valid_until: Option<Instant>,
    /// The executor acts only once its applied index reached this.
    min_applied: u64,
}

/// The leader's local view of its workers.
#[derive(Debug, Default)]
struct LeaderView {
    term: Option<u64>,
    /// Heartbeats received, in ms of [`Liveness::clock`].
    seen: BTreeMap<u64, Seen>,
    down_since: HashMap<u64, Instant>,
    /// When the detector last ran, to notice that this process itself was not running.
    last_tick: Option<Instant>,
    /// When each node's heartbeat last arrived (while this node leads; shown by `node list`).
    heard: HashMap<u64, Instant>,
}

/// The leader, node -> ms since its heartbeat reached the leader, and when that was received.
type LeaderHeard = (u64, BTreeMap<u64, u64>, Instant);

pub struct Liveness {
    lease: Mutex<Lease>,
    view: Mutex<LeaderView>,
    revoked: std::sync::atomic::AtomicBool,
    /// Origin of the detector's monotonic milliseconds.
    origin: Instant,
    /// When this node last exchanged a message with each peer (see `quorum`).
    pub contact: Arc<blixard_transport::PeerContact>,
    /// When this node started, for the same.
    pub started: Instant,
    /// Set once this node announced it is shutting down: it heartbeats no more (so the
    /// detector does not take it for back up).
    stopping: std::sync::atomic::AtomicBool,
    /// What the leader's detector reported with the last read index: (leader, node -> ms since
    /// its last heartbeat, when received).
    from_leader: Mutex<Option<LeaderHeard>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            lease: Mutex::default(),
            view: Mutex::default(),
            revoked: std::sync::atomic::AtomicBool::new(false),
            origin: Instant::now(),
            contact: Arc::default(),
            started: Instant::now(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            from_leader: Mutex::default(),
        }
    }
}

/// A detector tick later than this after the previous one means this process was not running
/// (stopped, frozen, starved) for a while: the silence it measured is its own.
const PAUSE: Duration = Duration::from_secs(2);

impl Liveness {
    /// Whether this node may start VMs now: a valid lease, and caught up with the leader.
    pub fn may_act(&self, applied: u64) -> bool {
        let l = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        l.valid_until.is_some_and(|t| Instant::now() < t) && applied >= l.min_applied
    }

    pub fn lease_valid(&self) -> bool {
        let l = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        l.valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// Gives the lease up (leaving the cluster): nothing starts any more, and the workload
    /// supervisors fence whatever still runs. The revoked lease is written under the lease
    /// lock, and renewals check `revoked` under the same lock, so no renewal can rewrite a
    /// valid lease after this.
    pub fn revoke(&self, lease_file: &std::path::Path) {
        let mut l = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        self.revoked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        l.valid_until = None;
        if let Err(e) = write_lease(lease_file, 0) {
            tracing::warn!(error = %e, "writing the revoked lease");
        }
    }

    /// Renews the lease until `until` (monotonic clock, for this daemon) and writes the lease file
    /// with the same deadline on CLOCK_BOOTTIME (`deadline_ms`, for the supervisors), unless
    /// the lease was revoked.
    fn renew(
        &self,
        until: Instant,
        deadline_ms: Option<u64>,
        min_applied: u64,
        lease_file: &std::path::Path,
    ) {
        let mut l = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if l.valid_until.is_none_or(|t| until > t) {
            l.valid_until = Some(until);
        }
        l.min_applied = l.min_applied.max(min_applied);
        match deadline_ms {
            Some(deadline) => {
                if let Err(e) = write_lease(lease_file, deadline) {
                    tracing::error!(error = %e, path = %lease_file.display(), "cannot write the lease file: this node's workloads will be fenced");
                }
            }
            None => tracing::error!("cannot read CLOCK_BOOTTIME: the lease file is not renewed and this node's workloads will be fenced"),
        }
    }

    /// Milliseconds of the detector's monotonic clock.
    fn clock(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// On the leader: a heartbeat from `node` arrived.
    pub fn seen(&self, node: u64) {
        let now = self.clock();
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        v.seen.entry(node).or_default().last_ms = now;
        v.heard.insert(node, Instant::now());
    }

    /// On the leader: milliseconds since each node's last heartbeat reached it (only the nodes
    /// heard from while it leads).
    pub fn heard_ms_ago(&self) -> BTreeMap<u64, u64> {
        let v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        v.heard
            .iter()
            .map(|(id, t)| {
                (
                    *id,
                    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    /// On a follower: what the leader's detector said with a read index just received.
    pub(crate) fn record_leader_view(&self, leader: u64, heard: BTreeMap<u64, u64>) {
        *self.from_leader.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((leader, heard, Instant::now()));
    }

    /// The freshest heartbeat ages this node knows: its own detector's when it leads, else
    /// what the leader reported with a read index within the last second (so only right after a
    /// read barrier). Returns the observer (the leader) and node -> ms since its heartbeat.
    pub fn heartbeat_view(&self, me: u64, leading: bool) -> Option<(u64, BTreeMap<u64, u64>)> {
        if leading {
            return Some((me, self.heard_ms_ago()));
        }
        let l = self.from_leader.lock().unwrap_or_else(|p| p.into_inner());
        let (leader, heard, at) = l.as_ref()?;
        let age = at.elapsed();
        if age > Duration::from_secs(1) {
            return None;
        }
        let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        Some((
            *leader,
            heard
                .iter()
                .map(|(id, ms)| (*id, ms.saturating_add(age)))
                .collect(),
        ))
    }

    /// This node announced that it is shutting down.
    pub(crate) fn set_stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// On the leader: how long since `node` was last heard from (since this leader's term
    /// began, at most; unknown nodes count from now).
    pub fn silent_for(&self, node: u64) -> Duration {
        let now = self.clock();
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let seen = v.seen.entry(node).or_insert(Seen {
            last_ms: now,
            back_since_ms: None,
        });
        Duration::from_millis(now.saturating_sub(seen.last_ms))
    }
}

/// The lease file every workload supervisor of this node watches.
pub fn lease_file(node: &Node) -> PathBuf {
    node.config.data_dir.join("vms").join("lease")
}

/// Writes the lease file: valid until `deadline_ms` of CLOCK_BOOTTIME in this boot of the host
/// (`0`: revoked). See `blixard_vmm::supervisor` for how it is read.
fn write_lease(path: &std::path::Path, deadline_ms: u64) -> std::io::Result<()> {
    blixard_vmm::supervisor::write_lease(path, deadline_ms)
}

/// Heartbeats the leader and renews the lease, until the node stops.
pub async fn heartbeat_loop(node: Arc<Node>) {
    let path = lease_file(&node);
    loop {
        let t = node.liveness_settings();
        let heartbeat = Duration::from_millis(t.heartbeat_ms);
        tokio::select! {
            _ = tokio::time::sleep(heartbeat) => {}
            _ = node.stopped() => return,
        }
        if node.liveness.is_stopping() {
            continue;
        }
        let sent = Instant::now();
        // The same instant on the clock the supervisors read (monotonic, unaffected by steps).
        let sent_boot = blixard_vmm::supervisor::boottime_ms();
        let res = tokio::time::timeout(heartbeat * 3, node.heartbeat_leader()).await;
        match res {
            Ok(Ok((index, lease_ms))) => {
                // The leader's lease, never longer than the bound (a peer speaking nonsense).
                let lease_ms = lease_ms.min(blixard_core::liveness::MAX_LEASE_MS);
                let until = sent + Duration::from_millis(lease_ms);
                let deadline = sent_boot.map(|b| b + lease_ms);
                node.liveness.renew(until, deadline, index, &path);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
            Err(_) => tracing::debug!("heartbeat timed out"),
        }
    }
}

/// On the leader, periodically: failure detection, drains, voter replacement.
pub async fn leader_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.stopped() => return,
        }
        if !node.is_leader() {
            *node.liveness.view.lock().unwrap_or_else(|p| p.into_inner()) = LeaderView::default();
            continue;
        }
        detect_failures(&node).await;
        drive_drains(&node).await;
        replace_dead_voters(&node).await;
    }
}

async fn detect_failures(node: &Arc<Node>) {
    let settings = node.liveness_settings();
    let term = node.metrics().current_term;
    let workers: BTreeMap<u64, NodeState> = node
        .state
        .read()
        .state
        .workers
        .values()
        .map(|w| (w.id, w.state))
        .collect();
    let now = node.liveness.clock();
    let wall = Instant::now();
    let proposals = {
        let mut v = node.liveness.view.lock().unwrap_or_else(|p| p.into_inner());
        let paused = v
            .last_tick
            .is_some_and(|t| wall.saturating_duration_since(t) > PAUSE);
        v.last_tick = Some(wall);
        if v.term != Some(term) {
            // A new leader knows nothing of past heartbeats: everyone gets a fresh grace period.
            tracing::info!(term, "leading: granting every node a fresh grace period");
            v.term = Some(term);
            v.seen.clear();
        } else if paused {
            tracing::warn!(term, "the failure detector did not run for a while: granting every node a fresh grace period");
            regrant(&mut v.seen, now);
        }
        if !node.liveness.is_stopping() {
            v.seen.entry(node.id).or_default().last_ms = now;
        }
        for (id, state) in &workers {
            if *state == NodeState::Down {
                v.down_since.entry(*id).or_insert(wall);
            } else {
                v.down_since.remove(id);
            }
        }
        verdicts(&settings, crate::node::now_ms(), &workers, &mut v.seen, now)
    };
    for (id, state) in proposals {
        match state {
            NodeState::Down => tracing::warn!(
                node = id,
                term,
                "no heartbeat for lease + grace: declaring the node down"
            ),
            _ => tracing::info!(
                node = id,
                term,
                "heartbeats are back: declaring the node up"
            ),
        }
        // Proposed here, in the term that decided it, or not at all.
        if let Err(e) = node
            .propose_verdict(term, Command::LivenessVerdict { id, state, term })
            .await
        {
            tracing::warn!(node = id, error = %e, "could not record the verdict");
        }
    }
}

async fn drive_drains(node: &Arc<Node>) {
    let parallelism = node.config.liveness.drain_parallelism.max(1);
    let moves: Vec<String> = {
        let a = node.state.read();
        let st = &a.state;
        let mut moves = Vec::new();
        for w in st
            .workers
            .values()
            .filter(|w| w.state == NodeState::Draining)
        {
            let on_node: Vec<&blixard_core::VmRecord> = st
                .vms
                .values()
                .filter(|v| v.node_id == Some(w.id))
                .collect();
            let mut inflight = on_node.iter().filter(|v| v.evacuating).count();
            for vm in on_node.iter().filter(|v| !v.evacuating) {
                if inflight >= parallelism {
                    break;
                }
                // Only move what can land somewhere (draining nodes are never chosen).
                if blixard_core::scheduler::decide(st.placement_view(), &vm.spec)
                    .node
                    .is_some()
                {
                    moves.push(vm.spec.name.clone());
                    inflight += 1;
                }
            }
        }
        moves
    };
    for name in moves {
        tracing::info!(vm = %name, "drain: moving VM");
        if let Err(e) = node
            .propose(Command::MoveVm { name: name.clone() }, None)
            .await
        {
            tracing::warn!(vm = %name, error = %e, "drain: could not move VM");
        }
    }
}

async fn replace_dead_voters(node: &Arc<Node>) {
    let after = node.config.liveness.replace_voter_after;
    let (dead, spare) = {
        let v = node.liveness.view.lock().unwrap_or_else(|p| p.into_inner());
        let a = node.state.read();
        let m = a.membership.membership();
        let voters: BTreeSet<u64> = m.voter_ids().collect();
        let dead = voters.iter().copied().find(|id| {
            *id != node.id && v.down_since.get(id).is_some_and(|t| t.elapsed() >= after)
        });
        let spare = m.learner_ids().find(|id| {
            a.state
                .workers
                .get(id)
                .is_some_and(|w| w.state == NodeState::Up)
        });
        (dead, spare)
    };
    let (Some(dead), Some(spare)) = (dead, spare) else {
        return;
    };
    let _guard = node.membership_lock.lock().await;
    tracing::warn!(
        dead,
        spare,
        "replacing a voter that stayed down with a healthy learner"
    );
    let add = node
        .raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([spare])), false)
        .await;
    if let Err(e) = add {
        tracing::warn!(error = %e, "promoting the learner");
        return;
    }
    // The dead voter stays a learner: if it comes back it catches up without a vote.
    if let Err(e) = node
        .raft
        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([dead])), true)
        .await
    {
        tracing::warn!(error = %e, "demoting the dead voter");
    }
}

#[cfg(test)]
mod lease_file_tests {
    use super::*;
    use blixard_vmm::supervisor::{boottime_ms, check_lease};

    #[test]
    fn a_revoked_lease_is_never_rewritten_by_a_later_renewal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vms").join("lease");
        let l = Liveness::default();
        let now = boottime_ms().expect("boottime");
        l.renew(
            Instant::now() + Duration::from_secs(60),
            Some(now + 60_000),
            1,
            &path,
        );
        assert!(check_lease(&path).is_ok(), "renewed");
        assert!(l.lease_valid());
        l.revoke(&path);
        assert!(check_lease(&path).unwrap_err().contains("revoked"));
        // A heartbeat that was in flight when the lease was revoked comes back.
        l.renew(
            Instant::now() + Duration::from_secs(60),
            Some(now + 120_000),
            2,
            &path,
        );
        assert!(
            check_lease(&path).unwrap_err().contains("revoked"),
            "still revoked"
        );
        assert!(!l.lease_valid());
    }
}
