//! Failure handling: dead nodes are detected, their VMs rescheduled, cut-off nodes fence
//! themselves, drains move VMs, voters are replaced, and no VM ever runs twice (checked from
//! the workloads' own start/stop records).

mod common;

use std::time::Duration;

use common::{json, try_json, wait_for, Cluster, DEADLINE, FAST_LIVENESS};

fn flags(extra: &[&'static str]) -> Vec<&'static str> {
    let mut f = FAST_LIVENESS.to_vec();
    f.extend_from_slice(&["--vcpus", "16"]);
    f.extend_from_slice(extra);
    f
}

fn vm_nodes(c: &Cluster, via: u64) -> Vec<(String, Option<u64>, String, u64)> {
    let l = json(&c.addr(via), &["vm", "list"]);
    l.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["node_id"].as_u64(),
                v["state"].as_str().unwrap().to_string(),
                v["epoch"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Waits until `n` VMs are reported running (read through node 1).
fn wait_running(c: &Cluster, n: usize) {
    wait_for(&format!("{n} running VMs"), DEADLINE, || {
        let l = try_json(&c.addr(1), &["vm", "list"])?;
        (l.as_array()?
            .iter()
            .filter(|v| v["state"] == "running")
            .count()
            == n)
            .then_some(())
    });
}

fn all_running_off(c: &Cluster, via: u64, off: u64, n: usize) -> Option<()> {
    let l = try_json(&c.addr(via), &["vm", "list"])?;
    let ok = l
        .as_array()?
        .iter()
        .filter(|v| v["state"] == "running" && v["node_id"].as_u64().is_some_and(|x| x != off))
        .count();
    (ok == n).then_some(())
}

/// A worker running VMs dies (`kill -9` of its daemon, or SIGSTOP: cut off): its VMs are fenced,
/// then run elsewhere; when it returns it runs none of them.
fn worker_loss(stop_signal: &str) {
    let mut c = Cluster::start(3, &flags(&[]));
    json(&c.addr(1), &["cluster", "settings", "--strategy", "spread"]);
    for i in 0..6 {
        json(
            &c.addr(1),
            &["vm", "create", &format!("w{i}"), "--memory", "32"],
        );
    }
    wait_running(&c, 6);
    let leader = c.leader();
    let victim = [1, 2, 3]
        .into_iter()
        .find(|n| *n != leader && !c.vm_dirs(*n).is_empty())
        .expect("a follower with VMs");
    let via = [1, 2, 3].into_iter().find(|n| *n != victim).unwrap();
    let moved: Vec<String> = vm_nodes(&c, via)
        .into_iter()
        .filter(|v| v.1 == Some(victim))
        .map(|v| v.0)
        .collect();
    assert!(!moved.is_empty());

    if stop_signal == "-KILL" {
        c.kill9(victim);
    } else {
        c.signal(victim, stop_signal);
    }
    wait_for("the victim to be declared down", DEADLINE, || {
        let nodes = try_json(&c.addr(via), &["node", "list"])?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["id"] == victim && n["state"] == "down")
            .then_some(())
    });
    wait_for("every VM running off the victim", DEADLINE, || {
        all_running_off(&c, via, victim, 6)
    });
    for (name, node, _, _) in vm_nodes(&c, via) {
        if moved.contains(&name) {
            assert_ne!(node, Some(victim));
        }
    }

    // The victim returns.
    if stop_signal == "-KILL" {
        c.restart(victim);
    } else {
        c.signal(victim, "-CONT");
    }
    wait_for("the victim to be up again", DEADLINE, || {
        let nodes = try_json(&c.addr(via), &["node", "list"])?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["id"] == victim && n["state"] == "up")
            .then_some(())
    });
    wait_for("the victim to clean up its old copies", DEADLINE, || {
        c.vm_dirs(victim).is_empty().then_some(())
    });
    all_running_off(&c, via, victim, 6).expect("still running elsewhere");
    let runs = c.assert_never_ran_twice();
    assert!(
        runs >= 6 + moved.len(),
        "the events file recorded the moves ({runs} runs)"
    );
}

#[test]
fn killed_worker_vms_run_elsewhere_and_never_twice() {
    worker_loss("-KILL");
}

#[test]
fn cut_off_worker_fences_its_vms_before_they_run_elsewhere() {
    worker_loss("-STOP");
}

#[test]
fn leader_failover_does_not_declare_live_nodes_down() {
    let mut c = Cluster::start(3, &flags(&[]));
    json(&c.addr(1), &["cluster", "settings", "--strategy", "spread"]);
    for i in 0..3 {
        json(
            &c.addr(1),
            &["vm", "create", &format!("f{i}"), "--memory", "32"],
        );
    }
    wait_running(&c, 3);
    let old = c.leader();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != old).collect();
    let before: Vec<_> = vm_nodes(&c, survivors[0])
        .into_iter()
        .filter(|v| v.1 != Some(old))
        .collect();
    c.kill9(old);
    let new = wait_for("a new leader", DEADLINE, || {
        let s = c.status(survivors[0])?;
        let l = s["leader_id"].as_u64()?;
        (l != old).then_some(l)
    });
    assert!(survivors.contains(&new));
    // The dead leader is eventually declared down; the survivors never are.
    wait_for("the old leader to be declared down", DEADLINE, || {
        let nodes = try_json(&c.addr(new), &["node", "list"])?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["id"] == old && n["state"] == "down")
            .then_some(())
    });
    let nodes = json(&c.addr(new), &["node", "list"]);
    for n in nodes.as_array().unwrap() {
        if n["id"] != old {
            assert_eq!(n["state"], "up", "{n}");
        }
    }
    let after = vm_nodes(&c, survivors[0]);
    for v in before {
        let now = after.iter().find(|a| a.0 == v.0).unwrap();
        assert_eq!(
            (now.1, now.3),
            (v.1, v.3),
            "VM {} on a live node kept its placement and epoch",
            v.0
        );
    }
    c.assert_never_ran_twice();
}

