//! Snapshots in bounded pieces: how the leader cuts one into `SnapshotChunk` messages and how a
//! follower puts it back together, refusing anything that is not exactly the snapshot it was
//! announced as (see ARCHITECTURE.md, "Transport limits").
//!
//! The first chunk carries a header (the leader's vote, the snapshot's metadata and the total
//! size of its data); every chunk carries the next bytes of the data at its offset. The
//! receiver checks the header (the claimed leader is the sender, the size is under the cap)
//! before it keeps any data, and then holds at most the announced size.

use blixard_api::pb::SnapshotChunk;
use openraft::alias::{SnapshotMetaOf, VoteOf};
use serde::{Deserialize, Serialize};

use crate::TypeConfig;

/// What the first chunk announces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub vote: VoteOf<TypeConfig>,
    pub meta: SnapshotMetaOf<TypeConfig>,
    /// Bytes of snapshot data that follow.
    pub total: u64,
}

impl SnapshotHeader {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(b: &[u8]) -> Result<Self, ChunkError> {
        serde_json::from_slice(b).map_err(|e| ChunkError::BadHeader(e.to_string()))
    }
}

/// Why a snapshot stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("the snapshot stream ended before its first chunk")]
    Empty,
    #[error("the first snapshot chunk has no header")]
    MissingHeader,
    #[error("only the first snapshot chunk may carry a header (chunk {0} has one)")]
    LateHeader(u64),
    #[error("malformed snapshot header: {0}")]
    BadHeader(String),
    #[error("the snapshot announces {total} bytes, more than the {cap} bytes a node accepts")]
    TooLarge { total: u64, cap: usize },
    #[error("snapshot chunk of {len} bytes, more than the {max} bytes a chunk may carry")]
    ChunkTooLarge { len: usize, max: usize },
    #[error("snapshot chunk at offset {got}, expected offset {expected} (chunks must arrive in order, without gaps or overlaps)")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("the snapshot data runs past the {total} bytes its header announced")]
    Overflow { total: u64 },
    #[error("the snapshot stream ended after {got} of {total} announced bytes")]
    Truncated { got: u64, total: u64 },
}

/// Reassembles the data of one snapshot from its chunks.
#[derive(Debug)]
pub struct Assembler {
    buf: Vec<u8>,
    total: u64,
    max_chunk: usize,
    chunks: u64,
}

impl Assembler {
    /// Accepts a snapshot of `total` bytes if that is at most `cap`; chunks may carry at most
    /// `max_chunk` bytes each. Nothing is allocated up front: the buffer grows with the data.
    pub fn new(total: u64, cap: usize, max_chunk: usize) -> Result<Self, ChunkError> {
        if total > cap as u64 {
            return Err(ChunkError::TooLarge { total, cap });
        }
        Ok(Self {
            buf: Vec::new(),
            total,
            max_chunk,
            chunks: 0,
        })
    }

    /// Appends one chunk's data, which must start where the data so far ends.
    pub fn push(&mut self, offset: u64, data: &[u8]) -> Result<(), ChunkError> {
        if data.len() > self.max_chunk {
            return Err(ChunkError::ChunkTooLarge {
                len: data.len(),
                max: self.max_chunk,
            });
        }
        let expected = self.buf.len() as u64;
        if offset != expected {
            return Err(ChunkError::OutOfOrder {
                expected,
                got: offset,
            });
        }
        if expected + data.len() as u64 > self.total {
            return Err(ChunkError::Overflow { total: self.total });
        }
        self.buf.extend_from_slice(data);
        self.chunks += 1;
        Ok(())
    }

    /// Chunks accepted so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The whole data, once exactly the announced size arrived.
    pub fn finish(self) -> Result<Vec<u8>, ChunkError> {
        let got = self.buf.len() as u64;
        if got != self.total {
            return Err(ChunkError::Truncated {
                got,
                total: self.total,
            });
        }
        Ok(self.buf)
    }
}

/// Cuts a snapshot into chunks of at most `chunk` data bytes, lazily; the first carries
/// `header`. A snapshot without data is one chunk with the header alone.
pub fn split(header: Vec<u8>, data: Vec<u8>, chunk: usize) -> Chunks {
    Chunks {
        header: Some(header),
        data,
        offset: 0,
        chunk: chunk.max(1),
        done: false,
    }
}

/// The chunks of one snapshot, made as they are sent.
#[derive(Debug)]
pub struct Chunks {
    header: Option<Vec<u8>>,
    data: Vec<u8>,
    offset: usize,
    chunk: usize,
    done: bool,
}

impl Iterator for Chunks {
    type Item = SnapshotChunk;

    fn next(&mut self) -> Option<SnapshotChunk> {
        if self.done {
            return None;
        }
        let end = (self.offset + self.chunk).min(self.data.len());
        let c = SnapshotChunk {
            header: self.header.take().unwrap_or_default(),
            offset: self.offset as u64,
            data: self.data[self.offset..end].to_vec(),
        };
        self.offset = end;
        self.done = self.offset >= self.data.len();
        Some(c)
    }
}

