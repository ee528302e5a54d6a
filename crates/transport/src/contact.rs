//! When this node last exchanged a message with each peer (local knowledge, never replicated):
//! a reply to one of our Raft RPCs, or a peer RPC received from it. The node uses it to tell a
//! lost quorum at once ("no quorum: N of M voters reachable") instead of waiting for a leader
//! that cannot be elected, and to name a leader only when it has recently heard from it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::NodeId;

#[derive(Debug, Default)]
pub struct PeerContact {
    last: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerContact {
    /// A message from `peer` arrived (a request, or the reply to ours).
    pub fn heard(&self, peer: NodeId) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// Whether `peer` was heard from within `window`.
    pub fn heard_within(&self, peer: NodeId, window: Duration) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .is_some_and(|t| t.elapsed() <= window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_peers_heard_within_the_window_count() {
        let c = PeerContact::default();
        assert!(!c.heard_within(2, Duration::from_secs(60)));
        c.heard(2);
        assert!(c.heard_within(2, Duration::from_secs(60)));
        assert!(!c.heard_within(3, Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!c.heard_within(2, Duration::ZERO));
    }
}
