//! Attacks on a secure cluster, each refused while the node keeps serving: forged peer
//! messages without a certificate, with a client's, another cluster's or another member's;
//! terms no cluster reaches; forged eviction notices and heartbeats; a removed member's
//! certificate; join tokens that are expired, used, revoked, forged or from another cluster.

mod common;

use std::path::Path;
use std::process::Command;

use blixard_api::{pb, CLUSTER_HEADER};
use blixard_core::{Command as Cmd, Request, VmSpec};
use blixard_pki::TlsMaterial;
use blixard_raft::TypeConfig;
use common::{api_client, json, node_material, peer_client, wait_for, Cluster, DEADLINE};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde_json::json as j;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn cluster_id(c: &Cluster) -> String {
    json(&c.addr(1), &["cluster", "status"])["cluster_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn msg<T: serde::Serialize>(v: &T, cluster: &str) -> tonic::Request<pb::RaftMessage> {
    let mut r = tonic::Request::new(pb::RaftMessage {
        data: serde_json::to_vec(v).unwrap(),
    });
    r.metadata_mut()
        .insert(CLUSTER_HEADER, cluster.parse().unwrap());
    r
}

fn with_header<T>(m: T, cluster: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert(CLUSTER_HEADER, cluster.parse().unwrap());
    r
}

/// An append claiming `leader` at `term`, after the node's real last log id, carrying one
/// forged `CreateVm`.
fn forged_append(
    leader: u64,
    term: u64,
    last: (u64, u64, u64),
) -> AppendEntriesRequest<TypeConfig> {
    let req = Request::new(
        Cmd::CreateVm {
            spec: VmSpec::new("forged"),
        },
        0,
    );
    let lid = |t: u64, n: u64| j!({"term": t, "node_id": n});
    serde_json::from_value(j!({
        "vote": {"leader_id": lid(term, leader), "committed": true},
        "prev_log_id": {"leader_id": lid(last.0, last.1), "index": last.2},
        "entries": [{"log_id": {"leader_id": lid(term, leader), "index": last.2 + 1}, "payload": {"Normal": req}}],
        "leader_commit": {"leader_id": lid(term, leader), "index": last.2 + 1},
    }))
    .expect("a well-formed append")
}

fn vote_request(candidate: u64, term: u64) -> VoteRequest<TypeConfig> {
    serde_json::from_value(j!({
        "vote": {"leader_id": {"term": term, "node_id": candidate}, "committed": false},
        "last_log_id": {"leader_id": {"term": term, "node_id": candidate}, "index": u64::MAX - 1},
        "transfer": false,
    }))
    .or_else(|_| {
        serde_json::from_value(j!({
            "vote": {"leader_id": {"term": term, "node_id": candidate}, "committed": false},
            "last_log_id": {"leader_id": {"term": term, "node_id": candidate}, "index": u64::MAX - 1},
        }))
    })
    .expect("a well-formed vote request")
}

/// (term, leader, index) of node `id`'s last applied log id, from its status.
fn last_log(c: &Cluster, id: u64) -> (u64, u64, u64) {
    let s = json(&c.addr(id), &["cluster", "status"]);
    (
        s["term"].as_u64().unwrap(),
        s["leader_id"].as_u64().unwrap(),
        s["last_log_index"].as_u64().unwrap(),
    )
}

/// A peer client with no certificate at all (it still checks the server against the CA).
fn anonymous_peer(
    addr: &str,
    ca: &TlsMaterial,
) -> blixard_api::RaftPeerClient<tonic::transport::Channel> {
    let fp = blixard_pki::Ca(blixard_pki::CertKey {
        cert_pem: ca.ca_pem.clone(),
        key_pem: String::new(),
    })
    .fingerprint()
    .unwrap();
    blixard_api::RaftPeerClient::new(
        blixard_pki::channel(addr, blixard_pki::pinned_client_config(&fp).unwrap()).unwrap(),
    )
}

/// A node certificate for `id` from a CA of another cluster.
fn foreign_node(id: u64) -> TlsMaterial {
    let ca = blixard_pki::Ca::generate("other").unwrap();
    TlsMaterial {
        ca_pem: ca.0.cert_pem.clone(),
        own: ca.issue_node(id).unwrap(),
    }
}

fn denied(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::PermissionDenied
}

#[test]
fn forged_appends_are_refused_whoever_sends_them() {
    let c = Cluster::start(2, &[]);
    let leader = c.leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let cid = cluster_id(&c);
    let target = c.addr(follower);
    let before = c.wait_converged();
    let forged = forged_append(leader, last_log(&c, follower).0 + 1, last_log(&c, follower));
    let admin = c.admin();
    rt().block_on(async {
        // No certificate.
        let e = anonymous_peer(&target, &admin)
            .append_entries(msg(&forged, &cid))
            .await
            .unwrap_err();
        assert!(denied(&e), "no certificate: {e:?}");
        // A client (admin) certificate is not a node's.
        let e = peer_client(&target, &admin)
            .append_entries(msg(&forged, &cid))
            .await
            .unwrap_err();
        assert!(denied(&e), "client certificate: {e:?}");
        // Another cluster's node certificate: the TLS handshake fails.
        let e = peer_client(&target, &foreign_node(leader))
            .append_entries(msg(&forged, &cid))
            .await
            .unwrap_err();
        assert!(
            !denied(&e) && e.code() != tonic::Code::Ok,
            "foreign certificate: {e:?}"
        );
        // The follower's own (valid, member) certificate claiming to be the leader.
        let own = node_material(&c.node(follower).dir);
        let e = peer_client(&target, &own)
            .append_entries(msg(&forged, &cid))
            .await
            .unwrap_err();
        assert!(
            denied(&e) && e.message().contains("claiming"),
            "member claiming another id: {e:?}"
        );
    });
    // Nothing reached the log; both nodes still serve.
    assert_eq!(c.wait_converged(), before);
    assert!(common::try_json(&c.addr(follower), &["vm", "status", "forged"]).is_none());
    json(
        &c.addr(follower),
        &["vm", "create", "after-attack", "--no-start"],
    );
    assert_eq!(
        json(&c.addr(leader), &["vm", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_vote_at_the_largest_term_is_refused_and_the_node_unharmed() {
    let mut c = Cluster::start(2, &[]);
    let cid = cluster_id(&c);
    let n2 = node_material(&c.node(2).dir);
    rt().block_on(async {
        for term in [u64::MAX, u64::MAX - 1, (1 << 62) + 1] {
            let e = peer_client(&c.addr(1), &n2)
                .vote(msg(&vote_request(2, term), &cid))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains("beyond"), "{}", e.message());
        }
        // An append from node 2 claiming an impossible term is refused the same way.
        let e = peer_client(&c.addr(1), &n2)
            .append_entries(msg(&forged_append(2, u64::MAX, (1, 1, 1)), &cid))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
    let term = json(&c.addr(1), &["cluster", "status"])["term"]
        .as_u64()
        .unwrap();
    assert!(term < 1000, "term {term}");
    // The node is unharmed, also after a restart (nothing was persisted).
    c.kill9(1);
    c.restart(1);
    c.wait_members(2);
    json(&c.addr(1), &["vm", "create", "fine", "--no-start"]);
}

#[test]
fn peer_proposals_need_a_node_certificate_that_matches_what_they_claim() {
    let c = Cluster::start(2, &[]);
    let leader = c.leader();
    let other = if leader == 1 { 2 } else { 1 };
    let cid = cluster_id(&c);
    let phantom = Request::new(
        Cmd::RegisterWorker {
            id: 666,
            addr: "10.0.0.66:7000".into(),
            capacity: blixard_core::Resources {
                vcpus: 100_000,
                memory_mb: 1 << 30,
                disk_gb: 1 << 20,
            },
            kvm: true,
            labels: Default::default(),
        },
        0,
    );
    let workers = json(&c.addr(1), &["node", "list"]);
    rt().block_on(async {
        let e = peer_client(&c.addr(leader), &c.admin())
            .propose(msg(&phantom, &cid))
            .await
            .unwrap_err();
        assert!(denied(&e), "client certificate: {e:?}");
        let member = node_material(&c.node(other).dir);
        let e = peer_client(&c.addr(leader), &member)
            .propose(msg(&phantom, &cid))
            .await
            .unwrap_err();
        assert!(
            denied(&e) && e.message().contains("claiming"),
            "member claiming node 666: {e:?}"
        );
    });
    assert_eq!(json(&c.addr(1), &["node", "list"]), workers);
}

#[test]
fn forged_evictions_and_spoofed_heartbeats_are_refused() {
    let c = Cluster::start(2, &[]);
    let leader = c.leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let cid = cluster_id(&c);
    let f = node_material(&c.node(follower).dir);
    rt().block_on(async {
        // The follower tells the leader it was evicted: only the leader may say so.
        let e = peer_client(&c.addr(leader), &f)
            .evicted(with_header(pb::EvictedNotice { node_id: leader }, &cid))
            .await
            .unwrap_err();
        assert!(denied(&e), "{e:?}");
        let e = peer_client(&c.addr(leader), &c.admin())
            .evicted(with_header(pb::EvictedNotice { node_id: leader }, &cid))
            .await
            .unwrap_err();
        assert!(denied(&e), "{e:?}");
        // Heartbeats for someone else (a dead node kept "up", or a phantom).
        for id in [leader, 666] {
            let e = peer_client(&c.addr(leader), &f)
                .heartbeat(with_header(pb::HeartbeatRequest { node_id: id }, &cid))
                .await
                .unwrap_err();
            assert!(denied(&e) && e.message().contains("claiming"), "{e:?}");
        }
        // Its own heartbeat is fine.
        peer_client(&c.addr(leader), &f)
            .heartbeat(with_header(
                pb::HeartbeatRequest { node_id: follower },
                &cid,
            ))
            .await
            .unwrap();
    });
    // The leader did not leave: it still serves and still leads.
    assert_eq!(c.wait_members(2), leader);
    json(&c.addr(leader), &["vm", "create", "alive", "--no-start"]);
}

#[test]
fn a_removed_members_certificate_is_refused_also_after_restarts() {
    let mut c = Cluster::start(3, &[]);
    let n3 = node_material(&c.node(3).dir);
    json(&c.addr(1), &["cluster", "remove", "3", "--force"]);
    assert!(c.wait_exit(3, DEADLINE), "the removed node stops");
    let cid = cluster_id(&c);
    let check = |c: &Cluster| {
        wait_for(
            "node 3's certificate to be refused by every member",
            DEADLINE,
            || {
                rt().block_on(async {
                    for id in [1, 2] {
                        let e = peer_client(&c.addr(id), &n3)
                            .read_index(with_header(pb::Empty {}, &cid))
                            .await
                            .err()?;
                        if !(denied(&e) && e.message().contains("revoked")) {
                            return None;
                        }
                        let e = api_client(&c.addr(id), &n3)
                            .cluster_status(pb::ReadOptions { stale: true })
                            .await
                            .err()?;
                        if !(denied(&e) && e.message().contains("revoked")) {
                            return None;
                        }
                    }
                    Some(())
                })
            },
        )
    };
    check(&c);
    for id in [1, 2] {
        c.kill9(id);
    }
    for id in [1, 2] {
        c.restart(id);
    }
    c.wait_members(2);
    check(&c);
}

/// Starts a joiner with `token` through `seed`; it must be refused: exit non-zero with one
/// clear line containing `expect`, and leave no identity in its data directory.
fn assert_join_refused(dir: &Path, seed: &str, token: &str, expect: &str) {
    let out = Command::new(common::BIN)
        .args([
            "node",
            "--id",
            "9",
            "--listen",
            "127.0.0.1:0",
            "--driver",
            "process",
            "--data-dir",
        ])
        .arg(dir)
        .args(["--join", seed, "--token", token])
        .env("BLIXARD_LOG", "error")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the joiner must exit non-zero: {err}"
    );
    assert!(err.contains(expect), "expected '{expect}' in: {err}");
    assert!(
        !dir.join("node.json").exists() && !dir.join("tls").exists(),
        "a refused joiner leaves no identity"
    );
}

#[test]
fn join_tokens_expired_used_revoked_forged_or_foreign_are_refused() {
    let mut c = Cluster::start(1, &[]);
    let a = c.addr(1);
    let tmp = tempfile::tempdir().unwrap();
    // Used: the first join consumes it.
    let used = common::join_token(&a);
    c.add_node_with_token(2, Some(&a), Some(used.clone()), &[]);
    c.wait_members(2);
    assert_join_refused(&tmp.path().join("reused"), &a, &used, "already used");
    // Revoked.
    let t = json(&a, &["cluster", "token", "create"]);
    let id = t["id"].as_str().unwrap();
    json(&a, &["cluster", "token", "revoke", id]);
    assert_join_refused(
        &tmp.path().join("revoked"),
        &a,
        t["token"].as_str().unwrap(),
        "revoked",
    );
    // Expired.
    let t = json(&a, &["cluster", "token", "create", "--ttl", "1"]);
    let id = t["id"].as_str().unwrap().to_string();
    wait_for("the token to expire", DEADLINE, || {
        let list = json(&a, &["cluster", "token", "list"]);
        list.as_array()?
            .iter()
            .any(|x| x["id"] == id.as_str() && x["status"] == "expired")
            .then_some(())
    });
    assert_join_refused(
        &tmp.path().join("expired"),
        &a,
        t["token"].as_str().unwrap(),
        "expired",
    );
    // Forged: the right cluster (fingerprint, address), a made-up secret.
    let real = blixard_pki::JoinTokenString::parse(&common::join_token(&a)).unwrap();
    let forged = blixard_pki::JoinTokenString {
        secret: "0".repeat(64),
        ..real.clone()
    }
    .encode();
    assert_join_refused(
        &tmp.path().join("forged"),
        &a,
        &forged,
        "not a token of this cluster",
    );
    // Garbage.
    assert_join_refused(
        &tmp.path().join("garbage"),
        &a,
        "hello",
        "not a blixard join token",
    );
    // Foreign: another cluster's valid token, presented to this cluster.
    let other = Cluster::start(1, &[]);
    let foreign = common::join_token(&other.addr(1));
    assert_join_refused(
        &tmp.path().join("foreign"),
        &a,
        &foreign,
        "not a member of the cluster this join token is for",
    );
    // A token lists what became of it; the cluster still serves.
    let list = json(&a, &["cluster", "token", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|x| x["status"] == "used" && x["used_by"] == 2),
        "{list}"
    );
    json(&a, &["vm", "create", "still-fine", "--no-start"]);
}

#[test]
fn credentials_are_written_private_and_missing_ones_refused() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start(1, &[]);
    let dir = &c.node(1).dir;
    for f in ["admin.credentials", "tls/ca.key", "tls/node.key"] {
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // The client API refuses a caller without a certificate.
    let admin = c.admin();
    let fp = blixard_pki::Ca(blixard_pki::CertKey {
        cert_pem: admin.ca_pem.clone(),
        key_pem: String::new(),
    })
    .fingerprint()
    .unwrap();
    let e = rt()
        .block_on(async {
            let ch =
                blixard_pki::channel(&c.addr(1), blixard_pki::pinned_client_config(&fp).unwrap())
                    .unwrap();
            blixard_api::BlixardClient::new(ch)
                .cluster_status(pb::ReadOptions { stale: true })
                .await
        })
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // Another cluster's credential cannot even complete the handshake.
    let tmp = tempfile::tempdir().unwrap();
    let foreign = common::make_credentials(tmp.path(), "admin", "admin");
    let out = common::run_cli_with(&c.addr(1), Some(&foreign), &["cluster", "status"]);
    assert!(!out.status.success());
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_huge_message_without_a_member_certificate_is_refused_before_it_is_read() {
    let c = Cluster::start(1, &[]);
    let addr = c.addr(1);
    let cid = cluster_id(&c);
    let pid = c.node(1).child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let admin = c.admin();
    rt().block_on(async {
        // 100 MiB to the peer service, as a client and without any certificate: refused on
        // the request's headers, before the body is decoded.
        let big = pb::RaftMessage {
            data: vec![b'x'; 100 << 20],
        };
        let mut r = tonic::Request::new(big.clone());
        r.metadata_mut()
            .insert(CLUSTER_HEADER, cid.parse().unwrap());
        let e = peer_client(&addr, &admin)
            .max_encoding_message_size(usize::MAX)
            .append_entries(r)
            .await
            .unwrap_err();
        assert!(denied(&e), "{e:?}");
        let mut r = tonic::Request::new(big);
        r.metadata_mut()
            .insert(CLUSTER_HEADER, cid.parse().unwrap());
        let e = anonymous_peer(&addr, &admin)
            .max_encoding_message_size(usize::MAX)
            .append_entries(r)
            .await
            .unwrap_err();
        assert!(denied(&e), "{e:?}");
        // An enrollment attempt (the one anonymous service) is capped at 64 KiB.
        let fp = blixard_pki::Ca(blixard_pki::CertKey {
            cert_pem: admin.ca_pem.clone(),
            key_pem: String::new(),
        })
        .fingerprint()
        .unwrap();
        let ch =
            blixard_pki::channel(&addr, blixard_pki::pinned_client_config(&fp).unwrap()).unwrap();
        let req = pb::EnrollRequest {
            token_id: "x".repeat(1 << 20),
            secret: String::new(),
            node_id: 5,
            addr: "a:1".into(),
        };
        let e = blixard_api::EnrollClient::new(ch)
            .max_encoding_message_size(usize::MAX)
            .enroll(req)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    });
    let after = rss_kib(pid);
    assert!(
        after < before + 64 * 1024,
        "the node's memory grew from {before} KiB to {after} KiB"
    );
    json(&addr, &["vm", "create", "still-fine", "--no-start"]);
}
