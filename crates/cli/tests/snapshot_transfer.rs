//! Peer transport limits: snapshots travel in bounded chunks (a lagging node catches up
//! through the chunked `InstallSnapshot` stream, counted in `/metrics` on both ends); a stream
//! from a member that is not the leader it claims, or from a client, is refused; a peer message
//! above the peer limit and a proposal above the entry limit are refused; the node keeps
//! serving throughout.

mod common;
mod https_client;

use blixard_api::{pb, CLUSTER_HEADER};
use blixard_transport::chunks::{split, SnapshotHeader};
use common::{json, node_material, peer_client, try_json, wait_for, Cluster, DEADLINE};

/// A viewer's bearer token for `/metrics` (one cluster per test process).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The value of an unlabelled sample in a node's `/metrics`.
fn metric(c: &Cluster, id: u64, name: &str) -> Option<f64> {
    let token = TOKEN.get_or_init(|| {
        wait_for("a bearer token", DEADLINE, || {
            try_json(
                &c.addr(1),
                &["auth", "token", "--name", "scraper", "--role", "viewer"],
            )?["token"]
                .as_str()
                .map(String::from)
        })
    });
    let base = https_client::base(&c.node(id).dir)?;
    let text = https_client::agent(&c.node(id).dir)
        .get(&format!("{base}/metrics"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(std::time::Duration::from_secs(10))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

#[test]
fn a_lagging_node_catches_up_through_the_chunked_snapshot() {
    // 1 KiB chunks, so that the snapshot of 60 VMs takes many of them.
    let mut c = Cluster::start(
        3,
        &[
            "--snapshot-every",
            "20",
            "--keep-logs",
            "5",
            "--snapshot-chunk-bytes",
            "1024",
            "--http",
            "127.0.0.1:0",
        ],
    );
    c.kill9(3);
    for i in 0..60 {
        json(
            &c.addr(1 + (i % 2)),
            &["vm", "create", &format!("lag-{i}"), "--memory", "16"],
        );
    }
    let leader = c.leader();
    wait_for("the leader to purge its log", DEADLINE, || {
        let s = c.status(leader)?;
        (s["purged_index"].as_u64()? > 20).then_some(())
    });
    // The node restarts with fresh counters: what it counts now is this catch-up.
    c.restart(3);
    c.wait_converged();
    let s = c.status(3).unwrap();
    assert!(
        s["snapshot_index"].as_u64().is_some(),
        "node 3 should have installed a snapshot: {s}"
    );
    let list = json(&c.addr(3), &["vm", "list", "--stale"]);
    assert_eq!(list.as_array().unwrap().len(), 60);

    let installed = wait_for("node 3's metrics", DEADLINE, || {
        metric(&c, 3, "blixard_raft_snapshots_installed_total")
    });
    assert!(installed >= 1.0, "node 3 installed {installed} snapshots");
    let received = metric(&c, 3, "blixard_raft_snapshot_chunks_received_total").unwrap();
    // 60 VM records are well over 10 KiB of JSON: more than ten 1 KiB chunks.
    assert!(
        received > 10.0,
        "node 3 received the snapshot in {received} chunks"
    );
    assert_eq!(
        metric(&c, 3, "blixard_raft_snapshots_refused_total"),
        Some(0.0)
    );
    // The node's log names the snapshot's size and chunks: 1 KiB each, none larger.
    let log = std::fs::read_to_string(c.node(3).dir.with_extension("log")).unwrap();
    let line = log
        .lines()
        .rfind(|l| l.contains("received snapshot"))
        .expect("node 3 logged the snapshot it received");
    // Without the terminal colours.
    let mut plain = String::new();
    let mut esc = false;
    for ch in line.chars() {
        match (esc, ch) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let line = plain.as_str();
    let field = |k: &str| -> u64 {
        let rest = &line[line.find(&format!("{k}=")).expect(line) + k.len() + 1..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (bytes, chunks) = (field("bytes"), field("chunks"));
    eprintln!("node 3 received a snapshot of {bytes} bytes in {chunks} chunks");
    assert_eq!(chunks, bytes.div_ceil(1024), "{line}");
    let sent = metric(&c, leader, "blixard_raft_snapshot_chunks_sent_total").unwrap();
    assert!(
        sent >= received,
        "the leader sent {sent} chunks, node 3 received {received}"
    );
}

#[test]
fn a_snapshot_stream_must_come_from_the_leader_it_names() {
    let c = Cluster::start(2, &["--http", "127.0.0.1:0"]);
    let leader = c.leader();
    let other = if leader == 1 { 2 } else { 1 };
    let cid = json(&c.addr(1), &["cluster", "status"])["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let vms = json(&c.addr(1), &["vm", "list"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A snapshot that would replace the follower's state with an empty one, at a high term.
    let forged = |claimed: u64| {
        let header = SnapshotHeader {
            vote: openraft::Vote::new_committed(1_000, claimed),
            meta: serde_json::from_value(serde_json::json!({
                "last_log_id": {"leader_id": {"term": 1_000, "node_id": claimed}, "index": 1_000_000},
                "last_membership": {"log_id": null, "membership": {"configs": [], "nodes": {}}},
                "snapshot_id": "",
            }))
            .unwrap(),
            total: 2,
        };
        let chunks: Vec<pb::SnapshotChunk> =
            split(header.encode().unwrap(), b"{}".to_vec(), 1).collect();
        let mut r = tonic::Request::new(futures::stream::iter(chunks));
        r.metadata_mut()
            .insert(CLUSTER_HEADER, cid.parse().unwrap());
        r
    };
    rt.block_on(async {
        // A member's certificate, claiming to be another member (the leader): refused on the
        // header, before any data is kept.
        let member = node_material(&c.node(other).dir);
        let e = peer_client(&c.addr(leader), &member)
            .install_snapshot(forged(leader))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("claiming"), "{e:?}");
        // A client certificate is no peer at all.
        let e = peer_client(&c.addr(other), &c.admin())
            .install_snapshot(forged(leader))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    });
    assert_eq!(
        metric(&c, leader, "blixard_raft_snapshots_refused_total"),
        Some(1.0)
    );
    // Nothing changed and the cluster still serves writes.
    assert_eq!(json(&c.addr(1), &["vm", "list"]), vms);
    json(
        &c.addr(other),
        &["vm", "create", "still-fine", "--no-start"],
    );
}

#[test]
fn peer_messages_and_entries_above_their_limits_are_refused() {
    let c = Cluster::start(2, &[]);
    let leader = c.leader();
    let other = if leader == 1 { 2 } else { 1 };
    let cid = json(&c.addr(1), &["cluster", "status"])["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let member = node_material(&c.node(other).dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tagged = |data: Vec<u8>| {
        let mut r = tonic::Request::new(pb::RaftMessage { data });
        r.metadata_mut()
            .insert(CLUSTER_HEADER, cid.parse().unwrap());
        r
    };
    rt.block_on(async {
        // Even from a member: a message above the peer limit is refused as it is read.
        let e = peer_client(&c.addr(leader), &member)
            .max_encoding_message_size(usize::MAX)
            .append_entries(tagged(vec![b' '; blixard_api::MAX_PEER_MESSAGE + 1]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
        // A proposal under the message limit whose entry would exceed the entry limit is
        // refused before it reaches the log.
        let mut spec = blixard_core::VmSpec::new("too-big");
        spec.cmdline = Some("x".repeat(blixard_api::MAX_ENTRY_BYTES));
        let req = blixard_core::Request::new(blixard_core::Command::CreateVm { spec }, 0);
        let e = peer_client(&c.addr(leader), &member)
            .max_encoding_message_size(usize::MAX)
            .propose(tagged(serde_json::to_vec(&req).unwrap()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("log entry"), "{e:?}");
    });
    let names: Vec<String> = json(&c.addr(1), &["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"too-big".to_string()), "{names:?}");
    json(
        &c.addr(other),
        &["vm", "create", "still-fine", "--no-start"],
    );
}
