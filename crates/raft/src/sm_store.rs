//! The replicated state machine, persisted in its own redb file.
//!
//! Tables (declared here and nowhere else):
//! - `sm_rows`: one row per VM, worker and remembered request (`core::RowKey::encode`).
//! - `sm_meta`: the last applied log id and the last membership.
//! - `sm_snapshot`: the current snapshot (metadata and data), served to lagging followers.
//!
//! `apply` runs `core::ClusterState::apply` for each entry of a batch, then writes the rows it
//! touched together with the applied log id in one transaction (invariant 1: nothing else
//! writes these tables). Those commits are not fsynced (the log is); snapshot commits are. The in-memory [`SharedState`] is the state machine itself; the node
//! reads it (after a ReadIndex for linearizable reads), never writes it.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use blixard_core::{ClusterState, RowKey};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{io_err, EventLog, SnapshotData, TypeConfig};

const ROWS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_rows");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");
const APPLIED_KEY: &str = "last_applied";
const MEMBERSHIP_KEY: &str = "last_membership";
const SNAPSHOT_KEY: &str = "current";

type C = TypeConfig;

/// The applied state with the log position it reflects.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogIdOf<C>>,
    pub membership: StoredMembershipOf<C>,
}

/// Read access to the applied state, shared with the node.
#[derive(Clone, Default)]
pub struct SharedState(Arc<RwLock<Applied>>);

impl SharedState {
    /// A read guard on the applied state. Hold it briefly: `apply` waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The state a snapshot's data holds, with its derived fields rebuilt; anything malformed is an
/// `InvalidData` error (fuzzed: never a panic).
pub fn decode_snapshot_data(data: &[u8]) -> Result<ClusterState, std::io::Error> {
    let mut state: ClusterState = serde_json::from_slice(data).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("corrupt snapshot: {e}"),
        )
    })?;
    state.rebuild_derived();
    Ok(state)
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<C>,
    data: Vec<u8>,
}

/// The redb-backed state machine. Cloning shares the database and the state.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: SharedState,
    /// Events derived from the entries applied here (not persisted; see `core::events`).
    events: EventLog,
    metrics: crate::StoreMetrics,
}

impl StateMachineStore {
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        let db = crate::open_db(path)?;
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(ROWS).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.open_table(SNAPSHOT).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
        let mut applied = Self::load(&db)?;
        // Rows an older version stored in another layout (`ClusterState::from_rows` marks
        // them touched): written again in the current one, in one transaction.
        let moved = applied.state.take_touched();
        if !moved.is_empty() {
            Self::write_rows(&db, &applied.state, &moved)?;
            tracing::info!(rows = moved.len(), "rewrote rows stored in an older layout");
        }
        let floor = applied
            .last_applied
            .as_ref()
            .map(|l| l.index())
            .unwrap_or(0);
        let events = EventLog::new(&applied.state, floor);
        Ok(Self {
            db: Arc::new(db),
            shared: SharedState(Arc::new(RwLock::new(applied))),
            events,
            metrics: Default::default(),
        })
    }

    fn write_rows(
        db: &Database,
        state: &ClusterState,
        keys: &std::collections::BTreeSet<RowKey>,
    ) -> Result<(), std::io::Error> {
        let tx = db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(ROWS).map_err(io_err)?;
            for k in keys {
                match state.row(k) {
                    Some(v) => t
                        .insert(k.encode().as_str(), v.as_slice())
                        .map_err(io_err)?,
                    None => t.remove(k.encode().as_str()).map_err(io_err)?,
                };
            }
        }
        tx.commit().map_err(io_err)
    }

    fn load(db: &Database) -> Result<Applied, std::io::Error> {
        let tx = db.begin_read().map_err(io_err)?;
        let rows = tx.open_table(ROWS).map_err(io_err)?;
        let mut raw = Vec::new();
        for item in rows.iter().map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            raw.push((k.value().to_string(), v.value().to_vec()));
        }
        let state = ClusterState::from_rows(raw.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(io_err)?;
        let meta = tx.open_table(META).map_err(io_err)?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, std::io::Error> {
            Ok(meta.get(key).map_err(io_err)?.map(|v| v.value().to_vec()))
        };
        let last_applied: Option<LogIdOf<C>> = match get(APPLIED_KEY)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => None,
        };
        let membership = match get(MEMBERSHIP_KEY)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => StoredMembershipOf::<C>::default(),
        };
        Ok(Applied {
            state,
            last_applied,
            membership,
        })
    }

    /// Apply latency and snapshot counters (shared with clones of this store).
    pub fn metrics(&self) -> crate::StoreMetrics {
        self.metrics.clone()
    }

    /// The event ring fed by `apply`.
    pub fn events(&self) -> EventLog {
        self.events.clone()
    }

    /// The applied state, for reads.
    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// Writes a whole state (from a snapshot) in one transaction, replacing what was there.
    fn write_all(
        &self,
        applied: &Applied,
        snapshot: Option<&StoredSnapshot>,
    ) -> Result<(), std::io::Error> {
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut rows = tx.open_table(ROWS).map_err(io_err)?;
            rows.retain(|_, _| false).map_err(io_err)?;
            for (k, v) in applied.state.all_rows() {
                rows.insert(k.as_str(), v.as_slice()).map_err(io_err)?;
            }
            let mut meta = tx.open_table(META).map_err(io_err)?;
            let la = serde_json::to_vec(&applied.last_applied).map_err(io_err)?;
            meta.insert(APPLIED_KEY, la.as_slice()).map_err(io_err)?;
            let m = serde_json::to_vec(&applied.membership).map_err(io_err)?;
            meta.insert(MEMBERSHIP_KEY, m.as_slice()).map_err(io_err)?;
            if let Some(s) = snapshot {
                let mut t = tx.open_table(SNAPSHOT).map_err(io_err)?;
                let b = serde_json::to_vec(s).map_err(io_err)?;
                t.insert(SNAPSHOT_KEY, b.as_slice()).map_err(io_err)?;
            }
        }
        tx.commit().map_err(io_err)
    }

    fn save_snapshot(&self, s: &StoredSnapshot) -> Result<(), std::io::Error> {
        let b = serde_json::to_vec(s).map_err(io_err)?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(io_err)?;
            t.insert(SNAPSHOT_KEY, b.as_slice()).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }
}

