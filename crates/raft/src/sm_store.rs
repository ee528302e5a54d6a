//! The replicated state machine, persisted in its own redb file.
//!
//! Tables (declared here and nowhere else):
//! - `sm_rows`: one row per VM, worker and remembered request (`core::RowKey::encode`).
//! - `sm_meta`: the last applied log id and the last membership.
//! - `sm_snapshot`: where versions before the snapshot file kept the current snapshot; read
//!   once at open and moved to the file ([`crate::snapshot_file`]).
//!
//! `apply` runs `core::ClusterState::apply` for each entry of a batch. The rows it touched are
//! written together with the applied log id in one transaction (invariant 1: nothing else
//! writes these tables), but not after every batch: touched row keys accumulate and are
//! committed every [`FLUSH_ENTRIES`] entries or [`FLUSH_AGE`], whichever comes first, and when
//! the store is dropped. Those commits are not fsynced either. Both are safe because the rows
//! are not what makes an entry durable: the Raft log is (fsynced per batch, `log_store`), and
//! the snapshot file is durable before openraft purges any entry it covers. After a crash the
//! rows come back at some earlier commit (always a consistent one: rows and applied id move
//! together); openraft installs the snapshot if it is ahead of them and re-applies the
//! committed entries after that, and `apply` is deterministic. Coalescing cut the state
//! machine's share of the cluster's CPU under write load (docs/benchmarks.md).
//!
//! The in-memory [`SharedState`] is the state machine itself; the node reads it (after a
//! ReadIndex for linearizable reads), never writes it.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use blixard_core::{ClusterState, RowKey};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::log_store::blocking;
use crate::snapshot_file;
use crate::{io_err, EventLog, SnapshotData, TypeConfig};

pub use crate::snapshot_file::{decode_snapshot_data, encode_snapshot_data};

/// Applied entries whose rows may wait before they are committed.
pub const FLUSH_ENTRIES: u64 = 1024;
/// How long applied entries' rows may wait before they are committed (checked when the next
/// batch is applied; an idle store keeps them until it is dropped).
pub const FLUSH_AGE: Duration = Duration::from_millis(200);

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

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<C>,
    data: Vec<u8>,
}

/// Rows touched by applied entries and not committed yet, with the log position they reach.
#[derive(Default)]
struct Pending {
    touched: BTreeSet<RowKey>,
    last_applied: Option<LogIdOf<C>>,
    membership: Option<StoredMembershipOf<C>>,
    entries: u64,
    since: Option<Instant>,
    /// A snapshot was written since the last commit: the next commit is durable, which lets
    /// redb reuse the pages that the non-durable commits before it freed.
    durable_due: bool,
}

impl Pending {
    fn due(&self, age: Duration) -> bool {
        self.entries >= FLUSH_ENTRIES || self.since.is_some_and(|t| t.elapsed() >= age)
    }
}

/// The database and the commit it owes; shared by the store's clones and flushed when the
/// last one is dropped.
struct Rows {
    db: Database,
    shared: SharedState,
    pending: Mutex<Pending>,
    /// [`FLUSH_AGE`], except in tests.
    flush_age: Duration,
}

impl Rows {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits the pending rows, as the applied state has them now, with their applied log id,
    /// in one transaction. Called only where no entry is being applied (inside `apply`, after
    /// its batch, or at drop), so the applied state is exactly at `p.last_applied`.
    fn flush(&self, p: &mut Pending) -> Result<(), std::io::Error> {
        let Some(last_applied) = p.last_applied else {
            return Ok(());
        };
        let rows: Vec<(String, Option<Vec<u8>>)> = {
            let a = self.shared.read();
            debug_assert_eq!(a.last_applied, p.last_applied);
            p.touched
                .iter()
                .map(|k: &RowKey| (k.encode(), a.state.row(k)))
                .collect()
        };
        let mut tx = self.db.begin_write().map_err(io_err)?;
        if !p.durable_due {
            // Not fsynced: see the module docs. (redb 2's `Eventual` still calls fsync on
            // Linux; `None` does not.)
            tx.set_durability(redb::Durability::None);
        }
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
            if let Some(m) = &p.membership {
                let m = serde_json::to_vec(m).map_err(io_err)?;
                meta.insert(MEMBERSHIP_KEY, m.as_slice()).map_err(io_err)?;
            }
        }
        // Off the async worker: a commit writes pages (and a durable one fsyncs).
        blocking(|| tx.commit().map_err(io_err))?;
        *p = Pending::default();
        Ok(())
    }
}

