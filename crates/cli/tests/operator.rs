//! The operator's surface end to end: the event stream (gRPC via the CLI, and HTTP), the HTTP
//! JSON API, `/metrics` and the dashboard, on real daemons.

mod common;

use common::{json, run_cli, wait_for, Cluster, DEADLINE};
use serde_json::Value;

fn events(addr: &str, since: Option<u64>) -> Vec<Value> {
    let mut args = vec!["events".to_string()];
    if let Some(s) = since {
        args.push("--since".into());
        args.push(s.to_string());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    json(addr, &a)
        .as_array()
        .expect("an array of events")
        .clone()
}

fn has(evs: &[Value], ty: &str, f: impl Fn(&Value) -> bool) -> bool {
    evs.iter().any(|e| e["type"] == ty && f(e))
}

#[test]
fn every_node_emits_the_same_events_and_resume_gives_each_once() {
    let c = Cluster::start(3, &[]);
    let vm = json(&c.addr(2), &["vm", "create", "ev1", "--memory", "64"]);
    let node = vm["node_id"].as_u64().expect("placed");
    c.wait_vm(1, "ev1", "running", DEADLINE, |v| v["state"] == "running");
    json(&c.addr(1), &["vm", "stop", "ev1"]);
    c.wait_vm(1, "ev1", "stopped", DEADLINE, |v| v["state"] == "stopped");
    json(&c.addr(3), &["vm", "delete", "ev1"]);

    let evs = wait_for("the deletion event", DEADLINE, || {
        let e = events(&c.addr(1), None);
        has(&e, "vm_deleted", |e| e["vm"] == "ev1").then_some(e)
    });
    assert!(has(&evs, "membership", |_| true), "{evs:?}");
    assert!(has(&evs, "node_registered", |e| e["node"] == 3), "{evs:?}");
    assert!(has(&evs, "vm_created", |e| e["vm"] == "ev1"));
    assert!(has(&evs, "vm_placed", |e| e["vm"] == "ev1"
        && e["node"] == node
        && e["placement"].is_string()));
    assert!(has(&evs, "vm_state", |e| e["vm"] == "ev1"
        && e["to"] == "running"));
    assert!(has(&evs, "vm_desired", |e| e["vm"] == "ev1"
        && e["desired"] == "stopped"));
    assert!(has(&evs, "vm_state", |e| e["vm"] == "ev1"
        && e["to"] == "stopped"));
    // Indexes never go down.
    let idx: Vec<u64> = evs
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert!(idx.windows(2).all(|w| w[0] <= w[1]), "{idx:?}");
    let last = *idx.last().expect("events");

    // Every member, having applied the same log, reports the same events up to that index.
    for id in [2, 3] {
        let other = wait_for(
            &format!("node {id} to reach index {last}"),
            DEADLINE,
            || {
                let e = events(&c.addr(id), None);
                e.iter()
                    .any(|e| e["index"].as_u64() >= Some(last))
                    .then_some(e)
            },
        );
        let other: Vec<Value> = other
            .into_iter()
            .filter(|e| e["index"].as_u64() <= Some(last))
            .collect();
        assert_eq!(other, evs, "node {id} emits the same events");
    }

    // Resuming after any index gives exactly the events after it: none missing, none twice.
    for cut in [idx[0], idx[idx.len() / 2], last] {
        let tail: Vec<Value> = events(&c.addr(3), Some(cut))
            .into_iter()
            .filter(|e| e["index"].as_u64() <= Some(last))
            .collect();
        let expect: Vec<Value> = evs
            .iter()
            .filter(|e| e["index"].as_u64() > Some(cut))
            .cloned()
            .collect();
        assert_eq!(tail, expect, "resume after {cut}");
    }

    // The human form names the subject.
    let out = run_cli(&c.addr(1), &["events", "--since", &idx[0].to_string()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm ev1"));
}
