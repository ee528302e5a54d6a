//! The corpus seeds: valid encodings of each target's input.

use blixard_api::pb;
use blixard_core::Request;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use prost::Message;
use serde_json::json as j;

use crate::{base_commands, base_state, frame_rows, C, CLIENT};

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
        pb::RemoveMemberRequest {
            node_id: 4,
            force: false,
        }
        .encode_to_vec(),
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
            force: false,
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