impl RaftSnapshotBuilder<C> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, std::io::Error> {
        let (meta, data) = {
            let applied = self.shared.read();
            let data = serde_json::to_vec(&applied.state).map_err(io_err)?;
            let meta = SnapshotMetaOf::<C> {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save_snapshot(&stored)?;
        self.metrics.snapshots_built.inc();
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = stored.data.len(), "built snapshot");
        Ok(SnapshotOf::<C, SnapshotData> {
            meta,
            snapshot: Cursor::new(stored.data),
        })
    }
}

impl RaftStateMachine<C> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), std::io::Error> {
        let a = self.shared.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, std::io::Error>> + Unpin + OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut responses = Vec::new();
        let (touched, last_applied, membership) = {
            let mut touched = std::collections::BTreeSet::new();
            let mut last_applied = None;
            let mut membership = None;
            while let Some((entry, responder)) = entries.try_next().await? {
                let log_id = entry.log_id();
                let outcome = {
                    let mut a = self.shared.write();
                    let outcome = match &entry.payload {
                        EntryPayload::Blank => Ok(blixard_core::Reply::Done),
                        EntryPayload::Normal(req) => {
                            a.state
                                .apply_at(log_id.committed_leader_id().term, log_id.index(), req)
                        }
                        EntryPayload::Membership(m) => {
                            a.membership = StoredMembershipOf::<C>::new(Some(log_id), m.clone());
                            a.state.note_membership(m.nodes().map(|(id, _)| *id));
                            membership = Some(a.membership.clone());
                            Ok(blixard_core::Reply::Done)
                        }
                    };
                    a.last_applied = Some(log_id);
                    // Events per entry: the rows this entry touched, against their old values.
                    let entry_touched = a.state.take_touched();
                    let (time_ms, caller) = match &entry.payload {
                        EntryPayload::Normal(req) => (req.time_ms, req.caller.as_deref()),
                        _ => (0, None),
                    };
                    self.events.lock().observe_by(
                        log_id.index(),
                        time_ms,
                        caller,
                        &a.state,
                        &entry_touched,
                    );
                    touched.extend(entry_touched);
                    outcome
                };
                last_applied = Some(log_id);
                self.metrics.applied_entries.inc();
                if let Some(r) = responder {
                    responses.push((r, outcome));
                }
            }
            (touched, last_applied, membership)
        };
        let Some(last_applied) = last_applied else {
            return Ok(());
        };
        let last_applied_index = last_applied.index();

