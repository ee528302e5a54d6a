//! A node stopping gracefully says so: before it stops its work it proposes
//! `WorkerShuttingDown` for itself, so `node list` and `cluster status` show it
//! `shutting-down` at once (not `up` until its lease runs out) and the scheduler places nothing
//! new on it. The wait is bounded: a node that cannot reach a quorum still stops promptly.

use std::time::Duration;

use blixard_core::Command;

use crate::node::Node;

/// The longest a stopping node waits for the cluster to record it.
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(3);

impl Node {
    /// Tells the cluster this node is shutting down (at most [`ANNOUNCE_WAIT`]); from now on
    /// it heartbeats no more, so the failure detector does not take it for back up.
    pub async fn announce_shutdown(&self) {
        self.liveness.set_stopping();
        if !self.state.read().state.workers.contains_key(&self.id) {
            return;
        }
        let cmd = Command::WorkerShuttingDown { id: self.id };
        match tokio::time::timeout(ANNOUNCE_WAIT, self.propose(cmd, None)).await {
            Ok(Ok(_)) => {
                tracing::info!(node = self.id, "the cluster shows this node shutting down")
            }
            Ok(Err(e)) => tracing::warn!(
                node = self.id,
                error = %e,
                "could not record that this node is shutting down: it shows as up until its lease expires"
            ),
            Err(_) => tracing::warn!(
                node = self.id,
                wait = ?ANNOUNCE_WAIT,
                "no answer from the cluster: stopping without recording the shutdown (it shows as up until its lease expires)"
            ),
        }
    }
}
