//! Targets of the peer path: what a member decodes from another member or from its own disk.

use blixard_api::pb;
use blixard_core::{ClusterState, Request};
use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use prost::Message;

use crate::{base_state, s, C};

/// The peer service's unary messages, as a node receives them: the protobuf envelope, then
/// the JSON inside as each request type with its peer-claim check (and, for a proposal, the
/// entry-size check and `apply`), and as each reply type the sender decodes.
pub fn raft_message(b: &[u8]) -> Result<(), String> {
    let _ = pb::HeartbeatRequest::decode(b);
    let _ = pb::EvictedNotice::decode(b);
    let _ = pb::ReadIndexReply::decode(b);
    let _ = pb::Empty::decode(b);
    let m = pb::RaftMessage::decode(b).map_err(s)?;
    peer_json(&m.data)
}

/// The JSON of a peer message, sent by node 1's certificate: `Ok` when it decodes as a peer
/// request and passes the checks, else the refusal.
pub fn peer_json(d: &[u8]) -> Result<(), String> {
    use blixard_node::security;
    let _ = serde_json::from_slice::<Result<AppendEntriesResponse<C>, RaftError<C>>>(d);
    let _ = serde_json::from_slice::<Result<VoteResponse<C>, RaftError<C>>>(d);
    let _ = serde_json::from_slice::<Result<SnapshotResponse<C>, RaftError<C>>>(d);
    let _ = serde_json::from_slice::<blixard_core::Outcome>(d);
    // The harness does not know which RPC the bytes were sent to: a message that decodes as
    // several request types must pass the checks of each.
    let mut verdict = Err("not a peer request".to_string());
    let mut decoded = false;
    let mut judge = |r: Result<(), String>| {
        if !decoded || verdict.is_ok() {
            verdict = r;
        }
        decoded = true;
    };
    if let Ok(req) = serde_json::from_slice::<AppendEntriesRequest<C>>(d) {
        judge(security::check_append(1, &req).map_err(|e| e.message().to_string()));
        let _ = blixard_transport::network::fit_append(req, 512);
    }
    if let Ok(req) = serde_json::from_slice::<VoteRequest<C>>(d) {
        judge(security::check_vote_request(1, &req).map_err(|e| e.message().to_string()));
    }
    if let Ok(req) = serde_json::from_slice::<Request>(d) {
        judge(
            security::check_proposal(1, &req)
                .map_err(|e| e.message().to_string())
                .and_then(|()| blixard_transport::network::check_entry_size(&req)),
        );
        // A proposal forwarded to the leader is applied by every node: whatever decodes must
        // be applied or refused, keeping the state's invariants.
        let mut st = base_state().clone();
        let before = st.digest();
        let out = st.apply(100, &req);
        if let Err(e) = st.check_invariants() {
            panic!("applying a decoded request broke an invariant: {e}\nrequest: {req:?}");
        }
        if out.is_err() {
            assert_eq!(before, st.digest(), "a refused request changed the state");
        }
    }
    verdict
}

/// A snapshot stream as the follower receives it: length-delimited `SnapshotChunk`s,
/// reassembled under the real limits with the leader check on the header, then the data
/// decoded as the state.
pub fn snapshot_stream(b: &[u8]) -> Result<(), String> {
    let mut buf = b;
    let mut chunks = Vec::new();
    while !buf.is_empty() {
        chunks.push(pb::SnapshotChunk::decode_length_delimited(&mut buf).map_err(s)?);
    }
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, tonic_status::Status>));
    let got = futures::executor::block_on(blixard_transport::chunks::receive(
        stream,
        blixard_api::MAX_SNAPSHOT_BYTES,
        blixard_api::SNAPSHOT_CHUNK,
        |h| {
            blixard_node::security::check_snapshot(1, &h.vote, &h.meta)
                .map_err(|e| tonic_status::Status(e.message().to_string()))
        },
    ))
    .map_err(|e| e.0)?
    .map_err(s)?;
    snapshot_data(&got.1)
}

mod tonic_status {
    /// A refusal of the header check, as a plain message.
    #[derive(Debug)]
    pub struct Status(pub String);
}

/// A snapshot's data, as `install_snapshot` decodes it; then what is done with a state.
pub fn snapshot_data(b: &[u8]) -> Result<(), String> {
    let st = blixard_raft::sm_store::decode_snapshot_data(b).map_err(s)?;
    let _ = st.digest();
    st.check_invariants()?;
    rows_roundtrip(&st)
}

fn rows_roundtrip(st: &ClusterState) -> Result<(), String> {
    let rows = st.all_rows();
    let back = ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    assert_eq!(
        back.digest(),
        st.digest(),
        "the rows of a valid state do not rebuild it"
    );
    Ok(())
}

/// Frames rows as `state_rows` reads them: key length (1 byte), key, value length (4 bytes,
/// little endian), value.
pub fn frame_rows(rows: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in rows {
        out.push(k.len().min(255) as u8);
        out.extend_from_slice(&k.as_bytes()[..k.len().min(255)]);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// The state machine's stored rows, as a node loads them at start.
pub fn state_rows(b: &[u8]) -> Result<(), String> {
    let mut rows = Vec::new();
    let mut buf = b;
    while let Some((&klen, rest)) = buf.split_first() {
        let klen = klen as usize;
        if rest.len() < klen + 4 {
            return Err("truncated row".into());
        }
        let key = String::from_utf8_lossy(&rest[..klen]).into_owned();
        let vlen = u32::from_le_bytes([rest[klen], rest[klen + 1], rest[klen + 2], rest[klen + 3]])
            as usize;
        let rest = &rest[klen + 4..];
        if rest.len() < vlen {
            return Err("truncated row value".into());
        }
        rows.push((key, rest[..vlen].to_vec()));
        buf = &rest[vlen..];
    }
    let st = ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    let _ = st.digest();
    st.check_invariants()?;
    rows_roundtrip(&st)
}

/// A log entry as the log store reads it (bincode).
pub fn log_entry(b: &[u8]) -> Result<(), String> {
    let e = blixard_raft::log_store::decode_entry(b).map_err(s)?;
    let again = blixard_raft::log_store::encode_entry(&e).map_err(s)?;
    let back = blixard_raft::log_store::decode_entry(&again).map_err(s)?;
    assert_eq!(
        format!("{back:?}"),
        format!("{e:?}"),
        "a decoded entry does not survive re-encoding"
    );
    Ok(())
}
