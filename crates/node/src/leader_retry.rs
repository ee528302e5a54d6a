//! The one retry-until-leader loop: proposals, read barriers and membership changes sent to
//! the leader all go through [`Node::with_leader`]. Whether to try again is decided by the
//! error's variant ([`NodeError::Retry`]), never by its message.

use std::future::Future;

use std::time::Instant;

use crate::error::{NodeError, RetryReason};
use crate::node::{Node, LEADER_WAIT, RETRY_BACKOFF};

/// The leader as this node sees it, for one attempt.
pub(crate) enum Leader {
    /// This node leads.
    Me,
    /// Another member leads: its id and address.
    Other(u64, String),
}

impl Node {
    /// Runs `attempt` against the current leader until it succeeds or fails with anything but
    /// [`NodeError::Retry`], retrying every `RETRY_BACKOFF` while no leader is known or the
    /// attempt asks to, for at most [`LEADER_WAIT`]; then the last `Retry`. A node that is not
    /// in a cluster fails at once.
    pub(crate) async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, NodeError>
    where
        F: FnMut(Leader) -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut last = NodeError::retry(RetryReason::NoLeader);
        // Seen lost on the previous round too (one look could follow a stall of this process).
        let mut suspect = false;
        loop {
            // Without a quorum no attempt can succeed: say so at once (see `quorum`).
            match self.lost_quorum() {
                Some(e) if suspect => return Err(e),
                lost => suspect = lost.is_some(),
            }
            // The leader openraft reports, whether or not this node can route to it: waiting
            // for a change of *that* is what makes the wait below block. (Comparing with the
            // routable leader instead made it return at once whenever the leader was missing
            // from this node's membership, a removed leader or a joiner's stale config, and
            // the loop spun without yielding for `LEADER_WAIT`, starving the runtime: the
            // node's Raft and gRPC went silent; docs/fault-testing.md, "Findings".)
            let (seen, routable) = self.leader_view();
            match routable {
                Some((id, addr)) => {
                    let leader = if id == self.id {
                        Leader::Me
                    } else {
                        Leader::Other(id, addr)
                    };
                    let result = tokio::select! {
                        r = attempt(leader) => r,
                        // Lost during the attempt (a write may still apply once it is back).
                        e = self.quorum_lost() => return Err(e),
                    };
                    match result {
                        Ok(t) => return Ok(t),
                        Err(e) if e.is_retry() => last = e,
                        Err(e) => return Err(e),
                    }
                }
                None if !self.in_cluster() => return Err(self.not_in_cluster()),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            // Goes on as soon as this node learns of a new leader (an election ended), at the
            // latest after RETRY_BACKOFF.
            let _ = self
                .raft
                .wait(Some(RETRY_BACKOFF))
                .metrics(|m| leader_changed(seen, m.current_leader), "leader change")
                .await;
        }
    }
}

/// Whether the wait for a new leader is over: openraft names a leader other than the one the
/// last attempt saw (`seen`, as openraft reported it, routable or not).
pub(crate) fn leader_changed(seen: Option<u64>, now: Option<u64>) -> bool {
    now.is_some() && now != seen
}

#[cfg(test)]
mod tests {
    use super::leader_changed;

    #[test]
    fn the_wait_blocks_until_openraft_names_another_leader() {
        // The leader last seen, routable or not, is not a change: the wait blocks (this was
        // the spin: a leader missing from the membership was "seen" as None).
        assert!(!leader_changed(Some(2), Some(2)));
        // No leader (an election under way) is not worth a retry either.
        assert!(!leader_changed(Some(2), None));
        assert!(!leader_changed(None, None));
        // A newly elected leader, or the first one learnt, ends the wait.
        assert!(leader_changed(Some(2), Some(3)));
        assert!(leader_changed(None, Some(3)));
    }
}
