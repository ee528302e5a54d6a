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

/// redb's page cache per database file. redb keeps every page it reads or writes in this
/// cache up to its size, and its default is 1 GiB: a node under a steady write load grew to
/// 640 MiB RSS with nothing in its state to show for it. The hot pages of the log (its tail)
/// and of the state (rows being updated) fit in far less; reads of the state are served from
/// memory, never from redb.
pub const DB_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Opens (creating it on first use) a redb file, with its cache bounded to [`DB_CACHE_BYTES`].
pub(crate) fn open_db(path: &std::path::Path) -> Result<redb::Database, std::io::Error> {
    redb::Builder::new()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)
        .map_err(io_err)
}

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

#[cfg(test)]
mod conformance;

/// The commands that give a test state a worker (with room for many VMs) and the default
/// network, so that `CreateVm` places and addresses.
#[cfg(test)]
pub(crate) fn worker_and_network() -> [blixard_core::Command; 2] {
    [
        blixard_core::Command::RegisterWorker {
            id: 1,
            addr: "10.1.0.1:7000".into(),
            capacity: blixard_core::Resources::new(1000, 1 << 30, 1000),
            kvm: false,
            labels: Default::default(),
        },
        blixard_core::Command::EnsureDefaultNetwork {
            cidr: "10.88.0.0/16".into(),
        },
    ]
}