        // One transaction: the rows this batch changed and the applied log id.
        let rows: Vec<(String, Option<Vec<u8>>)> = {
            let a = self.shared.read();
            touched
                .iter()
                .map(|k: &RowKey| (k.encode(), a.state.row(k)))
                .collect()
        };
        let mut tx = self.db.begin_write().map_err(io_err)?;
        // No fsync here: the Raft log is the durable record (one fsync per batch, in the log
        // store). After a crash the state machine comes back at its last durable commit (a
        // snapshot, or the file's creation) and openraft re-applies the committed entries after
        // it: apply is deterministic. The log is purged only up to a snapshot, and saving a
        // snapshot commits with immediate durability, which persists every earlier commit of
        // this file too. (redb 2's `Eventual` still calls fsync on Linux; `None` does not.)
        tx.set_durability(redb::Durability::None);
        {
            let mut t = tx.open_table(ROWS).map_err(io_err)?;
            for (k, v) in &rows {
                match v {
                    Some(v) => t.insert(k.as_str(), v.as_slice()).map_err(io_err)?,
                    None => t.remove(k.as_str()).map_err(io_err)?,
                };
            }
            let mut meta = tx.open_table(META).map_err(io_err)?;
            let la = serde_json::to_vec(&Some(last_applied)).map_err(io_err)?;
            meta.insert(APPLIED_KEY, la.as_slice()).map_err(io_err)?;
            if let Some(m) = membership {
                let m = serde_json::to_vec(&m).map_err(io_err)?;
                meta.insert(MEMBERSHIP_KEY, m.as_slice()).map_err(io_err)?;
            }
        }
        // Off the async worker: a commit writes pages (no fsync here, but a large batch or a
        // freshly grown file still costs milliseconds of I/O).
        crate::log_store::blocking(|| tx.commit().map_err(io_err))?;

        self.events.applied_up_to(last_applied_index);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        for (r, outcome) in responses {
            r.send(outcome);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), std::io::Error> {
        let data = snapshot.into_inner();
        let state = decode_snapshot_data(&data)?;
        let applied = Applied {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.write_all(&applied, Some(&stored))?;
        let floor = applied
            .last_applied
            .as_ref()
            .map(|l| l.index())
            .unwrap_or(0);
        self.events.lock().reset(&applied.state, floor);
        *self.shared.write() = applied;
        self.events.applied_up_to(floor);
        self.metrics.snapshots_installed.inc();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, std::io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(SNAPSHOT).map_err(io_err)?;
        let Some(v) = t.get(SNAPSHOT_KEY).map_err(io_err)? else {
            return Ok(None);
        };
        let s: StoredSnapshot = serde_json::from_slice(v.value()).map_err(io_err)?;
        Ok(Some(SnapshotOf::<C, SnapshotData> {
            meta: s.meta,
            snapshot: Cursor::new(s.data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::{Command, Request, Resources, VmSpec};

    /// A state file written before address leases had rows of their own (every lease inline in
    /// its network's row) opens to the same state, and opening rewrites it in the current layout.
    #[test]
    fn rows_of_an_older_layout_are_rewritten_at_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("state.redb");
        let mut s = ClusterState::default();
        let cmds = [
            Command::RegisterWorker {
                id: 1,
                addr: "10.1.0.1:7000".into(),
                capacity: Resources::new(8, 8192, 100),
                kvm: false,
                labels: Default::default(),
            },
            Command::EnsureDefaultNetwork {
                cidr: "10.88.0.0/16".into(),
            },
            Command::CreateVm {
                spec: VmSpec::new("a"),
            },
            Command::CreateVm {
                spec: VmSpec::new("b"),
            },
        ];
        for (i, c) in cmds.into_iter().enumerate() {
            s.apply(i as u64 + 1, &Request::new(c, 1)).expect("apply");
        }
        s.take_touched();
        {
            let db = crate::open_db(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(ROWS).unwrap();
                for (k, v) in s.all_rows() {
                    if k.starts_with("lease/") {
                        continue;
                    }
                    let v = if k == "net/default" {
                        serde_json::to_vec(&s.networks["default"]).unwrap()
                    } else {
                        v
                    };
                    t.insert(k.as_str(), v.as_slice()).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let sm = StateMachineStore::open(&path).unwrap();
        assert_eq!(sm.shared().read().state, s);
        drop(sm);
        let db = crate::open_db(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(ROWS).unwrap();
        let leases = t
            .iter()
            .unwrap()
            .filter(|r| r.as_ref().unwrap().0.value().starts_with("lease/"))
            .count();
        // The node's bridge address and the two VMs'.
        assert_eq!(leases, 3);
        let net: serde_json::Value =
            serde_json::from_slice(t.get("net/default").unwrap().unwrap().value()).unwrap();
        assert!(net.get("leases").is_none(), "{net}");
    }
}
