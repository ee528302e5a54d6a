//! The Raft log and vote, in one redb file.
//!
//! Tables: the entries live in segment tables of 4,096 consecutive indexes each
//! (`log_seg_<first index / 4096, hex>`, the index mapped to a bincode-encoded entry);
//! `log_meta` holds the vote, the last purged log id and the committed hint (JSON).
//!
//! Why segments: purging after each snapshot deleted about 10,000 entries one key at a time
//! (`retain_in`), about 11 % of the leader's CPU under a write load (`perf` of
//! `bench writes --clients 64`, docs/benchmarks.md). Purging now drops whole segment tables;
//! the entries of a partly purged segment stay until the rest of it is purged, hidden from
//! readers by the purged log id. Appends and votes commit with redb's immediate durability, so
//! an appended entry or a saved vote survives a crash once it is reported flushed. openraft
//! hands many proposals to one `append`, so concurrent writes share one fsync, and it is the
//! only fsync of a batch (the state machine commits without one, see `sm_store`). The commit
//! runs with `block_in_place`, so the fsync does not stall the runtime's other tasks.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{io_err, TypeConfig};

/// The single log table of earlier versions: moved into segments at open.
const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SEGMENT_PREFIX: &str = "log_seg_";
const SEGMENT_BITS: u32 = 12;
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
const VOTE_KEY: &str = "vote";
const PURGED_KEY: &str = "last_purged";
const COMMITTED_KEY: &str = "committed";

type C = TypeConfig;

/// Log entries are stored with bincode: compact and several times faster than JSON for the
/// hot path (every proposal is encoded once here and decoded by every replication read).
pub fn encode_entry(e: &EntryOf<C>) -> Result<Vec<u8>, std::io::Error> {
    bincode::serialize(e).map_err(io_err)
}

/// Decodes a stored entry; anything malformed is an `InvalidData` error (fuzzed: never a panic).
pub fn decode_entry(b: &[u8]) -> Result<EntryOf<C>, std::io::Error> {
    bincode::deserialize(b).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("corrupt log entry: {e}"),
        )
    })
}

/// Runs a blocking step (an fsync) without stalling the runtime's worker: on a multi-threaded
/// runtime the worker's other tasks move elsewhere meanwhile; elsewhere it just runs.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn segment_of(index: u64) -> u64 {
    index >> SEGMENT_BITS
}

fn segment_name(seg: u64) -> String {
    format!("{SEGMENT_PREFIX}{seg:016x}")
}

