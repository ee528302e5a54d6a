//! Authenticated clients with roles (`auth issue|token|list|revoke`), checked on the node that
//! receives each request, over gRPC (the CLI) and HTTP (bearer tokens).

mod common;
mod https_client;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{json, run_cli_with, wait_for, Cluster, DEADLINE};
use serde_json::Value;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Issues a credential through the admin and returns its file.
fn issue(c: &Cluster, dir: &Path, name: &str, role: &str, ttl: Option<&str>) -> PathBuf {
    let out = dir.join(format!("{name}.credentials"));
    let mut args = vec![
        "auth",
        "issue",
        "--name",
        name,
        "--role",
        role,
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(t) = ttl {
        args.extend(["--ttl", t]);
    }
    let v = json(&c.addr(1), &args);
    assert_eq!(v["role"], role);
    assert!(out.exists());
    out
}

/// Runs a command as the holder of `creds` (against node `id`); `--json`.
fn as_(c: &Cluster, id: u64, creds: &Path, args: &[&str]) -> Output {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    run_cli_with(&c.addr(id), Some(creds), &a)
}

fn ok_json(o: &Output, what: &str) -> Value {
    assert!(o.status.success(), "{what} failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("one JSON document")
}

fn refused(o: &Output, what: &str, needle: &str) {
    assert!(!o.status.success(), "{what} was allowed");
    let e = stderr(o);
    assert!(e.contains(needle), "{what}: expected '{needle}' in: {e}");
}

#[test]
fn roles_decide_what_each_credential_may_do_and_writes_record_who_asked() {
    let c = Cluster::start(3, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let viewer = issue(&c, tmp.path(), "vera", "viewer", None);
    let operator = issue(&c, tmp.path(), "otto", "operator", None);
    let admin2 = issue(&c, tmp.path(), "ada", "admin", None);
    let f = c.leader();
    // Ask a follower: the check is made where the request arrives, and the forwarded write
    // carries the caller to the leader.
    let follower = c.live().into_iter().find(|id| *id != f).unwrap();

    // Viewer: reads yes, writes no (naming the role needed).
    ok_json(&as_(&c, follower, &viewer, &["vm", "list"]), "viewer list");
    ok_json(
        &as_(&c, follower, &viewer, &["cluster", "status"]),
        "viewer status",
    );
    refused(
        &as_(
            &c,
            follower,
            &viewer,
            &["vm", "create", "v1", "--memory", "64"],
        ),
        "viewer create",
        "needs role operator",
    );
    refused(
        &as_(&c, follower, &viewer, &["task", "submit", "--", "true"]),
        "viewer task",
        "needs role operator",
    );

    // Operator: VMs, tasks and networks yes; membership, settings, tokens, credentials no.
    let vm = ok_json(
        &as_(
            &c,
            follower,
            &operator,
            &["vm", "create", "o1", "--memory", "64", "--no-start"],
        ),
        "operator create",
    );
    assert_eq!(vm["created_by"], "otto");
    let st = ok_json(&as_(&c, 1, &viewer, &["vm", "status", "o1"]), "status");
    assert_eq!(st["created_by"], "otto");
    let human = run_cli_with(&c.addr(1), Some(&viewer), &["vm", "status", "o1"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("created by: otto"));
    let t = ok_json(
        &as_(&c, follower, &operator, &["task", "submit", "--", "true"]),
        "operator task",
    );
    let tid = t["id"].as_str().unwrap().to_string();
    let ts = ok_json(
        &as_(&c, 1, &viewer, &["task", "status", &tid]),
        "task status",
    );
    assert_eq!(ts["created_by"], "otto");
    ok_json(
        &as_(
            &c,
            follower,
            &operator,
            &["network", "create", "opnet", "--cidr", "10.77.0.0/16"],
        ),
        "operator network",
    );
    for (args, what) in [
        (vec!["cluster", "remove", "3", "--force"], "remove member"),
        (
            vec!["cluster", "settings", "--strategy", "spread"],
            "settings",
        ),
        (vec!["cluster", "token", "create"], "join token"),
        (vec!["node", "drain", "2"], "drain"),
        (
            vec!["auth", "token", "--name", "x", "--role", "viewer"],
            "bearer token",
        ),
        (vec!["auth", "list"], "auth list"),
        (vec!["auth", "revoke", "vera"], "revoke"),
    ] {
        refused(
            &as_(&c, follower, &operator, &args),
            what,
            "needs role admin",
        );
    }
    let out = tmp.path().join("x.credentials");
    refused(
        &as_(
            &c,
            follower,
            &operator,
            &[
                "auth",
                "issue",
                "--name",
                "x",
                "--role",
                "admin",
                "--out",
                out.to_str().unwrap(),
            ],
        ),
        "operator issue",
        "needs role admin",
    );
    assert!(!out.exists());

    // Another admin may do it all.
    ok_json(
        &as_(
            &c,
            follower,
            &admin2,
            &["cluster", "settings", "--strategy", "spread"],
        ),
        "admin settings",
    );
    ok_json(
        &as_(&c, follower, &admin2, &["cluster", "token", "create"]),
        "admin join token",
    );

    // The list names every credential with who issued it (the bootstrap admin included).
    let list = ok_json(&as_(&c, 1, &admin2, &["auth", "list"]), "auth list");
    let rows = list.as_array().unwrap();
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).cloned();
    assert_eq!(row("otto").unwrap()["role"], "operator");
    assert_eq!(row("otto").unwrap()["created_by"], "admin");
    let boot = wait_for("the bootstrap admin record", DEADLINE, || {
        let l = ok_json(&as_(&c, 1, &admin2, &["auth", "list"]), "auth list");
        l.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "admin" && r["kind"] == "credential")
            .cloned()
    });
    assert_eq!(boot["created_by"], "bootstrap");
    assert_eq!(boot["status"], "active");

    // The event log carries the caller.
    let evs = ok_json(&as_(&c, 1, &viewer, &["events"]), "events");
    assert!(
        evs.as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "vm_created" && e["vm"] == "o1" && e["caller"] == "otto"),
        "{evs}"
    );
}

#[test]
fn unauthenticated_revoked_and_expired_credentials_are_refused() {
    let c = Cluster::start(2, &[]);
    let tmp = tempfile::tempdir().unwrap();
    // No credential at all: the node refuses (the CLI does not even try without one).
    let no = run_cli_with(&c.addr(1), None, &["vm", "list"]);
    refused(&no, "no credentials", "credentials");
    // A client certificate of another CA fails the handshake.
    let foreign = common::make_credentials(tmp.path(), "mallory", "admin");
    assert!(!run_cli_with(&c.addr(1), Some(&foreign), &["vm", "list"])
        .status
        .success());
    // Straight to the API without a client certificate: Unauthenticated.
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let m = c.admin();
        let fp = blixard_pki::Ca(blixard_pki::CertKey {
            cert_pem: m.ca_pem.clone(),
            key_pem: String::new(),
        })
        .fingerprint()
        .unwrap();
        let code = rt.block_on(async {
            let ch =
                blixard_pki::channel(&c.addr(1), blixard_pki::pinned_client_config(&fp).unwrap())
                    .unwrap();
            blixard_api::BlixardClient::new(ch)
                .list_vms(blixard_api::pb::ReadOptions { stale: true })
                .await
                .unwrap_err()
                .code()
        });
        assert_eq!(code, tonic::Code::Unauthenticated);
    }

    // Revoked: refused on every node, after the revocation committed.
    let ci = issue(&c, tmp.path(), "ci", "operator", None);
    ok_json(&as_(&c, 2, &ci, &["vm", "list"]), "before revocation");
    json(&c.addr(1), &["auth", "revoke", "ci"]);
    for id in [1, 2] {
        let o = wait_for("the revocation to reach every node", DEADLINE, || {
            let o = as_(&c, id, &ci, &["vm", "list"]);
            (!o.status.success()).then_some(o)
        });
        refused(&o, "revoked", "revoked");
    }
    let list = json(&c.addr(1), &["auth", "list"]);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "ci" && r["status"] == "revoked"));
    // Revoking an unknown name is an error.
    assert!(!common::run_cli(&c.addr(1), &["auth", "revoke", "nobody"])
        .status
        .success());

    // Expired: a one-second credential stops working.
    let brief = issue(&c, tmp.path(), "brief", "viewer", Some("1"));
    let o = wait_for("the credential to expire", DEADLINE, || {
        let o = as_(&c, 1, &brief, &["vm", "list"]);
        (!o.status.success()).then_some(o)
    });
    refused(&o, "expired", "expired");
}