impl Drop for Rows {
    fn drop(&mut self) {
        let mut p = std::mem::take(self.pending.get_mut().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = self.flush(&mut p) {
            // Nothing is lost: the log still holds these entries and they are applied again
            // at the next start.
            tracing::warn!(error = %e, "could not commit the last applied rows at shutdown");
        }
    }
}

/// The redb-backed state machine. Cloning shares the database and the state.
#[derive(Clone)]
pub struct StateMachineStore {
    rows: Arc<Rows>,
    shared: SharedState,
    snapshot_path: Arc<PathBuf>,
    /// Events derived from the entries applied here (not persisted; see `core::events`).
    events: EventLog,
    metrics: crate::StoreMetrics,
}

impl StateMachineStore {
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        Self::open_with_flush_age(path, FLUSH_AGE)
    }

    fn open_with_flush_age(path: &Path, flush_age: Duration) -> Result<Self, std::io::Error> {
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
        let snapshot_path = snapshot_file::path_for(path);
        Self::move_snapshot_to_file(&db, &snapshot_path)?;
        let shared = SharedState(Arc::new(RwLock::new(applied)));
        Ok(Self {
            rows: Arc::new(Rows {
                db,
                shared: shared.clone(),
                pending: Mutex::default(),
                flush_age,
            }),
            shared,
            snapshot_path: Arc::new(snapshot_path),
            events,
            metrics: Default::default(),
        })
    }

    /// A snapshot stored by an earlier version in the `sm_snapshot` table is moved to the
    /// snapshot file (unless the file already exists), then removed from the table.
    fn move_snapshot_to_file(db: &Database, file: &Path) -> Result<(), std::io::Error> {
        let old: Option<StoredSnapshot> = {
            let tx = db.begin_read().map_err(io_err)?;
            let t = tx.open_table(SNAPSHOT).map_err(io_err)?;
            match t.get(SNAPSHOT_KEY).map_err(io_err)? {
                None => return Ok(()),
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(io_err)?),
            }
        };
        if let Some(s) = old {
            if !file.exists() {
                snapshot_file::write(file, &s.meta, &s.data)?;
            }
        }
        let tx = db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(io_err)?;
            t.remove(SNAPSHOT_KEY).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)?;
        tracing::info!(file = %file.display(), "moved the snapshot out of the state database");
        Ok(())
    }

    fn write_rows(
        db: &Database,
        state: &ClusterState,
        keys: &BTreeSet<RowKey>,
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

    /// Writes a whole state (from a snapshot) in one durable transaction, replacing what was
    /// there, rows not yet committed included.
    fn write_all(&self, applied: &Applied) -> Result<(), std::io::Error> {
        *self.rows.pending() = Pending::default();
        let tx = self.rows.db.begin_write().map_err(io_err)?;
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
        }
        blocking(|| tx.commit().map_err(io_err))
    }
}