fn segment(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

/// The last index a segment may hold.
fn segment_end(seg: u64) -> u64 {
    ((seg + 1) << SEGMENT_BITS) - 1
}

/// The segments present, in ascending order.
fn segments(tables: impl Iterator<Item = redb::UntypedTableHandle>) -> Vec<u64> {
    let mut v: Vec<u64> = tables
        .filter_map(|t| {
            let hex = t.name().strip_prefix(SEGMENT_PREFIX)?.to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// The redb-backed Raft log. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// The first index readers may see (one past the last purged), cached from `log_meta`.
    floor: Arc<AtomicU64>,
    /// The latest committed log id openraft reported and not yet written: it rides along with
    /// the next append's transaction instead of costing a commit of its own.
    committed: Arc<std::sync::Mutex<Option<Option<LogIdOf<C>>>>>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        let db = crate::open_db(path)?;
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        let legacy: Vec<(u64, Vec<u8>)> = {
            let t = tx.open_table(LEGACY_LOG).map_err(io_err)?;
            let mut v = Vec::new();
            for item in t.iter().map_err(io_err)? {
                let (k, e) = item.map_err(io_err)?;
                v.push((k.value(), e.value().to_vec()));
            }
            v
        };
        if !legacy.is_empty() {
            insert_entries(&tx, legacy.iter().map(|(k, v)| (*k, v.as_slice())))?;
            tracing::info!(entries = legacy.len(), "moved the log into segments");
        }
        tx.delete_table(LEGACY_LOG).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
        let store = Self {
            db: Arc::new(db),
            floor: Arc::default(),
            committed: Arc::default(),
        };
        let purged: Option<LogIdOf<C>> = store.get_meta(PURGED_KEY)?;
        store.set_floor(purged.as_ref());
        Ok(store)
    }

    fn set_floor(&self, purged: Option<&LogIdOf<C>>) {
        let floor = purged.map_or(0, |l| l.index() + 1);
        self.floor.store(floor, Ordering::Release);
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, std::io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(META).map_err(io_err)?;
        match t.get(key).map_err(io_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(io_err),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<(), std::io::Error> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(META).map_err(io_err)?;
            t.insert(key, bytes.as_slice()).map_err(io_err)?;
        }
        blocking(|| tx.commit().map_err(io_err))
    }

    /// The last entry held, purged ones aside (encoded).
    fn last_entry(&self) -> Result<Option<Vec<u8>>, std::io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let floor = self.floor.load(Ordering::Acquire);
        for seg in segments(tx.list_tables().map_err(io_err)?)
            .into_iter()
            .rev()
        {
            let name = segment_name(seg);
            let t = tx.open_table(segment(&name)).map_err(io_err)?;
            let last = t
                .last()
                .map_err(io_err)?
                .map(|(k, v)| (k.value(), v.value().to_vec()));
            if let Some((index, v)) = last {
                return Ok((index >= floor).then_some(v));
            }
        }
        Ok(None)
    }
}

/// Inserts encoded entries into their segments (creating them as needed).
fn insert_entries<'a>(
    tx: &redb::WriteTransaction,
    entries: impl Iterator<Item = (u64, &'a [u8])>,
) -> Result<(), std::io::Error> {
    let mut open: Option<(u64, redb::Table<'_, u64, &'static [u8]>)> = None;
    for (index, bytes) in entries {
        let seg = segment_of(index);
        if open.as_ref().map(|(s, _)| *s) != Some(seg) {
            let name = segment_name(seg);
            open = Some((seg, tx.open_table(segment(&name)).map_err(io_err)?));
        }
        if let Some((_, t)) = open.as_mut() {
            t.insert(index, bytes).map_err(io_err)?;
        }
    }
    Ok(())
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, std::io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Purged entries still present in a partly purged segment are not part of the log.
        let start = start.max(self.floor.load(Ordering::Acquire));
        let mut out = Vec::new();
        for seg in segments(tx.list_tables().map_err(io_err)?) {
            if segment_end(seg) < start {
                continue;
            }
            let name = segment_name(seg);
            let t = tx.open_table(segment(&name)).map_err(io_err)?;
            for item in t.range(start..).map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                if !range.contains(&k.value()) {
                    return Ok(out);
                }
                out.push(decode_entry(v.value())?);
            }
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, std::io::Error> {
        self.get_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, std::io::Error> {
        let last_purged: Option<LogIdOf<C>> = self.get_meta(PURGED_KEY)?;
        let last = match self.last_entry()? {
            None => None,
            Some(v) => Some(decode_entry(&v)?.log_id()),
        };
        Ok(LogState {
            last_log_id: std::cmp::max(last, last_purged),
            last_purged_log_id: last_purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), std::io::Error> {
        self.put_meta(VOTE_KEY, vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<C>>,
    ) -> Result<(), std::io::Error> {
        // A hint for faster recovery only (openraft learns the commit index from the leader
        // anyway): kept in memory and written with the next append, which costs nothing extra;
        // it was a redb commit of its own on every node for every commit-index change.
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, std::io::Error> {
        if let Some(c) = *self.committed.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(c);
        }
        Ok(self
            .get_meta::<Option<LogIdOf<C>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.index(), encode_entry(&e)?)))
            .collect::<Result<Vec<_>, std::io::Error>>()?;
        let committed = self
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let tx = self.db.begin_write().map_err(io_err)?;
        insert_entries(&tx, encoded.iter().map(|(i, b)| (*i, b.as_slice())))?;
        if let Some(c) = committed {
            let bytes = serde_json::to_vec(&c).map_err(io_err)?;
            let mut t = tx.open_table(META).map_err(io_err)?;
            t.insert(COMMITTED_KEY, bytes.as_slice()).map_err(io_err)?;
        }
        let res = blocking(|| tx.commit().map_err(io_err));
        let reported = res
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.io_completed(reported);
        res
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<C>>,
    ) -> Result<(), std::io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let tx = self.db.begin_write().map_err(io_err)?;
        for seg in segments(tx.list_tables().map_err(io_err)?) {
            let name = segment_name(seg);
            if seg > segment_of(from) {
                tx.delete_table(segment(&name)).map_err(io_err)?;
            } else if seg == segment_of(from) {
                let mut t = tx.open_table(segment(&name)).map_err(io_err)?;
                t.retain_in(from.., |_, _| false).map_err(io_err)?;
            }
        }
        blocking(|| tx.commit().map_err(io_err))
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), std::io::Error> {
        let bytes = serde_json::to_vec(&log_id).map_err(io_err)?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut m = tx.open_table(META).map_err(io_err)?;
            m.insert(PURGED_KEY, bytes.as_slice()).map_err(io_err)?;
        }
        // Whole segments only: dropping a table frees its pages without touching each key.
        for seg in segments(tx.list_tables().map_err(io_err)?) {
            if segment_end(seg) <= log_id.index() {
                let name = segment_name(seg);
                tx.delete_table(segment(&name)).map_err(io_err)?;
            }
        }
        blocking(|| tx.commit().map_err(io_err))?;
        self.set_floor(Some(&log_id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(index: u64) -> EntryOf<C> {
        serde_json::from_value(serde_json::json!({
            "log_id": {"leader_id": {"term": 1, "node_id": 1}, "index": index},
            "payload": "Blank",
        }))
        .unwrap()
    }

    async fn indexes(log: &mut LogStore, range: std::ops::RangeFrom<u64>) -> Vec<u64> {
        let entries = log.try_get_log_entries(range).await.unwrap();
        entries.iter().map(|e| e.index()).collect()
    }

    /// Entries spanning several segments read back in order; a purge drops the whole segments
    /// below it and hides the purged part of the next; truncation removes the tail across
    /// segments; all of it holds after reopening.
    #[tokio::test]
    async fn segments_append_purge_truncate_and_reopen() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("raft.redb");
        let mut log = LogStore::open(&path).unwrap();
        let n = 3 * (1u64 << SEGMENT_BITS) + 10;
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let entries: Vec<_> = chunk.iter().map(|&i| blank(i)).collect();
            log.append(entries, IOFlushed::noop()).await.unwrap();
        }
        assert_eq!(indexes(&mut log, 0..).await, (0..n).collect::<Vec<_>>());
        let in_second = (1u64 << SEGMENT_BITS) + 5;
        assert_eq!(
            indexes(&mut log, in_second - 2..).await[..3],
            [in_second - 2, in_second - 1, in_second]
        );

        log.purge(blank(in_second).log_id()).await.unwrap();
        assert_eq!(indexes(&mut log, 0..).await[0], in_second + 1);
        let tables = {
            let tx = log.db.begin_read().unwrap();
            segments(tx.list_tables().unwrap())
        };
        assert_eq!(tables, vec![1, 2, 3], "segment 0 dropped whole");

        log.truncate_after(Some(blank(2 * (1 << SEGMENT_BITS) - 3).log_id()))
            .await
            .unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(blank(in_second).log_id()));
        let last = 2 * (1u64 << SEGMENT_BITS) - 3;
        assert_eq!(state.last_log_id, Some(blank(last).log_id()));
        drop(log);

        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(
            indexes(&mut log, 0..).await,
            (in_second + 1..=last).collect::<Vec<_>>()
        );
        // Purging everything: the state reports the purged id as the last one.
        log.purge(blank(last).log_id()).await.unwrap();
        assert!(indexes(&mut log, 0..).await.is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(blank(last).log_id()));
    }

    /// A log written by an earlier version (one `log` table) opens with the same entries.
    #[tokio::test]
    async fn the_single_table_log_of_earlier_versions_is_moved_into_segments() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let db = crate::open_db(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LEGACY_LOG).unwrap();
                for i in 0..5000u64 {
                    t.insert(i, encode_entry(&blank(i)).unwrap().as_slice())
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(indexes(&mut log, 0..).await, (0..5000).collect::<Vec<_>>());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(blank(4999).log_id()));
    }
}
