//! The current snapshot, in a file of its own beside `state.redb`, and the snapshot data format.
//!
//! Why a file and not a redb row: a snapshot is one large value written whole every
//! `snapshot_every` entries. Stored in redb it was copied into freshly allocated pages and
//! committed with an fsync inside the state machine's database, which cost about 6 % of the
//! whole cluster's CPU under a write load (`perf` of `bench writes --clients 64`,
//! docs/benchmarks.md). A file is written once, fsynced, and renamed into place.
//!
//! The snapshot file is also what makes the state machine's non-durable row commits safe
//! (see `sm_store`): it is durable before `build_snapshot` returns, hence before openraft purges
//! any log entry it covers, and openraft installs it at startup whenever it is ahead of the
//! rows (`restore_from_snapshot`).
//!
//! Layout: `BLXSNAP1`, the metadata's length (u32, little endian), the metadata (JSON), the
//! data. Data: `BXS2` then the state in bincode; data that starts with `{` is the JSON of
//! earlier versions and is still read.

use std::io::Write;
use std::path::{Path, PathBuf};

use bincode::Options;
use blixard_core::ClusterState;
use openraft::alias::SnapshotMetaOf;

use crate::{io_err, TypeConfig};

const FILE_MAGIC: &[u8; 8] = b"BLXSNAP1";
const DATA_MAGIC: &[u8; 4] = b"BXS2";
/// A snapshot larger than this is refused when read (the state's byte budgets keep real
/// snapshots far below it; see `blixard_api::MAX_SNAPSHOT_BYTES`).
const MAX_DATA: u64 = 256 * 1024 * 1024;

type C = TypeConfig;

fn bincode_opts() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_limit(MAX_DATA)
}

fn invalid(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// The snapshot data of `state`: compact and several times faster to build and read than JSON.
pub fn encode_snapshot_data(state: &ClusterState) -> Result<Vec<u8>, std::io::Error> {
    let mut out = DATA_MAGIC.to_vec();
    bincode_opts()
        .serialize_into(&mut out, state)
        .map_err(io_err)?;
    Ok(out)
}

/// The state a snapshot's data holds, with its derived fields rebuilt; anything malformed is an
/// `InvalidData` error (fuzzed: never a panic).
pub fn decode_snapshot_data(data: &[u8]) -> Result<ClusterState, std::io::Error> {
    let mut state: ClusterState = if let Some(body) = data.strip_prefix(DATA_MAGIC) {
        bincode_opts()
            .deserialize(body)
            .map_err(|e| invalid("corrupt snapshot", e))?
    } else {
        serde_json::from_slice(data).map_err(|e| invalid("corrupt snapshot", e))?
    };
    state.rebuild_derived();
    Ok(state)
}

/// Where the snapshot of the state machine stored at `db_path` lives.
pub fn path_for(db_path: &Path) -> PathBuf {
    db_path.with_extension("snapshot")
}

/// Writes the snapshot durably: a temporary file, fsynced, renamed over the old one, and the
/// directory fsynced, so a crash leaves either the old snapshot or the new one, whole.
pub fn write(path: &Path, meta: &SnapshotMetaOf<C>, data: &[u8]) -> Result<(), std::io::Error> {
    let meta = serde_json::to_vec(meta).map_err(io_err)?;
    let meta_len = u32::try_from(meta.len()).map_err(io_err)?;
    let tmp = path.with_extension("snapshot.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
        w.write_all(FILE_MAGIC)?;
        w.write_all(&meta_len.to_le_bytes())?;
        w.write_all(&meta)?;
        w.write_all(data)?;
        w.flush()?;
        drop(w);
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A snapshot read back: its metadata and its data.
pub type Stored = (SnapshotMetaOf<C>, Vec<u8>);

/// Reads the snapshot at `path`, if there is one.
pub fn read(path: &Path) -> Result<Option<Stored>, std::io::Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| invalid(&format!("snapshot file {}", path.display()), why);
    let rest = bytes
        .strip_prefix(FILE_MAGIC)
        .ok_or_else(|| bad("not a blixard snapshot"))?;
    if rest.len() < 4 {
        return Err(bad("truncated"));
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(bad("truncated metadata"));
    }
    let (meta, data) = rest.split_at(len);
    let meta: SnapshotMetaOf<C> = serde_json::from_slice(meta).map_err(|e| bad(&e.to_string()))?;
    Ok(Some((meta, data.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::{Command, Request, VmSpec};

    fn some_state() -> ClusterState {
        let mut s = ClusterState::default();
        let [worker, network] = crate::worker_and_network();
        let cmds = [
            worker,
            network,
            Command::CreateVm {
                spec: VmSpec::new("a"),
            },
        ];
        for (i, c) in cmds.into_iter().enumerate() {
            let mut r = Request::new(c, 1);
            r.request_id = Some(format!("req-{i}"));
            s.apply(i as u64 + 1, &r).expect("apply");
        }
        s.take_touched();
        s
    }

    /// The binary data decodes to the same state (derived fields included), and the JSON of
    /// earlier versions is still read.
    #[test]
    fn data_round_trips_in_both_formats() {
        let s = some_state();
        let bin = encode_snapshot_data(&s).unwrap();
        assert_eq!(decode_snapshot_data(&bin).unwrap(), s);
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(decode_snapshot_data(&json).unwrap(), s);
        assert!(bin.len() < json.len(), "{} vs {}", bin.len(), json.len());
        for cut in [0, 3, 4, 10, bin.len() - 1] {
            assert!(decode_snapshot_data(&bin[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn file_round_trips_and_refuses_garbage() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = path_for(&dir.path().join("state.redb"));
        assert!(read(&path).unwrap().is_none());
        let meta = SnapshotMetaOf::<C>::default();
        let data = encode_snapshot_data(&some_state()).unwrap();
        write(&path, &meta, &data).unwrap();
        let (m, d) = read(&path).unwrap().unwrap();
        assert_eq!(m, meta);
        assert_eq!(d, data);
        std::fs::write(&path, b"BLXSNAP1\xff\xff").unwrap();
        assert!(read(&path).is_err());
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(read(&path).is_err());
    }
}
