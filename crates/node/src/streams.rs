//! The producers of long-lived streams (VM consoles, task output, events): tracked, bounded
//! and ended with the node.
//!
//! Each stream a client opens is fed by a spawned task. Spawned through [`Node::spawn_stream`]
//! it counts against [`MAX_STREAMS`] while it runs (one more is refused with
//! `RESOURCE_EXHAUSTED`, the way mini-redis bounds its connections), it ends when the node
//! stops, and the node's shutdown waits for it ([`Streams::close`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::node::Node;

/// Stream producers one node runs at once (a console session counts two: input and output).
pub const MAX_STREAMS: usize = 1024;

/// The stream producers of one node.
pub struct Streams {
    tracker: TaskTracker,
    permits: Arc<Semaphore>,
}

impl Default for Streams {
    fn default() -> Self {
        Self::new(MAX_STREAMS)
    }
}

impl Streams {
    pub fn new(limit: usize) -> Self {
        Self {
            tracker: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(limit)),
        }
    }

    /// Producers running now.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Refuses new producers and waits (at most `wait`) for the running ones to end.
    pub async fn close(&self, wait: Duration) {
        self.tracker.close();
        if tokio::time::timeout(wait, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(left = self.tracker.len(), "streams still open at shutdown");
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamRefused {
    #[error("this node already serves {0} streams (consoles, logs, events): close some, or try again later")]
    Full(usize),
    #[error("this node is shutting down: try another node")]
    Stopping,
}

impl From<StreamRefused> for tonic::Status {
    fn from(e: StreamRefused) -> Self {
        match e {
            StreamRefused::Full(_) => tonic::Status::resource_exhausted(e.to_string()),
            StreamRefused::Stopping => tonic::Status::unavailable(e.to_string()),
        }
    }
}

impl Node {
    /// Spawns the producer of a stream: bounded, ended when the node stops, joined at shutdown.
    pub fn spawn_stream<F>(self: &Arc<Self>, fut: F) -> Result<(), StreamRefused>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let streams = &self.streams;
        if streams.tracker.is_closed() || *self.shutdown_signal().borrow() {
            return Err(StreamRefused::Stopping);
        }
        let permit = streams
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| StreamRefused::Full(MAX_STREAMS))?;
        let node = self.clone();
        streams.tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = fut => {}
                _ = node.stopped() => {}
            }
        });
        Ok(())
    }
}
