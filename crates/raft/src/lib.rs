//! Consensus for blixard: the openraft type configuration and the redb-backed log and
//! state-machine stores. It depends on `blixard-core` only; the peer transport (gRPC, TLS)
//! is `blixard-transport`.
//!
//! - [`log_store`]: the Raft log and vote in `raft.redb`.
//! - [`sm_store`]: the replicated state in `state.redb`. Its tables are written only by
//!   `apply` and snapshot installation, each in one transaction that also records the applied
//!   log id (invariant 1).
//! - [`snapshot_file`]: the current snapshot in `state.snapshot`, and the snapshot format.

pub mod events;
pub mod log_store;
pub mod metrics;
pub mod sm_store;
pub mod snapshot_file;

use std::io::Cursor;

pub use events::EventLog;
pub use log_store::LogStore;
pub use metrics::StoreMetrics;
pub use sm_store::{SharedState, StateMachineStore};

openraft::declare_raft_types!(
    /// blixard's Raft types: the log carries `core::Request`, applying it yields `core::Outcome`.
    pub TypeConfig:
        D = blixard_core::Request,
        R = blixard_core::Outcome,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;
pub type SnapshotData = Cursor<Vec<u8>>;

/// Opens both stores under `dir` (creating the files on first use).
pub fn open_stores(dir: &std::path::Path) -> Result<(LogStore, StateMachineStore), std::io::Error> {
    std::fs::create_dir_all(dir)?;
    let log = LogStore::open(&dir.join("raft.redb"))?;
    let sm = StateMachineStore::open(&dir.join("state.redb"))?;
    Ok((log, sm))
}

/// Opens (creating it on first use) a redb file. redb's default page cache (1 GiB) is kept:
/// a build with it bounded to 32 MiB used about 45 % less RSS at 10,000 records, but new nodes
/// then caught up by replaying the log instead of installing a snapshot (7.5-8.8 s against
/// 4.1 s, docs/benchmarks.md); not understood yet, so not shipped.
pub(crate) fn open_db(path: &std::path::Path) -> Result<redb::Database, std::io::Error> {
    redb::Database::create(path).map_err(io_err)
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod conformance;
