//! Inputs each target must refuse, each named for the attack or corruption it stands for.

use blixard_api::pb;
use blixard_core::{Command, Request, Resources};
use prost::Message;
use serde_json::json as j;

use crate::{base_state, frame_rows};

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
