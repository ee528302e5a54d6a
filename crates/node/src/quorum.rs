//! Lost quorum, said at once: "no quorum: N of M voters reachable".
//!
//! Without a majority of voters nothing can be decided, and waiting for a leader (up to
//! `LEADER_WAIT` per call) only delays the answer. A node knows when it last exchanged a
//! message with each peer ([`blixard_transport::PeerContact`]: a request from it, or a reply to one
//! of ours; local knowledge, never replicated). When it has heard from no leader within the
//! contact window and fewer than a majority of the voters of its membership (itself included)
//! within it either, calls fail at once with that count, and `cluster status` names no leader
//! it has not heard from within the window.
//!
//! The window is twice the maximum election timeout: the longest a follower waits for its
//! leader before it stands for election (ARCHITECTURE.md, "Raft timing"). A node that started
//! less than a window ago has not had the chance to hear from anyone: it is given the benefit
//! of the doubt (calls wait for a leader as before).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use crate::error::{NodeError, RetryReason};
use crate::node::Node;

/// How many of `voters` are reachable: this node (when it is a voter) and those `heard`.
pub fn reachable_voters(me: u64, voters: &BTreeSet<u64>, heard: impl Fn(u64) -> bool) -> usize {
    voters.iter().filter(|v| **v == me || heard(**v)).count()
}

/// Whether `reachable` of `voters` voters are fewer than a majority.
pub fn below_majority(reachable: usize, voters: usize) -> bool {
    voters > 0 && reachable < voters / 2 + 1
}

impl Node {
    /// Messages from a peer older than this do not count as contact.
    pub(crate) fn contact_window(&self) -> Duration {
        self.config.raft.election_max * 2
    }

    /// (reachable voters, voters) by recent contact.
    fn voter_contact(&self) -> (usize, usize) {
        let window = self.contact_window();
        let voters: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        let n = reachable_voters(self.id, &voters, |p| {
            self.liveness.contact.heard_within(p, window)
        });
        (n, voters.len())
    }

    /// The leader this node may name: one it heard from within the contact window (itself
    /// only while a majority of voters is reachable).
    pub fn heard_leader(&self) -> Option<u64> {
        let leader = self.metrics().current_leader?;
        if leader == self.id {
            let (n, m) = self.voter_contact();
            return (!below_majority(n, m)).then_some(leader);
        }
        self.liveness
            .contact
            .heard_within(leader, self.contact_window())
            .then_some(leader)
    }

    /// `Some` (the error to answer with) when this node has lost its quorum: no leader heard
    /// from within the window and fewer than a majority of the voters reachable.
    pub(crate) fn lost_quorum(&self) -> Option<NodeError> {
        if self.liveness.started.elapsed() < self.contact_window() || !self.in_cluster() {
            return None;
        }
        let leader = self.metrics().current_leader;
        if leader.is_some_and(|l| {
            l != self.id && self.liveness.contact.heard_within(l, self.contact_window())
        }) {
            return None;
        }
        let (reachable, voters) = self.voter_contact();
        below_majority(reachable, voters).then(|| {
            NodeError::retry(RetryReason::NoQuorum {
                node: self.id,
                reachable,
                voters,
            })
        })
    }

    /// Resolves once this node has lost its quorum (seen on two looks 100 ms apart: one look
    /// could follow a stall of this process), with the error.
    pub(crate) async fn quorum_lost(&self) -> NodeError {
        let mut suspect = false;
        loop {
            match self.lost_quorum() {
                Some(e) if suspect => return e,
                lost => suspect = lost.is_some(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_of_the_voters_counting_this_one() {
        let voters = BTreeSet::from([1, 2, 3]);
        assert_eq!(reachable_voters(1, &voters, |_| false), 1);
        assert_eq!(reachable_voters(1, &voters, |p| p == 3), 2);
        // A learner counts only the voters it heard from.
        assert_eq!(reachable_voters(9, &voters, |p| p == 3), 1);
        assert!(below_majority(1, 3));
        assert!(!below_majority(2, 3));
        assert!(below_majority(2, 4) && !below_majority(3, 4));
        assert!(!below_majority(1, 1));
        assert!(!below_majority(0, 0), "no voters known: nothing to say");
    }
}
