//! Cluster core, end to end: real daemons, the real CLI, no sleeps as synchronisation.

mod common;

use std::time::Duration;

use common::{json, run_cli, try_json, wait_for, Cluster, DEADLINE};

#[test]
fn three_node_cluster_forms() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_members(3);
    for id in c.live() {
        let s = json(&c.addr(id), &["cluster", "status"]);
        assert_eq!(s["node_id"].as_u64(), Some(id));
        assert_eq!(s["leader_id"].as_u64(), Some(leader));
        assert!(s["term"].as_u64().unwrap() >= 1);
        let members = s["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        for m in members {
            assert_eq!(m["role"], "voter");
            let mid = m["id"].as_u64().unwrap();
            assert_eq!(m["addr"].as_str().unwrap(), c.addr(mid));
        }
    }
    c.wait_converged();
}

#[test]
fn node_failure_handling() {
    // Three voters and a learner (the target is three voters).
    let mut c = Cluster::start(3, &[]);
    let seed = c.addr(1);
    c.add_node(4, Some(&seed), &[]);
    wait_for("node 4 to be a learner everywhere", DEADLINE, || {
        c.live()
            .iter()
            .all(|id| {
                c.members_of(*id)
                    .is_some_and(|m| m.contains(&(4, "learner".into())))
            })
            .then_some(())
    });
    let leader = c.leader();
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let (victim, via) = (followers[0], followers[1]);

    // Remove a non-leader through another non-leader.
    let out = run_cli(
        &c.addr(via),
        &["cluster", "remove", &victim.to_string(), "--force"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.wait_exit(victim, DEADLINE),
        "a removed node stops by itself"
    );
    // The learner is promoted to keep three voters; every survivor agrees.
    c.wait_members(3);
    for id in c.live() {
        let m = c.members_of(id).unwrap();
        assert!(
            !m.iter().any(|(mid, _)| *mid == victim),
            "node {id} still reports removed node {victim}: {m:?}"
        );
    }

    // Remove the leader itself.
    let out = run_cli(
        &c.addr(via),
        &["cluster", "remove", &leader.to_string(), "--force"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.wait_exit(leader, DEADLINE),
        "the removed leader stops by itself"
    );
    let new_leader = c.wait_members(2);
    assert_ne!(new_leader, leader);
    let views: Vec<_> = c
        .live()
        .iter()
        .map(|id| c.members_of(*id).unwrap())
        .collect();
    assert!(
        views.windows(2).all(|w| w[0] == w[1]),
        "survivors disagree: {views:?}"
    );
    assert_eq!(views[0].len(), 2);
    // Workers follow membership.
    wait_for(
        "removed workers to disappear from node list",
        DEADLINE,
        || {
            let nodes = try_json(&c.addr(via), &["node", "list"])?;
            let ids: Vec<u64> = nodes
                .as_array()?
                .iter()
                .filter_map(|n| n["id"].as_u64())
                .collect();
            (!ids.contains(&leader) && !ids.contains(&victim)).then_some(())
        },
    );
    c.wait_converged();
}

#[test]
fn vm_read_after_write_consistency() {
    let c = Cluster::start(3, &[]);
    let ids = c.live();
    for i in 0..50usize {
        let writer = ids[i % 3];
        let name = format!("vm-{i}");
        let vm = json(&c.addr(writer), &["vm", "create", &name, "--memory", "64"]);
        assert_eq!(vm["name"], name.as_str());
        for reader in ids.iter().filter(|r| **r != writer) {
            let got = json(&c.addr(*reader), &["vm", "status", &name]);
            assert_eq!(
                got["name"],
                name.as_str(),
                "node {reader} read of {name} written via node {writer}"
            );
            assert_eq!(got["epoch"], vm["epoch"]);
        }
    }
    let list = json(&c.addr(ids[0]), &["vm", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 50);
    c.wait_converged();
}

#[test]
fn worker_registration_consistency() {
    let mut c = Cluster::new(&[]);
    c.add_node(
        1,
        None,
        &["--vcpus", "8", "--memory-mb", "8192", "--label", "zone=a"],
    );
    let seed = c.addr(1);
    c.add_node(2, Some(&seed), &["--vcpus", "4"]);
    c.add_node(3, Some(&seed), &[]);
    c.wait_members(3);
    let lists: Vec<serde_json::Value> = c
        .live()
        .iter()
        .map(|id| {
            wait_for("three workers", DEADLINE, || {
                let l = try_json(&c.addr(*id), &["node", "list"])?;
                (l.as_array()?.len() == 3).then_some(l)
            })
        })
        .collect();
    assert!(
        lists.windows(2).all(|w| w[0] == w[1]),
        "nodes disagree on workers: {lists:?}"
    );
    let workers = lists[0].as_array().unwrap();
    for w in workers {
        let id = w["id"].as_u64().unwrap();
        assert_eq!(w["addr"].as_str().unwrap(), c.addr(id));
        assert_eq!(w["state"], "up");
        assert!(w["capacity"]["vcpus"].as_u64().unwrap() > 0);
        assert!(w["capacity"]["memory_mb"].as_u64().unwrap() > 0);
        assert!(w["capacity"]["disk_gb"].is_u64());
        assert!(w["kvm"].is_boolean());
        assert_eq!(w["allocated"]["vcpus"], 0);
        assert_eq!(w["vms"], 0);
    }
    let n1 = workers.iter().find(|w| w["id"] == 1).unwrap();
    assert_eq!(n1["capacity"]["vcpus"], 8);
    assert_eq!(n1["capacity"]["memory_mb"], 8192);
    assert_eq!(n1["labels"]["zone"], "a");
    let n2 = workers.iter().find(|w| w["id"] == 2).unwrap();
    assert_eq!(n2["capacity"]["vcpus"], 4);
}

#[test]
fn restart_after_kill9_keeps_acknowledged_state() {
    let mut c = Cluster::start(3, &[]);
    for i in 0..10 {
        json(
            &c.addr(1 + (i % 3)),
            &["vm", "create", &format!("keep-{i}"), "--memory", "32"],
        );
    }
    let (index, digest) = c.wait_converged();
    for id in [1, 2, 3] {
        c.kill9(id);
    }
    for id in [1, 2, 3] {
        c.restart(id);
    }
    c.wait_members(3);
    for id in [1, 2, 3] {
        let list = wait_for("vm list after restart", DEADLINE, || {
            try_json(&c.addr(id), &["vm", "list"])
        });
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        for i in 0..10 {
            assert!(
                names.contains(&format!("keep-{i}").as_str()),
                "node {id} lost keep-{i}: {names:?}"
            );
        }
    }
    let (index2, _) = c.wait_converged();
    assert!(index2 >= index);
    // Nothing but leader no-ops and re-registrations happened since: the VM records match.
    let _ = digest;
    // Writes still work after the restart.
    json(&c.addr(2), &["vm", "create", "after-restart"]);
}

#[test]
fn lagging_node_catches_up_by_snapshot() {
    let mut c = Cluster::start(3, &["--snapshot-every", "20", "--keep-logs", "5"]);
    c.kill9(3);
    for i in 0..60 {
        json(
            &c.addr(1 + (i % 2)),
            &["vm", "create", &format!("lag-{i}"), "--memory", "16"],
        );
    }
    let leader = c.leader();
    let purged = wait_for("the leader to purge its log", DEADLINE, || {
        let s = c.status(leader)?;
        let p = s["purged_index"].as_u64()?;
        (p > 20).then_some(p)
    });
    assert!(purged > 20);
    c.restart(3);
    c.wait_converged();
    let s = c.status(3).unwrap();
    assert!(
        s["snapshot_index"].as_u64().is_some(),
        "node 3 should have installed a snapshot: {s}"
    );
    let list = json(&c.addr(3), &["vm", "list", "--stale"]);
    assert_eq!(list.as_array().unwrap().len(), 60);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let c = Cluster::start(1, &[]);
    let a = c.addr(1);
    wait_for("node 1 to register", DEADLINE, || {
        (try_json(&a, &["node", "list"])?.as_array()?.len() == 1).then_some(())
    });
    let (before, _) = c.wait_converged();
    let long = "x".repeat(5000);
    // Malformed input is refused before it reaches the log.
    for args in [
        vec!["vm", "create", "Bad_Name"],
        vec!["vm", "create", "ok", "--vcpus", "0"],
        vec!["vm", "create", "ok", "--memory", "99999999999"],
        vec!["vm", "create", "ok", "--cmdline", long.as_str()],
        vec!["vm", "create", &long],
        vec!["vm", "status", "NOT-A-NAME"],
        vec!["vm", "wait", "x", "--state", "sleeping"],
    ] {
        let out = run_cli(&a, &args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one clear line for {:?}: {err}",
            &args[..2]
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let (after, _) = c.wait_converged();
    assert_eq!(before, after, "malformed input must not reach the log");
    // Well-formed requests about things that do not exist are refused by apply: nothing changes.
    let workers = json(&a, &["node", "list"]);
    for args in [
        vec!["vm", "create", "ok", "--node", "42"],
        vec!["vm", "status", "missing"],
        vec!["vm", "delete", "missing"],
        vec!["vm", "start", "missing"],
        vec!["cluster", "remove", "42"],
        vec!["node", "drain", "42"],
    ] {
        let out = run_cli(&a, &args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one clear line for {args:?}: {err}"
        );
        assert!(
            err.contains("42") || err.contains("missing"),
            "the error names the unknown thing: {err}"
        );
    }
    assert_eq!(json(&a, &["vm", "list"]).as_array().unwrap().len(), 0);
    assert_eq!(json(&a, &["node", "list"]), workers);
    // --init on a directory that holds a cluster is refused.
    let out = std::process::Command::new(common::BIN)
        .args([
            "node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--init",
            "--data-dir",
        ])
        .arg(&c.node(1).dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds cluster"));
}

#[test]
fn unreachable_node_gives_one_clear_line() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    // Without credentials: one line saying what is missing.
    let out = common::run_cli_with(&addr, None, &["cluster", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no credentials") && err.contains("--credentials"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // With credentials (of a cluster of our own making) but nobody listening.
    let tmp = tempfile::tempdir().unwrap();
    let creds = common::make_credentials(tmp.path(), "admin", "admin");
    let out = common::run_cli_with(&addr, Some(&creds), &["cluster", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connection refused") && err.contains(addr.as_str()),
        "{err}"
    );
    let _ = Duration::from_secs(0);
}
