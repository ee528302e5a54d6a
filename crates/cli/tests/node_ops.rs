//! Operator-facing node behaviour on real daemons: a node stopping gracefully says so, `node
//! list` shows labels and last heartbeats, a lost quorum is said at once, the daemon reads a
//! config file, and a drain that times out says why each VM stays.

mod common;

use std::process::Command;

use common::{json, run_cli, try_json, wait_for, Cluster, BIN, DEADLINE};
use serde_json::Value;

fn node_entry(addr: &str, id: u64) -> Option<Value> {
    try_json(addr, &["node", "list"])?
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
}

fn node_state(addr: &str, id: u64) -> Option<String> {
    Some(node_entry(addr, id)?["state"].as_str()?.to_string())
}

#[test]
fn a_node_stopping_gracefully_is_shutting_down_then_up_again() {
    let mut c = Cluster::start(3, &[]);
    c.stop(3);
    // Recorded before it stopped: shown at once as shutting down (not up, then down).
    let seen = wait_for("node 3 shutting down", DEADLINE, || {
        let s = node_state(&c.addr(1), 3)?;
        (s != "up").then_some(s)
    });
    assert_eq!(seen, "shutting-down");

    // Nothing new goes there: a VM pinned to it waits, saying why.
    let vm = json(
        &c.addr(1),
        &["vm", "create", "pin3", "--memory", "64", "--node", "3"],
    );
    assert_eq!(vm["node_id"], Value::Null, "{vm}");
    let status = json(&c.addr(2), &["vm", "status", "pin3"]);
    assert!(
        status.to_string().contains("shutting-down"),
        "the pending reason names the state: {status}"
    );

    // Every node emits the event.
    let evs = json(&c.addr(2), &["events"]);
    assert!(
        evs.as_array()
            .expect("events")
            .iter()
            .any(|e| e["type"] == "node_state" && e["node"] == 3 && e["to"] == "shutting-down"),
        "{evs}"
    );

    // Back: its heartbeats make it up again, and the VM that waited is placed there.
    c.restart(3);
    wait_for("node 3 up again", DEADLINE, || {
        (node_state(&c.addr(1), 3)? == "up").then_some(())
    });
    c.wait_vm(1, "pin3", "placed on node 3", DEADLINE, |v| {
        v["node_id"] == 3
    });
}

#[test]
fn node_list_shows_labels_and_the_leaders_last_heartbeat() {
    let c = Cluster::start(3, &["--label", "zone=z1"]);
    let leader = c.leader();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // From a follower: the leader's failure detector's view, named as such.
    let nodes = wait_for("heartbeats of every node", DEADLINE, || {
        let v = try_json(&c.addr(follower), &["node", "list"])?;
        let all = v.as_array()?.clone();
        all.iter()
            .all(|n| n["last_heartbeat_ms_ago"].is_u64())
            .then_some(all)
    });
    for n in &nodes {
        assert_eq!(n["labels"]["zone"], "z1", "{n}");
        assert_eq!(n["heartbeat_observer"], leader, "{n}");
        // Heartbeats come every second (the default): never minutes old on a live node.
        assert!(n["last_heartbeat_ms_ago"].as_u64() < Some(60_000), "{n}");
    }
    let out = run_cli(&c.addr(follower), &["node", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("HEARTBEAT") && text.contains("zone=z1") && text.contains(" ago"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "last heartbeat as received by the leader, node {leader}"
        )),
        "{text}"
    );
    // A stale read on a follower has no such knowledge, and says nothing rather than guess.
    let stale = json(&c.addr(follower), &["node", "list", "--stale"]);
    assert!(
        stale
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["last_heartbeat_ms_ago"].is_null()),
        "{stale}"
    );
}

#[test]
fn a_lost_quorum_is_said_once_and_quickly() {
    let mut c = Cluster::start(3, &[]);
    let survivor = c.leader();
    for id in (1..=3).filter(|id| *id != survivor) {
        c.kill9(id);
    }
    let addr = c.addr(survivor);
    // Well within the CLI's own timeout (15 s), with one line: no openraft internals.
    let out = run_cli(&addr, &["vm", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no quorum: 1 of 3 voters reachable"),
        "stderr: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "stderr: {err}");
    let out = run_cli(&addr, &["cluster", "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no quorum: 1 of 3 voters reachable"),
        "stderr: {err}"
    );
    // Its local view names no leader it has not heard from recently (itself included).
    let st = json(&addr, &["cluster", "status", "--stale"]);
    assert_eq!(st["leader_id"], Value::Null, "{st}");
}

#[test]
fn the_daemon_reads_a_config_file_and_its_flags_win() {
    let mut c = Cluster::new(&[]);
    let file = c.tmp.path().join("node.toml");
    std::fs::write(
        &file,
        "# flags without their dashes\n\
         driver = \"process\"\n\
         vcpus = 3\n\
         memory-mb = 2048\n\
         no-host-network = true\n\
         [labels]\n\
         zone = \"a\"\n\
         rack = \"r1\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    c.add_node(
        1,
        None,
        &["--config", f, "--vcpus", "5", "--label", "zone=b"],
    );
    c.wait_workers(1);
    let n = node_entry(&c.addr(1), 1).expect("node 1");
    assert_eq!(n["capacity"]["vcpus"], 5, "the flag wins: {n}");
    assert_eq!(n["capacity"]["memory_mb"], 2048, "from the file: {n}");
    assert_eq!(n["labels"]["zone"], "b", "{n}");
    assert_eq!(n["labels"]["rack"], "r1", "{n}");

    // Bad files: refused with the reason, nothing started.
    let dir = c.tmp.path().join("bad");
    let run = |text: &str| {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .args([
                "node",
                "--config",
                f,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&dir)
            .output()
            .expect("run blixard node");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run("id = 9\ninit = true\nvcpu = 4\n");
    assert!(err.contains("unknown field `vcpu`"), "{err}");
    assert!(err.contains("node.toml"), "names the file: {err}");
    // Checked like the flags are (NodeConfig::validate).
    let err = run("id = 9\ninit = true\ndriver = \"process\"\n[labels]\n\"Bad Key\" = \"v\"\n");
    assert!(err.contains("label"), "{err}");
    assert!(!dir.join("node.json").exists(), "nothing was started");
}

#[test]
fn a_drain_that_times_out_says_why_each_vm_stays() {
    let mut c = Cluster::new(&[]);
    c.add_node(1, None, &["--vcpus", "1"]);
    let seed = c.addr(1);
    c.add_node(2, Some(&seed), &["--vcpus", "8", "--label", "zone=b"]);
    c.wait_workers(2);
    let a = c.addr(1);
    json(
        &a,
        &["vm", "create", "pinned", "--memory", "64", "--node", "2"],
    );
    json(
        &a,
        &[
            "vm",
            "create",
            "zoned",
            "--memory",
            "64",
            "--constraint",
            "zone=b",
        ],
    );
    json(
        &a,
        &["vm", "create", "wide", "--memory", "64", "--vcpus", "2"],
    );
    for vm in ["pinned", "zoned", "wide"] {
        let v = json(&a, &["vm", "status", vm]);
        assert_eq!(v["node_id"], 2, "only node 2 takes it: {v}");
    }
    let out = run_cli(&a, &["node", "drain", "2", "--timeout", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("pinned (pinned to node 2"), "{err}");
    assert!(
        err.contains("zoned (pinned by its constraints: no node other than 2 has labels zone=b"),
        "{err}"
    );
    assert!(
        err.contains("wide (no node has 2 vCPUs free"),
        "names the missing resource: {err}"
    );
}