#[test]
fn drain_moves_every_vm_respecting_anti_affinity() {
    let c = Cluster::start(4, &flags(&[]));
    json(&c.addr(1), &["cluster", "settings", "--strategy", "spread"]);
    for i in 0..3 {
        json(
            &c.addr(1),
            &[
                "vm",
                "create",
                &format!("g{i}"),
                "--memory",
                "32",
                "--anti-affinity",
                "g",
            ],
        );
    }
    for i in 0..3 {
        json(
            &c.addr(1),
            &["vm", "create", &format!("x{i}"), "--memory", "32"],
        );
    }
    wait_running(&c, 6);
    let target = vm_nodes(&c, 1)
        .into_iter()
        .find(|v| v.0 == "g0")
        .unwrap()
        .1
        .unwrap();
    let out = common::run_cli(
        &c.addr(1),
        &["node", "drain", &target.to_string(), "--timeout", "60"],
    );
    assert!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("drained"));
    wait_for("all 6 running off the drained node", DEADLINE, || {
        all_running_off(&c, 2, target, 6)
    });
    let vms = vm_nodes(&c, 2);
    let mut g_nodes: Vec<u64> = vms
        .iter()
        .filter(|v| v.0.starts_with('g'))
        .map(|v| v.1.unwrap())
        .collect();
    g_nodes.sort();
    g_nodes.dedup();
    assert_eq!(
        g_nodes.len(),
        3,
        "anti-affinity holds after the drain: {vms:?}"
    );
    wait_for("the drained node to clean up", DEADLINE, || {
        c.vm_dirs(target).is_empty().then_some(())
    });
    let nodes = json(&c.addr(1), &["node", "list"]);
    let t = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == target)
        .unwrap();
    assert_eq!(t["state"], "draining");
    assert_eq!(t["vms"], 0);
    c.assert_never_ran_twice();
}

#[test]
fn flapping_node_does_not_cause_a_rescheduling_storm() {
    let c = Cluster::start(3, &flags(&[]));
    json(&c.addr(1), &["cluster", "settings", "--strategy", "spread"]);
    for i in 0..3 {
        json(
            &c.addr(1),
            &["vm", "create", &format!("s{i}"), "--memory", "32"],
        );
    }
    wait_running(&c, 3);
    let leader = c.leader();
    let flapper = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    let before = vm_nodes(&c, leader);
    // Gone for a moment, back, again and again: shorter than lease + grace each time.
    for _ in 0..4 {
        c.signal(flapper, "-STOP");
        std::thread::sleep(Duration::from_millis(800));
        c.signal(flapper, "-CONT");
        std::thread::sleep(Duration::from_millis(1200));
    }
    let after = vm_nodes(&c, leader);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((b.1, b.3), (a.1, a.3), "VM {} was not moved", b.0);
    }
    let nodes = json(&c.addr(leader), &["node", "list"]);
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["state"] == "up"),
        "{nodes}"
    );
    c.assert_never_ran_twice();
}

#[test]
fn a_voter_that_stays_down_is_replaced_by_a_healthy_learner() {
    let mut c = Cluster::start(3, &flags(&[]));
    let seed = c.addr(1);
    c.add_node(4, Some(&seed), &[]);
    wait_for("node 4 a learner", DEADLINE, || {
        c.members_of(1)?
            .contains(&(4, "learner".into()))
            .then_some(())
    });
    let leader = c.leader();
    let dead = [1, 2, 3].into_iter().find(|n| *n != leader).unwrap();
    c.kill9(dead);
    wait_for(
        "node 4 promoted and the dead voter demoted",
        DEADLINE,
        || {
            let m = c.members_of(leader)?;
            (m.contains(&(4, "voter".into())) && m.contains(&(dead, "learner".into())))
                .then_some(())
        },
    );
    c.wait_members(3);
}

#[test]
fn removing_a_node_moves_its_vms_without_running_them_twice() {
    let mut c = Cluster::start(3, &flags(&[]));
    json(&c.addr(1), &["cluster", "settings", "--strategy", "spread"]);
    for i in 0..6 {
        json(
            &c.addr(1),
            &["vm", "create", &format!("r{i}"), "--memory", "32"],
        );
    }
    wait_running(&c, 6);
    let leader = c.leader();
    let victim = [1, 2, 3]
        .into_iter()
        .find(|n| *n != leader && !c.vm_dirs(*n).is_empty())
        .expect("a follower with VMs");
    let out = common::run_cli(
        &c.addr(leader),
        &["cluster", "remove", &victim.to_string(), "--force"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.wait_exit(victim, DEADLINE), "the removed node stops");
    wait_for("every VM running on the remaining nodes", DEADLINE, || {
        all_running_off(&c, leader, victim, 6)
    });
    c.assert_never_ran_twice();
}
