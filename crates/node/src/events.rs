//! Following the node's event ring (`blixard_raft::EventLog`): one implementation behind the
//! gRPC `Events` stream and the HTTP `/v1/events` (SSE) stream.

use std::sync::Arc;

use blixard_core::Event;
use tokio::sync::mpsc;

use crate::node::Node;
use crate::streams::StreamRefused;

/// Events per read of the ring.
const PAGE: usize = 256;

/// Streams the events after `since` (default: everything kept) into the returned channel;
/// with `follow`, keeps going until the receiver is dropped or the node stops. Each event is
/// sent once; events of one log index are sent together.
/// Refused when the node serves too many streams already, or is stopping.
pub fn follow(
    node: Arc<Node>,
    since: Option<u64>,
    follow: bool,
) -> Result<mpsc::Receiver<Event>, StreamRefused> {
    let (tx, rx) = mpsc::channel(PAGE);
    let n = node.clone();
    n.spawn_stream(async move {
        let log = node.events.clone();
        // Subscribe before the first read: no batch applied after it goes unnoticed.
        let mut applied = log.subscribe();
        let mut cursor = since.unwrap_or_else(|| log.floor());
        loop {
            let (events, next) = log.since(cursor, PAGE);
            let empty = events.is_empty();
            for e in events {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            cursor = next;
            if !empty {
                continue;
            }
            if !follow {
                return;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
                _ = node.stopped() => return,
            }
        }
    })?;
    Ok(rx)
}
