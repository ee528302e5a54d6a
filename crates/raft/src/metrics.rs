//! What the stores measure for `/metrics` (registered by the node): apply latency and
//! snapshots. Counters and histograms only; readings of the Raft state come from openraft's
//! metrics at scrape time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Time to apply one batch of committed entries (apply and the state-machine commit).
    pub apply_seconds: Histogram,
    /// Entries applied.
    pub applied_entries: Counter,
    /// Commits of applied rows to the state database (coalesced: see `sm_store`).
    pub row_commits: Counter,
    pub snapshots_built: Counter,
    pub snapshots_installed: Counter,
    /// Snapshot chunks this node sent to lagging followers (as leader).
    pub snapshot_chunks_sent: Counter,
    /// Snapshot chunks this node received and accepted (as follower).
    pub snapshot_chunks_received: Counter,
    /// Snapshot streams refused (bad header, over the cap, out of order, truncated).
    pub snapshots_refused: Counter,
    /// `AppendEntries` batches cut short to stay under the peer message limit.
    pub appends_split: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            apply_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            applied_entries: Counter::default(),
            row_commits: Counter::default(),
            snapshots_built: Counter::default(),
            snapshots_installed: Counter::default(),
            snapshot_chunks_sent: Counter::default(),
            snapshot_chunks_received: Counter::default(),
            snapshots_refused: Counter::default(),
            appends_split: Counter::default(),
        }
    }
}
