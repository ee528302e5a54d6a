//! Never twice, on the paths hostile testing found: a leader frozen past lease + grace,
//! preemption of running VMs, and a node re-registering with less capacity. Each is checked
//! from the workloads' own start/stop records (`assert_never_ran_twice`), with real daemons and
//! the process driver.

mod common;

use std::time::Duration;

use common::{json, try_json, wait_for, Cluster, DEADLINE, FAST_LIVENESS};
use serde_json::Value;

fn flags(vcpus: &'static str) -> Vec<&'static str> {
    let mut f = FAST_LIVENESS.to_vec();
    f.extend_from_slice(&["--vcpus", vcpus]);
    f
}

fn vm(c: &Cluster, name: &str) -> Value {
    json(&c.addr(c.live()[0]), &["vm", "status", name])
}

fn wait_running_on(c: &Cluster, name: &str, node: Option<u64>) -> Value {
    let via = c.live()[0];
    c.wait_vm(via, name, "running", DEADLINE, |v| {
        v["state"] == "running" && node.is_none_or(|n| v["node_id"] == n)
    })
}

#[test]
fn preempting_running_vms_stops_them_before_anything_starts_in_their_place() {
    let c = Cluster::start(2, &flags("3"));
    let a = c.addr(1);
    // Binpack puts the three on one node.
    for i in 0..3 {
        json(
            &a,
            &[
                "vm",
                "create",
                &format!("low-{i}"),
                "--vcpus",
                "1",
                "--memory",
                "32",
                "--priority",
                "10",
            ],
        );
    }
    for i in 0..3 {
        wait_running_on(&c, &format!("low-{i}"), None);
    }
    let full = vm(&c, "low-0")["node_id"].as_u64().unwrap();
    assert!((0..3).all(|i| vm(&c, &format!("low-{i}"))["node_id"] == full));
    let other = if full == 1 { 2 } else { 1 };

    let vip = json(
        &a,
        &[
            "vm",
            "create",
            "vip",
            "--vcpus",
            "3",
            "--memory",
            "32",
            "--priority",
            "90",
            "--preempt",
            "--node",
            &full.to_string(),
        ],
    );
    // It holds the room at once, and starts only once its victims stopped there.
    assert_eq!(vip["node_id"], full, "{vip}");
    wait_running_on(&c, "vip", Some(full));
    for i in 0..3 {
        let v = wait_running_on(&c, &format!("low-{i}"), Some(other));
        assert!(
            v["reason"].is_null() || v["reason"].as_str().is_some(),
            "{v}"
        );
    }
    let runs = c.assert_never_ran_twice();
    assert!(
        runs >= 7,
        "three victims ran twice each, vip once: {runs} runs recorded"
    );
}

#[test]
fn re_registering_with_less_capacity_stops_vms_before_moving_them() {
    let mut c = Cluster::new(FAST_LIVENESS);
    c.add_node(1, None, &["--vcpus", "4"]);
    let seed = c.addr(1);
    c.add_node(2, Some(&seed), &["--vcpus", "4"]);
    c.wait_members(2);
    c.wait_workers(2);
    let a = c.addr(1);
    json(
        &a,
        &["vm", "create", "victim", "--vcpus", "2", "--memory", "32"],
    );
    let v = wait_running_on(&c, "victim", None);
    let on = v["node_id"].as_u64().unwrap();
    // Its node comes back with room for less than it needs: the VM stops there, then moves.
    c.stop(on);
    c.restart_with(on, &["--vcpus", "1"]);
    let moved = c.wait_vm(1, "victim", "victim moved", DEADLINE, |v| {
        v["state"] == "running" && v["node_id"].as_u64().is_some_and(|n| n != on)
    });
    assert!(moved["epoch"].as_u64() > v["epoch"].as_u64());
    let runs = c.assert_never_ran_twice();
    assert!(runs >= 2, "{runs}");
}

/// Freezes the leader (SIGSTOP) for longer than lease + grace, wakes it, and checks that no
/// VM ran twice: the woken leader's verdicts belong to its old term and are void, and its own
/// VMs were fenced by their supervisors before the new leader placed them elsewhere.
fn frozen_leader(nodes: u64) {
    let c = Cluster::start(nodes, &flags("16"));
    json(&c.addr(1), &["cluster", "settings", "--strategy", "spread"]);
    for i in 0..(nodes * 2) {
        json(
            &c.addr(1),
            &["vm", "create", &format!("f{i}"), "--memory", "32"],
        );
    }
    wait_for("all VMs running", DEADLINE, || {
        let l = try_json(&c.addr(1), &["vm", "list"])?;
        l.as_array()?
            .iter()
            .all(|v| v["state"] == "running")
            .then_some(())
    });
    let leader = c.leader();
    let others: Vec<u64> = (1..=nodes).filter(|n| *n != leader).collect();
    let before: Vec<(String, Option<u64>, Option<u64>)> = json(&c.addr(others[0]), &["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["node_id"].as_u64(),
                v["epoch"].as_u64(),
            )
        })
        .collect();

    c.signal(leader, "-STOP");
    // Lease 2 s + grace 1 s: frozen well past both, long enough for a new leader to move the
    // frozen node's VMs.
    let new_leader = wait_for("a new leader", DEADLINE, || {
        let s = try_json(&c.addr(others[0]), &["cluster", "status"])?;
        s["leader_id"].as_u64().filter(|l| *l != leader)
    });
    wait_for("the frozen node declared down", DEADLINE, || {
        let l = try_json(&c.addr(new_leader), &["node", "list"])?;
        l.as_array()?
            .iter()
            .any(|n| n["id"] == leader && n["state"] == "down")
            .then_some(())
    });
    c.signal(leader, "-CONT");
    // Give the woken node time to act on what it believes.
    wait_for("the woken node to follow", DEADLINE, || {
        let s = try_json(&c.addr(leader), &["cluster", "status"])?;
        (s["leader_id"].as_u64()? != leader).then_some(())
    });
    wait_for("every VM running again", DEADLINE, || {
        let l = try_json(&c.addr(new_leader), &["vm", "list"])?;
        l.as_array()?
            .iter()
            .all(|v| v["state"] == "running")
            .then_some(())
    });
    // The woken node applied everything the cluster committed meanwhile: whatever verdict it
    // proposed in its old term was committed or refused by now.
    c.wait_converged();
    // VMs on healthy nodes never moved: nobody declared their nodes down.
    let after = json(&c.addr(new_leader), &["vm", "list"]);
    for (name, node, epoch) in before.iter().filter(|b| b.1 != Some(leader)) {
        let now = after
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name.as_str())
            .unwrap();
        assert_eq!(
            (now["node_id"].as_u64(), now["epoch"].as_u64()),
            (*node, *epoch),
            "{name} moved off a healthy node"
        );
    }
    let nodes_now = json(&c.addr(new_leader), &["node", "list"]);
    for n in nodes_now.as_array().unwrap() {
        if n["id"] != leader {
            assert_eq!(
                n["state"], "up",
                "healthy node declared {}: {n}",
                n["state"]
            );
        }
    }
    c.assert_never_ran_twice();
}