/// The HTTPS client trusting the cluster CA (one cluster per test process).
static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();

/// `(status, body)` of an HTTPS request, with an optional bearer token.
fn http(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, String) {
    https_client::call(AGENT.get().expect("agent"), method, url, token, body)
}

fn token(c: &Cluster, name: &str, role: &str, ttl: Option<&str>) -> String {
    let mut args = vec!["auth", "token", "--name", name, "--role", role];
    if let Some(t) = ttl {
        args.extend(["--ttl", t]);
    }
    json(&c.addr(1), &args)["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn http_bearer_tokens_carry_roles() {
    let c = Cluster::start(2, &["--http", "127.0.0.1:0"]);
    AGENT.get_or_init(|| https_client::agent(&c.node(1).dir));
    let base = wait_for("the HTTP address file", DEADLINE, || {
        https_client::base(&c.node(2).dir)
    });
    let viewer = token(&c, "dash", "viewer", None);
    let op = token(&c, "deploy", "operator", None);
    let short = token(&c, "short", "viewer", Some("1"));

    // Health needs nothing; the API needs a valid token.
    assert_eq!(http("GET", &format!("{base}/healthz"), None, None).0, 200);
    let (code, body) = http("GET", &format!("{base}/v1/vms"), None, None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let bogus = format!("bxt_0123456789abcdef_{}", "0".repeat(64));
    assert_eq!(
        http("GET", &format!("{base}/v1/vms"), Some(&bogus), None).0,
        401
    );
    assert_eq!(
        http("GET", &format!("{base}/v1/vms"), Some("garbage"), None).0,
        401
    );

    // Viewer: reads yes, writes 403 naming the role.
    assert_eq!(
        http("GET", &format!("{base}/v1/vms"), Some(&viewer), None).0,
        200
    );
    let body = serde_json::json!({"name": "h1", "memory_mb": 64, "start": false});
    let (code, text) = http(
        "POST",
        &format!("{base}/v1/vms"),
        Some(&viewer),
        Some(body.clone()),
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("needs role operator"), "{text}");
    assert_eq!(
        http("GET", &format!("{base}/metrics"), Some(&viewer), None).0,
        200
    );

    // Operator: the write goes through and records the token's name.
    let (code, text) = http("POST", &format!("{base}/v1/vms"), Some(&op), Some(body));
    assert_eq!(code, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["created_by"], "deploy");
    assert_eq!(
        json(&c.addr(1), &["vm", "status", "h1"])["created_by"],
        "deploy"
    );

    // Revoked and expired tokens: 401 on every node.
    json(&c.addr(1), &["auth", "revoke", "deploy"]);
    wait_for("the revocation", DEADLINE, || {
        (http("GET", &format!("{base}/v1/vms"), Some(&op), None).0 == 401).then_some(())
    });
    wait_for("the short token to expire", DEADLINE, || {
        (http("GET", &format!("{base}/v1/vms"), Some(&short), None).0 == 401).then_some(())
    });

    // `blixard dashboard` prints a URL with a working token.
    let url = json(&c.addr(2), &["dashboard"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    let t = url
        .split_once("#token=")
        .map(|(_, t)| t.to_string())
        .expect("the URL carries a token");
    assert_eq!(
        http("GET", &format!("{base}/v1/cluster"), Some(&t), None).0,
        200
    );
    // The event stream takes the token in its query (browsers' EventSource sends no headers).
    let (code, _) = http(
        "GET",
        &format!("{base}/v1/events?follow=false&token={t}"),
        None,
        None,
    );
    assert_eq!(code, 200);
}