/// Receives one snapshot from a stream of chunks: the first must carry the header, which
/// `accept` checks (the sender's right to send it) before any data is kept.
pub async fn receive<S, E>(
    mut stream: S,
    cap: usize,
    max_chunk: usize,
    accept: impl FnOnce(&SnapshotHeader) -> Result<(), E>,
) -> Result<Result<(SnapshotHeader, Vec<u8>, u64), ChunkError>, E>
where
    S: futures::Stream<Item = Result<SnapshotChunk, E>> + Unpin,
{
    use futures::StreamExt;
    let Some(first) = stream.next().await.transpose()? else {
        return Ok(Err(ChunkError::Empty));
    };
    if first.header.is_empty() {
        return Ok(Err(ChunkError::MissingHeader));
    }
    let header = match SnapshotHeader::decode(&first.header) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    accept(&header)?;
    let mut asm = match Assembler::new(header.total, cap, max_chunk) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    if let Err(e) = asm.push(first.offset, &first.data) {
        return Ok(Err(e));
    }
    let mut n = 1u64;
    while let Some(c) = stream.next().await.transpose()? {
        if !c.header.is_empty() {
            return Ok(Err(ChunkError::LateHeader(n)));
        }
        if let Err(e) = asm.push(c.offset, &c.data) {
            return Ok(Err(e));
        }
        n += 1;
    }
    let chunks = asm.chunks();
    Ok(asm.finish().map(|data| (header, data, chunks)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use openraft::Vote;

    fn header(total: u64) -> Vec<u8> {
        SnapshotHeader {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: None,
                last_membership: Default::default(),
            },
            total,
        }
        .encode()
        .unwrap()
    }

    async fn recv(
        chunks: Vec<SnapshotChunk>,
        cap: usize,
    ) -> Result<(SnapshotHeader, Vec<u8>, u64), ChunkError> {
        let s = stream::iter(chunks.into_iter().map(Ok::<_, ()>));
        receive(s, cap, 1024, |_| Ok(())).await.unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn a_split_snapshot_reassembles_to_the_same_bytes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 7, 1000, 1024] {
            let chunks: Vec<_> = split(header(data.len() as u64), data.clone(), chunk).collect();
            assert_eq!(chunks.len(), data.len().div_ceil(chunk));
            let (h, got, n) = rt().block_on(recv(chunks, 1 << 20)).unwrap();
            assert_eq!(h.total, data.len() as u64);
            assert_eq!(got, data);
            assert_eq!(n, data.len().div_ceil(chunk) as u64);
        }
        // No data: one chunk with the header.
        let chunks: Vec<_> = split(header(0), vec![], 1024).collect();
        assert_eq!(chunks.len(), 1);
        let (_, got, _) = rt().block_on(recv(chunks, 1 << 20)).unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn a_snapshot_over_the_cap_is_refused_from_its_header() {
        let data = vec![0u8; 5000];
        // Announced above the cap: refused before any data is kept.
        let chunks: Vec<_> = split(header(5000), data.clone(), 1000).collect();
        assert_eq!(
            rt().block_on(recv(chunks, 4096)).unwrap_err(),
            ChunkError::TooLarge {
                total: 5000,
                cap: 4096
            }
        );
        // Announced under the cap but streaming more: refused at the first extra byte.
        let chunks: Vec<_> = split(header(3000), data.clone(), 1000).collect();
        assert_eq!(
            rt().block_on(recv(chunks, 4096)).unwrap_err(),
            ChunkError::Overflow { total: 3000 }
        );
        // A chunk above the chunk limit.
        let chunks: Vec<_> = split(header(5000), data.clone(), 2000).collect();
        assert_eq!(
            rt().block_on(recv(chunks, 1 << 20)).unwrap_err(),
            ChunkError::ChunkTooLarge {
                len: 2000,
                max: 1024
            }
        );
    }

    #[test]
    fn out_of_order_missing_repeated_or_headless_chunks_are_refused() {
        let data: Vec<u8> = (0..4000u32).map(|i| i.to_le_bytes()[0]).collect();
        let chunks: Vec<_> = split(header(4000), data.clone(), 1000).collect();
        let mut swapped = chunks.clone();
        swapped.swap(1, 2);
        assert_eq!(
            rt().block_on(recv(swapped, 1 << 20)).unwrap_err(),
            ChunkError::OutOfOrder {
                expected: 1000,
                got: 2000
            }
        );
        let mut repeated = chunks.clone();
        repeated.insert(2, repeated[1].clone());
        assert_eq!(
            rt().block_on(recv(repeated, 1 << 20)).unwrap_err(),
            ChunkError::OutOfOrder {
                expected: 2000,
                got: 1000
            }
        );
        let mut cut = chunks.clone();
        cut.pop();
        assert_eq!(
            rt().block_on(recv(cut, 1 << 20)).unwrap_err(),
            ChunkError::Truncated {
                got: 3000,
                total: 4000
            }
        );
        let mut headless = chunks.clone();
        headless[0].header.clear();
        assert_eq!(
            rt().block_on(recv(headless, 1 << 20)).unwrap_err(),
            ChunkError::MissingHeader
        );
        let mut late = chunks.clone();
        late[2].header = header(4000);
        assert_eq!(
            rt().block_on(recv(late, 1 << 20)).unwrap_err(),
            ChunkError::LateHeader(2)
        );
        let mut garbage = chunks;
        garbage[0].header = b"{not json".to_vec();
        assert!(matches!(
            rt().block_on(recv(garbage, 1 << 20)).unwrap_err(),
            ChunkError::BadHeader(_)
        ));
        assert_eq!(
            rt().block_on(recv(vec![], 1 << 20)).unwrap_err(),
            ChunkError::Empty
        );
    }

    #[test]
    fn the_header_check_runs_before_any_data_is_read() {
        let data = vec![1u8; 3000];
        let chunks: Vec<_> = split(header(3000), data.clone(), 1000).collect();
        let s = stream::iter(chunks.into_iter().map(Ok::<_, &str>));
        let r = rt().block_on(receive(s, 1 << 20, 1024, |h| {
            assert_eq!(h.total, 3000);
            Err("not the leader")
        }));
        assert_eq!(r.unwrap_err(), "not the leader");
    }
}
