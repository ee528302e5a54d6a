//! The one retry-until-leader loop: proposals, read barriers and membership changes sent to
//! the leader all go through [`Node::with_leader`].

use std::future::Future;

use std::time::Instant;

use crate::error::NodeError;
use crate::node::{Node, LEADER_WAIT, RETRY_BACKOFF};

/// The leader as this node sees it, for one attempt.
pub(crate) enum Leader {
    /// This node leads.
    Me,
    /// Another member leads: its id and address.
    Other(u64, String),
}

/// How an attempt ended short of success.
pub(crate) enum Attempt {
    /// Worth another try (leadership moving, leader unreachable); the reason becomes the error
    /// if the wait runs out.
    Retry(String),
    /// Final: returned as is.
    Fail(NodeError),
}

impl Node {
    /// Runs `attempt` against the current leader until it succeeds or fails for good,
    /// retrying every `RETRY_BACKOFF` while no leader is known or the attempt asks to, for at
    /// most [`LEADER_WAIT`]; then `NoLeader` with the last reason. A node that is not in a
    /// cluster fails at once.
    pub(crate) async fn with_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, NodeError>
    where
        F: FnMut(Leader) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut last_err = String::from("no leader elected yet");
        loop {
            let seen = self.leader().map(|(id, _)| id);
            match self.leader() {
                Some((id, addr)) => {
                    let leader = if id == self.id {
                        Leader::Me
                    } else {
                        Leader::Other(id, addr)
                    };
                    match attempt(leader).await {
                        Ok(t) => return Ok(t),
                        Err(Attempt::Retry(why)) => last_err = why,
                        Err(Attempt::Fail(e)) => return Err(e),
                    }
                }
                None if !self.in_cluster() => return Err(self.not_in_cluster()),
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(NodeError::NoLeader(last_err));
            }
            // Goes on as soon as this node learns of a new leader (an election ended), at the
            // latest after RETRY_BACKOFF.
            let _ = self
                .raft
                .wait(Some(RETRY_BACKOFF))
                .metrics(
                    |m| m.current_leader.is_some() && m.current_leader != seen,
                    "leader change",
                )
                .await;
        }
    }
}
