//! Decoders never panic: the fuzz targets of blixard, on the stable toolchain.
//!
//! Each target takes raw bytes and runs one decoding entry point the way the daemon or the CLI
//! runs it on bytes from the network or the disk, then what the code does next with a decoded
//! value (the peer-claim checks, `apply` for a proposed request, the JSON rendering of a
//! reply). A target returns `Err` for input it refuses; it must never panic. The tests in
//! `tests/decoders.rs` replay the corpus in `fuzz/corpus/<target>/` (valid encodings made by
//! [`seeds`], plus inputs that once mattered) and run a bounded number of random and mutated
//! inputs on every test run.

#![allow(
    clippy::cast_possible_truncation,
    reason = "byte-level encoders for fuzz inputs narrow on purpose (lengths capped, 6-bit groups)"
)]

use std::sync::OnceLock;

use blixard_api::pb;
use blixard_core::{ClusterState, Command, Request, Resources, TaskSpec, VmSpec};
use blixard_raft::TypeConfig;
use openraft::errors::RaftError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use prost::Message;
use serde_json::json as j;

type C = TypeConfig;

/// A fuzz target: `Err` is a clean refusal; a panic is a bug.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("raft_message", raft_message),
    ("snapshot_stream", snapshot_stream),
    ("snapshot_data", snapshot_data),
    ("state_rows", state_rows),
    ("log_entry", log_entry),
    ("client_pb", client_pb),
    ("join_token", join_token),
    ("credentials", credentials),
    ("identity_der", identity_der),
    ("lease", lease),
];

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A small applied state that decoded requests are applied to.
fn base_state() -> &'static ClusterState {
    static BASE: OnceLock<ClusterState> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut st = ClusterState::default();
        let mut index = 0;
        for c in base_commands() {
            index += 1;
            let _ = st.apply(index, &Request::new(c, index * 1000));
        }
        st
    })
}

fn base_commands() -> Vec<Command> {
    let mut vm = VmSpec::new("web-1");
    vm.labels.insert("tier".into(), "web".into());
    vec![
        Command::RegisterWorker {
            id: 1,
            addr: "127.0.0.1:7001".into(),
            capacity: Resources::new(8, 8192, 100),
            kvm: false,
            labels: Default::default(),
        },
        Command::RegisterWorker {
            id: 2,
            addr: "127.0.0.1:7002".into(),
            capacity: Resources::new(4, 4096, 50),
            kvm: true,
            labels: Default::default(),
        },
        Command::CreateNetwork {
            name: "default".into(),
            cidr: "10.89.0.0/16".into(),
        },
        Command::CreateVm { spec: vm },
        Command::SubmitTask {
            id: "t-1".into(),
            spec: TaskSpec::new(vec!["echo".into(), "hi".into()]),
        },
    ]
}

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

fn spec(m: Option<pb::VmSpec>) -> Result<(), String> {
    let spec = VmSpec::try_from(m.ok_or("missing spec")?)?;
    spec.validate().map_err(s)
}

fn task(m: Option<pb::TaskSpec>) -> Result<(), String> {
    blixard_core::TaskSpec::from(m.ok_or("missing spec")?)
        .validate()
        .map_err(s)
}

fn name(n: &str) -> Result<(), String> {
    blixard_core::spec::validate_name(n).map_err(s)
}

fn json_str(t: &str) -> Result<(), String> {
    serde_json::from_str::<serde_json::Value>(t)
        .map(|_| ())
        .map_err(s)
}

