//! The Raft log and vote, in one redb file.
//!
//! Tables: `log` maps the log index to a bincode-encoded entry; `log_meta` holds the vote and
//! the last purged log id (JSON). Appends and votes commit with redb's immediate durability, so
//! an appended entry or a saved vote survives a crash once it is reported flushed. openraft
//! hands many proposals to one `append`, so concurrent writes share one fsync, and it is the
//! only fsync of a batch (the state machine commits without one, see `sm_store`). The commit
//! runs with `block_in_place`, so the fsync does not stall the runtime's other tasks.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{io_err, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
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

/// The redb-backed Raft log. Cloning shares the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, std::io::Error> {
        let db = crate::open_db(path)?;
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(LOG).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
        Ok(Self { db: Arc::new(db) })
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

    /// Index of the last log entry held (not counting purged ones).
    pub fn last_index(&self) -> Result<Option<u64>, std::io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let last = t.last().map_err(io_err)?.map(|(k, _)| k.value());
        Ok(last)
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, std::io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for item in t.range(start..).map_err(io_err)? {
            let (k, v) = item.map_err(io_err)?;
            if !range.contains(&k.value()) {
                break;
            }
            out.push(decode_entry(v.value())?);
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
        let last = {
            let tx = self.db.begin_read().map_err(io_err)?;
            let t = tx.open_table(LOG).map_err(io_err)?;
            let last = t.last().map_err(io_err)?.map(|(_, v)| v.value().to_vec());
            match last {
                None => None,
                Some(v) => Some(decode_entry(&v)?.log_id()),
            }
        };
        Ok(LogState {
            last_log_id: last.or(last_purged),
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
        // anyway): no fsync of its own; the next append's commit persists it.
        let bytes = serde_json::to_vec(&committed).map_err(io_err)?;
        let mut tx = self.db.begin_write().map_err(io_err)?;
        tx.set_durability(redb::Durability::None);
        {
            let mut t = tx.open_table(META).map_err(io_err)?;
            t.insert(COMMITTED_KEY, bytes.as_slice()).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, std::io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<C>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
    {
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            for entry in entries {
                let bytes = encode_entry(&entry)?;
                t.insert(entry.index(), bytes.as_slice()).map_err(io_err)?;
            }
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
        {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(from.., |_, _| false).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), std::io::Error> {
        let bytes = serde_json::to_vec(&log_id).map_err(io_err)?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut m = tx.open_table(META).map_err(io_err)?;
            m.insert(PURGED_KEY, bytes.as_slice()).map_err(io_err)?;
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(..=log_id.index(), |_, _| false)
                .map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }
}