#[test]
fn a_leader_frozen_past_lease_and_grace_declares_no_one_down_on_waking_3_nodes() {
    frozen_leader(3);
}

#[test]
fn a_leader_frozen_past_lease_and_grace_declares_no_one_down_on_waking_5_nodes() {
    frozen_leader(5);
}

#[test]
fn a_failed_vm_with_restart_never_starts_again_on_request() {
    let c = Cluster::start(1, &flags("4"));
    let a = c.addr(1);
    // The process driver's workload reads its "kernel command line": crash with status 3.
    let created = json(
        &a,
        &[
            "vm",
            "create",
            "once",
            "--memory",
            "32",
            "--restart",
            "never",
            "--cmdline",
            "blixard.run-ms=200 blixard.exit=3",
        ],
    );
    let e0 = created["epoch"].as_u64().unwrap();
    c.wait_vm(1, "once", "failed", DEADLINE, |v| v["state"] == "failed");
    json(&a, &["vm", "start", "once"]);
    let v = c.wait_vm(1, "once", "started again", DEADLINE, |v| {
        v["epoch"].as_u64().is_some_and(|e| e > e0) && v["state"] == "failed"
    });
    assert_eq!(v["node_id"], 1);
    c.assert_never_ran_twice();
}

#[test]
fn restarts_are_counted_once_each() {
    let c = Cluster::start(1, &flags("4"));
    let a = c.addr(1);
    json(
        &a,
        &[
            "vm",
            "create",
            "flappy",
            "--memory",
            "32",
            "--restart",
            "always",
            "--cmdline",
            "blixard.run-ms=300",
        ],
    );
    let v = c.wait_vm(1, "flappy", "two restarts", DEADLINE, |v| {
        v["restarts"].as_u64().is_some_and(|r| r >= 2)
    });
    assert!(v["restarts"].as_u64().unwrap() >= 2);
    wait_for("status reads", Duration::from_secs(5), || {
        try_json(&a, &["vm", "status", "flappy"]).map(|_| ())
    });
}

#[test]
fn a_used_node_id_is_refused_and_the_refused_joiner_leaves_no_identity() {
    let mut c = Cluster::start(3, FAST_LIVENESS);
    let via = c.addr(1);
    let out = common::run_cli(&via, &["cluster", "remove", "3", "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.wait_exit(3, DEADLINE), "the removed node stops");
    // A wiped node 3 (new data dir) tries to come back under its old id.
    let dir = c.tmp.path().join("n3-wiped");
    let out = std::process::Command::new(common::BIN)
        .args([
            "node",
            "--id",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--driver",
            "process",
            "--join",
            &via,
            "--data-dir",
        ])
        .arg(&dir)
        .args(["--token", &common::join_token(&via)])
        .env("BLIXARD_LOG", "warn")
        .output()
        .expect("run the joiner");
    assert!(!out.status.success(), "a refused joiner exits non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node id 3 was used before"),
        "the refusal names the id: {err}"
    );
    assert!(!dir.join("node.json").exists(), "no identity left behind");
    assert!(!dir.join("raft").exists(), "no Raft state left behind");
    // Started again without flags, it has nothing to resume.
    let out = std::process::Command::new(common::BIN)
        .args([
            "node",
            "--id",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--driver",
            "process",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .expect("run the node");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A new id joins fine.
    c.add_node(4, Some(&via), &[]);
    c.wait_workers(3);
}

#[test]
fn cluster_status_fails_without_a_leader_unless_stale() {
    let mut c = Cluster::start(3, FAST_LIVENESS);
    let survivor = c.leader();
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        c.kill9(id);
    }
    let out = common::run_cli(&c.addr(survivor), &["cluster", "status"]);
    assert!(
        !out.status.success(),
        "a node without quorum must not print members as current"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // Either the quick "no quorum: N of M voters reachable" or the wait for a leader.
    assert!(err.contains("no quorum") || err.contains("leader"), "{err}");
    assert!(
        try_json(&c.addr(survivor), &["cluster", "status", "--stale"]).is_some(),
        "--stale reads locally"
    );
}