/// The client messages: each request as a node decodes and checks it, each reply as the CLI
/// decodes and renders it. The first byte picks the message type.
pub const CLIENT: &[(&str, Target)] = &[
    ("ReadOptions", |b| {
        pb::ReadOptions::decode(b).map(|_| ()).map_err(s)
    }),
    ("JoinRequest", |b| {
        pb::JoinRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("RemoveMemberRequest", |b| {
        pb::RemoveMemberRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("SetNodeStateRequest", |b| {
        let m = pb::SetNodeStateRequest::decode(b).map_err(s)?;
        blixard_api::parse_node_state(&m.state).map(|_| ())
    }),
    ("CreateVmRequest", |b| {
        spec(pb::CreateVmRequest::decode(b).map_err(s)?.spec)
    }),
    ("VmRef", |b| name(&pb::VmRef::decode(b).map_err(s)?.name)),
    ("SetVmDesiredRequest", |b| {
        let m = pb::SetVmDesiredRequest::decode(b).map_err(s)?;
        name(&m.name)?;
        blixard_api::parse_desired(&m.desired).map(|_| ())
    }),
    ("GetVmRequest", |b| {
        name(&pb::GetVmRequest::decode(b).map_err(s)?.name)
    }),
    ("SchedulerSettings", |b| {
        let m = pb::SchedulerSettings::decode(b).map_err(s)?;
        let _ = blixard_api::json::settings_json(&m);
        if m.strategy.is_empty() {
            return Ok(());
        }
        m.strategy
            .parse::<blixard_core::Strategy>()
            .map(|_| ())
            .map_err(s)
    }),
    ("VmLogsRequest", |b| {
        name(&pb::VmLogsRequest::decode(b).map_err(s)?.name)
    }),
    ("SubmitTaskRequest", |b| {
        task(pb::SubmitTaskRequest::decode(b).map_err(s)?.spec)
    }),
    ("GetTaskRequest", |b| {
        blixard_core::task::validate_task_id(&pb::GetTaskRequest::decode(b).map_err(s)?.id)
            .map_err(s)
    }),
    ("ListTasksRequest", |b| {
        let m = pb::ListTasksRequest::decode(b).map_err(s)?;
        if m.state.is_empty() {
            return Ok(());
        }
        blixard_core::TaskState::parse(&m.state)
            .map(|_| ())
            .ok_or_else(|| "unknown task state".to_string())
    }),
    ("TaskRef", |b| {
        blixard_core::task::validate_task_id(&pb::TaskRef::decode(b).map_err(s)?.id).map_err(s)
    }),
    ("EventsRequest", |b| {
        pb::EventsRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("PageRequest", |b| {
        pb::PageRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("CreateJoinTokenRequest", |b| {
        pb::CreateJoinTokenRequest::decode(b).map(|_| ()).map_err(s)
    }),
    ("JoinTokenRef", |b| {
        blixard_core::tokens::validate_token_id(&pb::JoinTokenRef::decode(b).map_err(s)?.id)
            .map_err(s)
    }),
    ("EnrollRequest", |b| {
        let m = pb::EnrollRequest::decode(b).map_err(s)?;
        blixard_core::tokens::validate_token_id(&m.token_id).map_err(s)
    }),
    ("CreateNetworkRequest", |b| {
        let m = pb::CreateNetworkRequest::decode(b).map_err(s)?;
        blixard_core::network::validate_network_name(&m.name).map_err(s)?;
        m.cidr.parse::<blixard_core::Cidr>().map(|_| ()).map_err(s)
    }),
    ("NetworkRef", |b| {
        blixard_core::network::validate_network_name(&pb::NetworkRef::decode(b).map_err(s)?.name)
            .map_err(s)
    }),
    ("ClusterStatusReply", |b| {
        let _ = blixard_api::json::status_json(&pb::ClusterStatusReply::decode(b).map_err(s)?);
        Ok(())
    }),
    ("NodeList", |b| {
        for n in &pb::NodeList::decode(b).map_err(s)?.nodes {
            let _ = blixard_api::json::node_json(n);
        }
        Ok(())
    }),
    ("VmList", |b| {
        for v in &pb::VmList::decode(b).map_err(s)?.vms {
            let _ = blixard_api::json::vm_json(v);
        }
        Ok(())
    }),
    ("TaskList", |b| {
        for t in &pb::TaskList::decode(b).map_err(s)?.tasks {
            let _ = blixard_api::json::task_json(t);
        }
        Ok(())
    }),
    ("PlacementExplanation", |b| {
        let _ = blixard_api::json::explain_json(&pb::PlacementExplanation::decode(b).map_err(s)?);
        Ok(())
    }),
    ("NetworkList", |b| {
        for n in &pb::NetworkList::decode(b).map_err(s)?.networks {
            let _ = blixard_api::json::network_json(n);
        }
        Ok(())
    }),
    ("JoinTokenList", |b| {
        pb::JoinTokenList::decode(b).map(|_| ()).map_err(s)
    }),
    ("EventMsg", |b| {
        json_str(&pb::EventMsg::decode(b).map_err(s)?.json)
    }),
    ("LogChunk", |b| {
        pb::LogChunk::decode(b).map(|_| ()).map_err(s)
    }),
    ("EnrollReply", |b| {
        let m = pb::EnrollReply::decode(b).map_err(s)?;
        let material = blixard_pki::TlsMaterial {
            ca_pem: m.ca_cert,
            own: blixard_pki::CertKey {
                cert_pem: m.node_cert,
                key_pem: m.node_key,
            },
        };
        material.identity().map_err(s)?;
        material.client_config().map(|_| ()).map_err(s)
    }),
];

/// A client message (see [`CLIENT`]).
pub fn client_pb(b: &[u8]) -> Result<(), String> {
    let (&sel, rest) = b.split_first().ok_or("empty input")?;
    (CLIENT[sel as usize % CLIENT.len()].1)(rest)
}

/// A join token string, as `node --join --token` and the enrollment read it.
pub fn join_token(b: &[u8]) -> Result<(), String> {
    blixard_pki::JoinTokenString::parse(&String::from_utf8_lossy(b)).map(|_| ())
}

/// A credentials file, as the CLI loads it (and the TLS configuration made from it).
pub fn credentials(b: &[u8]) -> Result<(), String> {
    let c = blixard_pki::Credentials::parse(b, "input").map_err(s)?;
    c.client_config().map(|_| ()).map_err(s)
}

/// A certificate's identity, as read from a verified peer or client certificate.
pub fn identity_der(b: &[u8]) -> Result<(), String> {
    blixard_pki::Identity::from_der(b)
        .map(|_| ())
        .ok_or_else(|| "no blixard identity".into())
}

/// A VM's lease file, as its supervisor reads it.
pub fn lease(b: &[u8]) -> Result<(), String> {
    blixard_vmm::supervisor::Lease::parse(&String::from_utf8_lossy(b)).map(|_| ())
}

/// Valid inputs of each target (the corpus seeds): `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |t: &'static str, n: &str, b: Vec<u8>| out.push((t, n.to_string(), b));
    let lid = |t: u64, n: u64| j!({"term": t, "node_id": n});
    let reqs: Vec<Request> = base_commands()
        .into_iter()
        .enumerate()
        .map(|(i, c)| Request::new(c, 1000 + i as u64))
        .collect();
    let entries: Vec<_> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            j!({"log_id": {"leader_id": lid(2, 1), "index": 10 + i as u64}, "payload": {"Normal": r}})
        })
        .chain([j!({"log_id": {"leader_id": lid(2, 1), "index": 20}, "payload": "Blank"})])
        .collect();
    let append: AppendEntriesRequest<C> = serde_json::from_value(j!({
        "vote": {"leader_id": lid(2, 1), "committed": true},
        "prev_log_id": {"leader_id": lid(1, 1), "index": 9},
        "entries": entries,
        "leader_commit": {"leader_id": lid(2, 1), "index": 12},
    }))
    .expect("a valid append");
    let vote: VoteRequest<C> = serde_json::from_value(j!({
        "vote": {"leader_id": lid(3, 1), "committed": false},
        "last_log_id": {"leader_id": lid(2, 1), "index": 20},
    }))
    .expect("a valid vote request");
    let msg = |v: Vec<u8>| pb::RaftMessage { data: v }.encode_to_vec();
    add(
        "raft_message",
        "ok-append",
        msg(serde_json::to_vec(&append).unwrap()),
    );
    add(
        "raft_message",
        "ok-vote",
        msg(serde_json::to_vec(&vote).unwrap()),
    );
    for (i, r) in reqs.iter().enumerate() {
        if r.command.acting_node().is_some_and(|n| n != 1) {
            continue;
        }
        add(
            "raft_message",
            &format!("ok-propose-{i}-{}", r.command.kind()),
            msg(serde_json::to_vec(r).unwrap()),
        );
    }

    // Snapshots: the state above, its rows, and as a stream of chunks.
    let st = base_state();
    let data = serde_json::to_vec(st).unwrap();
    add("snapshot_data", "ok-state", data.clone());
    add("state_rows", "ok-rows", frame_rows(&st.all_rows()));
    let header = blixard_transport::chunks::SnapshotHeader {
        vote: openraft::Vote::new_committed(2, 1),
        meta: serde_json::from_value(j!({
            "last_log_id": {"leader_id": lid(2, 1), "index": 20},
            "last_membership": {"log_id": {"leader_id": lid(1, 1), "index": 1},
                "membership": {"configs": [[1, 2]], "nodes": {"1": {"addr": "127.0.0.1:7001"}, "2": {"addr": "127.0.0.1:7002"}}}},
            "snapshot_id": "",
        }))
        .expect("valid snapshot metadata"),
        total: data.len() as u64,
    };
    let mut stream = Vec::new();
    for c in blixard_transport::chunks::split(header.encode().unwrap(), data, 512) {
        c.encode_length_delimited(&mut stream).unwrap();
    }
    add("snapshot_stream", "ok-stream", stream);

    // Log entries as stored.
    let entry: openraft::alias::EntryOf<C> =
        serde_json::from_value(append_entry_json(&reqs[3])).unwrap();
    add(
        "log_entry",
        "ok-entry",
        blixard_raft::log_store::encode_entry(&entry).unwrap(),
    );

    // Client messages, one valid instance each.
    let mut vm = pb::VmSpec {
        name: "web-2".into(),
        vcpus: 1,
        memory_mb: 256,
        ..Default::default()
    };
    vm.labels.insert("tier".into(), "web".into());
    let client: Vec<Vec<u8>> = vec![
        pb::ReadOptions { stale: true }.encode_to_vec(),
        pb::JoinRequest {
            node_id: 4,
            addr: "127.0.0.1:7004".into(),
        }
        .encode_to_vec(),
        pb::RemoveMemberRequest { node_id: 4 }.encode_to_vec(),
        pb::SetNodeStateRequest {
            node_id: 2,
            state: "draining".into(),
            request_id: "r1".into(),
        }
        .encode_to_vec(),
        pb::CreateVmRequest {
            spec: Some(vm),
            request_id: "r2".into(),
        }
        .encode_to_vec(),
        pb::VmRef {
            name: "web-1".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        pb::SetVmDesiredRequest {
            name: "web-1".into(),
            desired: "stopped".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        pb::GetVmRequest {
            name: "web-1".into(),
            stale: false,
        }
        .encode_to_vec(),
        pb::SchedulerSettings {
            strategy: "spread".into(),
            vcpu_overcommit_pct: 200,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::VmLogsRequest {
            name: "web-1".into(),
            follow: true,
            previous: false,
        }
        .encode_to_vec(),
        pb::SubmitTaskRequest {
            spec: Some(pb::TaskSpec {
                command: vec!["echo".into(), "hi".into()],
                cpus: 1,
                memory_mb: 64,
                timeout_secs: 10,
                ..Default::default()
            }),
            request_id: "r3".into(),
        }
        .encode_to_vec(),
        pb::GetTaskRequest {
            id: "t-1".into(),
            stale: true,
        }
        .encode_to_vec(),
        pb::ListTasksRequest {
            state: "running".into(),
            limit: 10,
            ..Default::default()
        }
        .encode_to_vec(),
        pb::TaskRef {
            id: "t-1".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        pb::EventsRequest {
            since: Some(3),
            follow: false,
        }
        .encode_to_vec(),
        pb::PageRequest {
            stale: false,
            limit: 5,
            after: "web-1".into(),
        }
        .encode_to_vec(),
        pb::CreateJoinTokenRequest { ttl_secs: 60 }.encode_to_vec(),
        pb::JoinTokenRef {
            id: "0123456789abcdef".into(),
        }
        .encode_to_vec(),
        pb::EnrollRequest {
            token_id: "0123456789abcdef".into(),
            secret: "00".repeat(32),
            node_id: 4,
            addr: "127.0.0.1:7004".into(),
        }
        .encode_to_vec(),
        pb::CreateNetworkRequest {
            name: "lab".into(),
            cidr: "10.90.0.0/24".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        pb::NetworkRef {
            name: "lab".into(),
            request_id: String::new(),
        }
        .encode_to_vec(),
        pb::ClusterStatusReply {
            node_id: 1,
            leader_id: Some(1),
            term: 2,
            members: vec![pb::Member {
                id: 1,
                addr: "127.0.0.1:7001".into(),
                role: "voter".into(),
            }],
            ..Default::default()
        }
        .encode_to_vec(),
        pb::NodeList {
            nodes: st.workers.values().map(pb::NodeInfo::from).collect(),
        }
        .encode_to_vec(),
        pb::VmList {
            vms: st.vms.values().map(pb::VmInfo::from).collect(),
            next: String::new(),
        }
        .encode_to_vec(),
        pb::TaskList {
            tasks: st.tasks.values().map(pb::TaskInfo::from).collect(),
            next: String::new(),
        }
        .encode_to_vec(),
        pb::PlacementExplanation {
            node: Some(1),
            strategy: "binpack".into(),
            summary: "fits".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        pb::NetworkList {
            networks: vec![pb::NetworkInfo {
                name: "default".into(),
                cidr: "10.89.0.0/16".into(),
                vms: 1,
                vni: 7,
                nodes: [(1, "10.89.0.1".to_string())].into_iter().collect(),
            }],
        }
        .encode_to_vec(),
        pb::JoinTokenList {
            tokens: vec![pb::JoinTokenInfo {
                id: "0123456789abcdef".into(),
                status: "active".into(),
                ..Default::default()
            }],
        }
        .encode_to_vec(),
        pb::EventMsg {
            index: 4,
            r#type: "vm".into(),
            json: r#"{"index":4,"type":"vm"}"#.into(),
        }
        .encode_to_vec(),
        pb::LogChunk {
            data: b"console".to_vec(),
        }
        .encode_to_vec(),
    ];
    for (i, body) in client.into_iter().enumerate() {
        let mut b = vec![i as u8];
        b.extend(body);
        add("client_pb", &format!("ok-{}", CLIENT[i].0), b);
    }

    // Key material: a real CA, node certificate and client credential.
    let ca = blixard_pki::Ca::generate("fuzz-cluster").unwrap();
    let node = ca.issue_node(3).unwrap();
    let client = ca.issue_client("ops", "admin").unwrap();
    let creds = blixard_pki::Credentials::new("ops", "admin", &ca.0.cert_pem, client);
    add(
        "credentials",
        "ok-admin",
        serde_json::to_vec_pretty(&creds).unwrap(),
    );
    add("identity_der", "ok-node", pem_der(&node.cert_pem));
    add(
        "identity_der",
        "ok-client",
        pem_der(&creds.material().own.cert_pem),
    );
    let enroll = pb::EnrollReply {
        cluster_id: "fuzz-cluster".into(),
        ca_cert: ca.0.cert_pem.clone(),
        ca_key: String::new(),
        node_cert: node.cert_pem.clone(),
        node_key: node.key_pem.clone(),
    };
    let mut b = vec![(CLIENT.len() - 1) as u8];
    b.extend(enroll.encode_to_vec());
    add("client_pb", "ok-EnrollReply", b);

    let token = blixard_pki::JoinTokenString::generate(
        &ca.fingerprint().unwrap(),
        vec!["127.0.0.1:7001".into(), "[::1]:7002".into()],
    );
    add("join_token", "ok-token", token.encode().into_bytes());
    add(
        "lease",
        "ok-lease",
        blixard_vmm::supervisor::Lease {
            boot_id: "8a7c1d9e-3b2f-4c5d-9e6f-1a2b3c4d5e6f".into(),
            deadline_ms: 123_456,
        }
        .render()
        .into_bytes(),
    );
    out
}

fn append_entry_json(r: &Request) -> serde_json::Value {
    j!({"log_id": {"leader_id": {"term": 2, "node_id": 1}, "index": 13}, "payload": {"Normal": r}})
}

/// The DER of a PEM certificate.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let Some(v) = A.iter().position(|a| *a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Inputs each target must refuse (the attacks and corruptions that matter), with a name that
/// says why: `(target, name, bytes)`.
pub fn refused() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |t: &'static str, n: &str, b: Vec<u8>| out.push((t, format!("bad-{n}"), b));
    let msg = |v: serde_json::Value| {
        pb::RaftMessage {
            data: serde_json::to_vec(&v).unwrap(),
        }
        .encode_to_vec()
    };
    let lid = |t: u64, n: u64| j!({"term": t, "node_id": n});
    add(
        "raft_message",
        "vote-at-the-largest-term",
        msg(j!({
            "vote": {"leader_id": lid(u64::MAX, 1), "committed": false},
            "last_log_id": {"leader_id": lid(1, 1), "index": 3},
        })),
    );
    add(
        "raft_message",
        "append-claiming-another-leader",
        msg(j!({
            "vote": {"leader_id": lid(2, 2), "committed": true},
            "prev_log_id": null,
            "entries": [],
            "leader_commit": null,
        })),
    );
    add(
        "raft_message",
        "append-at-an-index-near-the-top",
        msg(j!({
            "vote": {"leader_id": lid(2, 1), "committed": true},
            "prev_log_id": {"leader_id": lid(1, 1), "index": u64::MAX - 1},
            "entries": [],
            "leader_commit": null,
        })),
    );
    add(
        "raft_message",
        "registration-for-a-phantom-node",
        msg(serde_json::to_value(Request::new(
            Command::RegisterWorker {
                id: 666,
                addr: "10.0.0.66:7000".into(),
                capacity: Resources::new(100_000, 1 << 30, 1 << 20),
                kvm: true,
                labels: Default::default(),
            },
            0,
        ))
        .unwrap()),
    );
    add(
        "raft_message",
        "varint-length-past-the-end",
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, b'{'],
    );

    // Snapshot streams: the seed's header with one thing wrong.
    let header = |claimed: u64, total: u64| {
        blixard_transport::chunks::SnapshotHeader {
            vote: openraft::Vote::new_committed(2, claimed),
            meta: serde_json::from_value(j!({
                "last_log_id": {"leader_id": lid(2, claimed), "index": 20},
                "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
                "snapshot_id": "",
            }))
            .unwrap(),
            total,
        }
        .encode()
        .unwrap()
    };
    let frame = |chunks: Vec<pb::SnapshotChunk>| {
        let mut b = Vec::new();
        for c in chunks {
            c.encode_length_delimited(&mut b).unwrap();
        }
        b
    };
    let data = serde_json::to_vec(base_state()).unwrap();
    let n = data.len() as u64;
    let split = |h: Vec<u8>| -> Vec<pb::SnapshotChunk> {
        blixard_transport::chunks::split(h, data.clone(), 256).collect()
    };
    let mut swapped = split(header(1, n));
    swapped.swap(1, 2);
    add("snapshot_stream", "chunks-out-of-order", frame(swapped));
    let mut cut = split(header(1, n));
    cut.pop();
    add("snapshot_stream", "truncated", frame(cut));
    add(
        "snapshot_stream",
        "from-a-member-claiming-another-leader",
        frame(split(header(2, n))),
    );
    add(
        "snapshot_stream",
        "announced-over-the-cap",
        frame(vec![pb::SnapshotChunk {
            header: header(1, blixard_api::MAX_SNAPSHOT_BYTES as u64 + 1),
            offset: 0,
            data: vec![],
        }]),
    );
    add(
        "snapshot_stream",
        "more-data-than-announced",
        frame(split(header(1, n - 1))),
    );

    add("snapshot_data", "not-a-state", br#"{"vms": 7}"#.to_vec());
    add(
        "state_rows",
        "unknown-row",
        frame_rows(&[("nope/1".into(), b"{}".to_vec())]),
    );
    add(
        "state_rows",
        "worker-key-not-a-number",
        frame_rows(&[("worker/x".into(), b"{}".to_vec())]),
    );
    // A bincode entry whose first length claims 2^60 bytes.
    let mut huge = vec![0u8; 8];
    huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
    huge.extend_from_slice(&[1, 2, 3]);
    add("log_entry", "length-past-the-end", huge);
    add("client_pb", "empty", vec![]);
    let mut vm = vec![4u8];
    vm.extend(
        pb::CreateVmRequest {
            spec: Some(pb::VmSpec {
                name: "Bad_Name".into(),
                vcpus: 0,
                ..Default::default()
            }),
            request_id: String::new(),
        }
        .encode_to_vec(),
    );
    add("client_pb", "vm-spec-invalid", vm);
    add(
        "join_token",
        "not-base64",
        b"blx1.!!!not-base64!!!".to_vec(),
    );
    add(
        "join_token",
        "oversized",
        format!("blx1.{}", "A".repeat(blixard_pki::token::MAX_TOKEN_LEN)).into_bytes(),
    );
    add(
        "credentials",
        "certificate-not-pem",
        serde_json::to_vec(
            &j!({"name": "x", "role": "admin", "ca_cert": "x", "cert": "y", "key": "z"}),
        )
        .unwrap(),
    );
    add("identity_der", "truncated-der", vec![0x30, 0x82, 0x05]);
    add(
        "lease",
        "deadline-overflows",
        b"blixard-lease-v1 boot 99999999999999999999999\n".to_vec(),
    );
    add("lease", "other-format", b"lease 1 2\n".to_vec());
    out
}
