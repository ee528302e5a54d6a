//! The HTTP API's own guarantees, on real daemons: HTTPS only (trusting the cluster CA), the
//! OpenAPI document lists every `/v1/` route the router serves and parses as OpenAPI 3, the
//! `--force` guards hold over HTTP (409 and nothing changes), and the routes the CLI has beyond
//! VMs and tasks (networks, drain, settings, membership, logs) answer like the CLI.

mod common;
mod https_client;

use common::{json, try_json, wait_for, Cluster, DEADLINE};
use serde_json::Value;

struct Api {
    agent: ureq::Agent,
    token: String,
    base: String,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        https_client::call(&self.agent, method, &url, Some(&self.token), body)
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (code, text) = self.call(method, path, body);
        assert_eq!(code, want, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }
}

/// The answer of the router's fallback: a route it does not serve.
fn unrouted(code: u16, body: &str) -> bool {
    (code == 404 && body.contains("no such route")) || code == 405
}

#[test]
fn https_api_documents_every_route_and_enforces_the_force_guards() {
    let c = Cluster::start(3, &["--http", "127.0.0.1:0"]);
    let a1 = c.addr(1);
    let token = wait_for("a bearer token", DEADLINE, || {
        try_json(
            &a1,
            &["auth", "token", "--name", "http-api", "--role", "admin"],
        )?["token"]
            .as_str()
            .map(String::from)
    });
    let base = wait_for("the HTTP address file", DEADLINE, || {
        https_client::base(&c.node(1).dir)
    });
    let api = Api {
        agent: https_client::agent(&c.node(1).dir),
        token,
        base: base.clone(),
    };

    // HTTPS only: cleartext gets no HTTP answer (no token can leak that way), and a client that
    // does not trust the cluster CA refuses the server.
    let plain = base.replacen("https://", "http://", 1);
    match ureq::get(&format!("{plain}/healthz")).call() {
        Err(ureq::Error::Transport(_)) => {}
        other => panic!("cleartext HTTP must not be served: {other:?}"),
    }
    match ureq::get(&format!("{base}/healthz")).call() {
        Err(ureq::Error::Transport(t)) => {
            assert!(format!("{t}").to_lowercase().contains("certificate"), "{t}")
        }
        other => panic!("an untrusted CA must be refused: {other:?}"),
    }
    assert_eq!(api.call("GET", "/healthz", None).0, 200);
    wait_for("readyz", DEADLINE, || {
        (api.call("GET", "/readyz", None).0 == 200).then_some(())
    });

    // The OpenAPI document parses as OpenAPI 3 and names the contract's routes.
    let (code, text) = api.call("GET", "/v1/openapi.json", None);
    assert_eq!(code, 200, "{text}");
    let spec = oas3::from_json(&text).expect("/v1/openapi.json parses as OpenAPI 3.1");
    assert!(spec.openapi.starts_with("3."), "{}", spec.openapi);
    let paths = spec.paths.clone().expect("paths");
    for p in [
        "/v1/cluster",
        "/v1/nodes",
        "/v1/vms",
        "/v1/vms/{name}",
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/networks",
        "/v1/events",
        "/v1/openapi.json",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    // Every documented operation is routed (the router and the document come from one list
    // of handlers): none falls through to the router's "no such route".
    let mut operations = 0;
    for (path, item) in &paths {
        let concrete = path.replace("{name}", "nope-x").replace("{id}", "999");
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
        ] {
            if op.is_none() {
                continue;
            }
            operations += 1;
            // The event stream would follow forever.
            let url = if path == "/v1/events" {
                format!("{concrete}?follow=false")
            } else {
                concrete.clone()
            };
            let (code, body) = api.call(method, &url, None);
            assert!(!unrouted(code, &body), "{method} {url}: {code} {body}");
            assert!(code < 500 || code == 503, "{method} {url}: {code} {body}");
        }
    }
    assert!(operations >= 20, "only {operations} operations documented");
    // ... and the check can fail: an undocumented route is not served.
    let (code, body) = api.call("GET", "/v1/not-a-route", None);
    assert!(unrouted(code, &body), "{code} {body}");

    // --force guards over HTTP: refused with 409 and the reason; nothing changes.
    api.json(
        "POST",
        "/v1/vms",
        Some(serde_json::json!({"name": "g1", "memory_mb": 64})),
        201,
    );
    c.wait_vm(1, "g1", "running", DEADLINE, |v| v["state"] == "running");
    let err = api.json("DELETE", "/v1/vms/g1", None, 409);
    assert!(
        err["error"].as_str().unwrap().contains("force"),
        "the refusal says how to override: {err}"
    );
    assert_eq!(api.json("GET", "/v1/vms/g1", None, 200)["state"], "running");
    let logs = api.json("GET", "/v1/vms/g1/logs", None, 200);
    assert_eq!(logs["name"], "g1");
    assert!(logs["console"].is_string(), "{logs}");
    api.json("DELETE", "/v1/vms/g1?force=true", None, 200);
    api.json("GET", "/v1/vms/g1", None, 404);

    let status = api.json("GET", "/v1/cluster", None, 200);
    let leader = status["leader_id"].as_u64().expect("a leader");
    let err = api.json(
        "DELETE",
        &format!("/v1/cluster/members/{leader}"),
        None,
        409,
    );
    assert!(
        err["error"].as_str().unwrap().contains("is the leader"),
        "{err}"
    );
    let other = (1..=3).find(|id| *id != leader).unwrap();
    let err = api.json("DELETE", &format!("/v1/cluster/members/{other}"), None, 409);
    assert!(err["error"].as_str().unwrap().contains("voter"), "{err}");
    let err = api.json("POST", "/v1/cluster/leave", None, 409);
    assert!(err["error"].as_str().unwrap().contains("voter"), "{err}");
    assert_eq!(
        api.json("GET", "/v1/cluster", None, 200)["members"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "no refused removal changed the membership"
    );

    // Networks, drain, settings: the CLI's answers.
    let n = api.json(
        "POST",
        "/v1/networks",
        Some(serde_json::json!({"name": "n1", "cidr": "10.77.0.0/24"})),
        201,
    );
    assert_eq!(n["name"], "n1");
    assert_eq!(
        api.json("GET", "/v1/networks", None, 200),
        json(&a1, &["network", "list"])
    );
    api.json("DELETE", "/v1/networks/n1", None, 200);
    let bad = api.json(
        "POST",
        "/v1/networks",
        Some(serde_json::json!({"name": "n2", "cidr": "not-a-cidr"})),
        400,
    );
    assert!(bad["error"].is_string());

    assert_eq!(
        api.json("POST", &format!("/v1/nodes/{other}/drain"), None, 200)["state"],
        "draining"
    );
    assert_eq!(
        api.json("POST", &format!("/v1/nodes/{other}/undrain"), None, 200)["state"],
        "up"
    );
    assert_eq!(
        api.json("GET", "/v1/cluster/settings", None, 200),
        json(&a1, &["cluster", "settings"])
    );
    let s = api.json(
        "POST",
        "/v1/cluster/settings",
        Some(serde_json::json!({"strategy": "spread"})),
        200,
    );
    assert_eq!(s, json(&a1, &["cluster", "settings"]));
    assert_eq!(s["strategy"], "spread", "{s}");
}