impl RaftSnapshotBuilder<C> for StateMachineStore {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, std::io::Error> {
        let (meta, data) = {
            let applied = self.shared.read();
            let data = encode_snapshot_data(&applied.state)?;
            let meta = SnapshotMetaOf::<C> {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (meta, data)
        };
        // Durable before openraft may purge the entries it covers.
        blocking(|| snapshot_file::write(&self.snapshot_path, &meta, &data))?;
        self.rows.pending().durable_due = true;
        self.metrics.snapshots_built.inc();
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        Ok(SnapshotOf::<C, SnapshotData> {
            meta,
            snapshot: Cursor::new(data),
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
        let mut touched_entries = 0u64;
        let (touched, last_applied, membership) = {
            let mut touched = BTreeSet::new();
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
                touched_entries += 1;
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
        {
            // The rows this batch changed join those waiting; committed together when due.
            let mut p = self.rows.pending();
            p.entries += touched_entries;
            p.touched.extend(touched);
            p.last_applied = Some(last_applied);
            if membership.is_some() {
                p.membership = membership;
            }
            p.since.get_or_insert_with(Instant::now);
            if p.due(self.rows.flush_age) {
                self.rows.flush(&mut p)?;
                self.metrics.row_commits.inc();
            }
        }

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
        // The snapshot first (durable), then the rows: if this stops between the two, the next
        // start installs the snapshot again.
        blocking(|| snapshot_file::write(&self.snapshot_path, meta, &data))?;
        self.write_all(&applied)?;
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
        let Some((meta, data)) = blocking(|| snapshot_file::read(&self.snapshot_path))? else {
            return Ok(None);
        };
        Ok(Some(SnapshotOf::<C, SnapshotData> {
            meta,
            snapshot: Cursor::new(data),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::{Command, Request, VmSpec};

    fn entry(index: u64, cmd: Command) -> openraft::alias::EntryOf<C> {
        let req = Request::new(cmd, 1);
        serde_json::from_value(serde_json::json!({
            "log_id": {"leader_id": {"term": 1, "node_id": 1}, "index": index},
            "payload": {"Normal": req},
        }))
        .unwrap()
    }

    async fn apply_all(sm: &mut StateMachineStore, entries: Vec<openraft::alias::EntryOf<C>>) {
        let s = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(s).await.unwrap();
    }

    /// Applied rows are committed when enough entries wait, not after every batch, and the
    /// rows still waiting are committed when the store is dropped: reopening gives the same
    /// state at the same log id.
    #[tokio::test]
    async fn rows_are_committed_in_batches_and_when_dropped() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("state.redb");
        // Only the entry count makes commits due here, whatever the machine's speed.
        let mut sm = StateMachineStore::open_with_flush_age(&path, Duration::MAX).unwrap();
        apply_all(
            &mut sm,
            crate::worker_and_network()
                .into_iter()
                .zip(1..)
                .map(|(c, i)| entry(i, c))
                .collect(),
        )
        .await;
        for i in 3..=10u64 {
            let spec = VmSpec::new(format!("vm{i}"));
            apply_all(&mut sm, vec![entry(i, Command::CreateVm { spec })]).await;
        }
        assert_eq!(sm.metrics().row_commits.get(), 0, "10 entries: not due yet");
        let mut next = 11u64;
        while sm.metrics().row_commits.get() == 0 {
            assert!(
                next < 10 + FLUSH_ENTRIES + 2,
                "no commit after {next} entries"
            );
            let spec = VmSpec::new(format!("vm{next}"));
            apply_all(&mut sm, vec![entry(next, Command::CreateVm { spec })]).await;
            next += 1;
        }
        // Some more that are not due yet, then close.
        for i in next..next + 5 {
            let spec = VmSpec::new(format!("vm{i}"));
            apply_all(&mut sm, vec![entry(i, Command::CreateVm { spec })]).await;
        }
        let (state, applied) = {
            let shared = sm.shared();
            let a = shared.read();
            (a.state.clone(), a.last_applied)
        };
        assert_eq!(applied.map(|l| l.index()), Some(next + 4));
        drop(sm);
        let reopened = StateMachineStore::open(&path).unwrap().shared();
        let a = reopened.read();
        assert_eq!(a.last_applied, applied);
        assert_eq!(a.state, state);
    }

    /// A state file written before address leases had rows of their own (every lease inline in
    /// its network's row) opens to the same state, and opening rewrites it in the current layout.
    #[test]
    fn rows_of_an_older_layout_are_rewritten_at_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("state.redb");
        let mut s = ClusterState::default();
        let [worker, network] = crate::worker_and_network();
        let cmds = [
            worker,
            network,
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
