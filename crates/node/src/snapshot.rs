//! The receiving half of snapshot transfer: a lagging follower takes a snapshot from the
//! leader in bounded chunks ([`blixard_transport::chunks`]) and installs it.
//!
//! The first chunk's header names the leader's vote; it must be the sender's certificate
//! ([`security::check_snapshot`]) before any data is kept. The data is reassembled up to
//! `MAX_SNAPSHOT_BYTES`, in order, exactly the announced size, one snapshot at a time per node,
//! within [`RECEIVE_TIMEOUT`]; anything else is refused and changes nothing.

use std::io::Cursor;
use std::time::Duration;

use blixard_api::{pb, MAX_SNAPSHOT_BYTES, SNAPSHOT_CHUNK};
use blixard_raft::TypeConfig;
use blixard_transport::chunks;
use openraft::Snapshot;
use tonic::{Response, Status, Streaming};

use crate::node::Node;
use crate::security;

/// How long a snapshot may take to arrive (the sender gives up after 60 s).
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Receives and installs one snapshot streamed by the peer whose certificate says `cert`.
pub async fn receive(
    node: &Node,
    cert: u64,
    stream: Streaming<pb::SnapshotChunk>,
) -> Result<Response<pb::RaftMessage>, Status> {
    let metrics = &node.metrics.store;
    let res = receive_data(node, cert, stream).await;
    let (header, data, n) = match res {
        Ok(x) => x,
        Err(s) => {
            metrics.snapshots_refused.inc();
            tracing::warn!(from = cert, error = %s.message(), "refused a snapshot");
            return Err(s);
        }
    };
    metrics.snapshot_chunks_received.inc_by(n);
    tracing::info!(
        from = cert,
        bytes = data.len(),
        chunks = n,
        last_log_id = ?header.meta.last_log_id,
        "received snapshot"
    );
    let snapshot = Snapshot {
        meta: header.meta,
        snapshot: Cursor::new(data),
    };
    let res = node
        .raft
        .install_full_snapshot(header.vote, snapshot)
        .await
        .map_err(openraft::error::RaftError::<TypeConfig>::Fatal);
    serde_json::to_vec(&res)
        .map(|data| Response::new(pb::RaftMessage { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

async fn receive_data(
    node: &Node,
    cert: u64,
    stream: Streaming<pb::SnapshotChunk>,
) -> Result<(chunks::SnapshotHeader, Vec<u8>, u64), Status> {
    let _slot = node.receiving_snapshot.try_lock().map_err(|_| {
        Status::unavailable("this node is already receiving a snapshot; the leader retries later")
    })?;
    let recv = chunks::receive(stream, MAX_SNAPSHOT_BYTES, SNAPSHOT_CHUNK, |h| {
        security::check_snapshot(cert, &h.vote, &h.meta)
    });
    match tokio::time::timeout(RECEIVE_TIMEOUT, recv).await {
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the snapshot did not arrive within {} s",
            RECEIVE_TIMEOUT.as_secs()
        ))),
        Ok(Err(s)) => Err(s),
        Ok(Ok(Err(e))) => Err(Status::invalid_argument(format!("snapshot refused: {e}"))),
        Ok(Ok(Ok(x))) => Ok(x),
    }
}
