//! The scheduler through the CLI: constraints, anti-affinity, draining, pending VMs placed
//! when capacity appears, dry runs, preemption.

mod common;

use common::{json, run_cli, try_json, wait_for, Cluster, DEADLINE};

fn cluster() -> Cluster {
    let mut c = Cluster::new(&["--vcpus", "4", "--memory-mb", "4096"]);
    c.add_node(1, None, &["--label", "zone=a"]);
    let seed = c.addr(1);
    c.add_node(2, Some(&seed), &["--label", "zone=b"]);
    c.add_node(3, Some(&seed), &["--label", "zone=a"]);
    c.wait_members(3);
    wait_for("three workers", DEADLINE, || {
        (try_json(&seed, &["node", "list"])?.as_array()?.len() == 3).then_some(())
    });
    c
}

#[test]
fn constraints_anti_affinity_and_draining() {
    let c = cluster();
    let a = c.addr(1);
    let vm = json(
        &a,
        &[
            "vm",
            "create",
            "b-only",
            "--no-start",
            "--constraint",
            "zone=b",
        ],
    );
    assert_eq!(vm["node_id"], 2);
    assert!(vm["placement"].as_str().unwrap().contains("node 2"), "{vm}");

    for i in 0..3 {
        json(
            &a,
            &[
                "vm",
                "create",
                &format!("db-{i}"),
                "--no-start",
                "--anti-affinity",
                "db",
            ],
        );
    }
    let list = json(&a, &["vm", "list"]);
    let mut nodes: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"].as_str().unwrap().starts_with("db-"))
        .map(|v| v["node_id"].as_u64().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, vec![1, 2, 3], "one db VM per node");
    let extra = json(
        &a,
        &[
            "vm",
            "create",
            "db-3",
            "--no-start",
            "--anti-affinity",
            "db",
        ],
    );
    assert!(extra["node_id"].is_null());
    assert_eq!(extra["state"], "pending");
    assert!(
        extra["reason"]
            .as_str()
            .unwrap()
            .contains("anti-affinity group db"),
        "{extra}"
    );

    json(&a, &["node", "drain", "3", "--no-wait"]);
    for i in 0..4 {
        let v = json(
            &a,
            &[
                "vm",
                "create",
                &format!("w-{i}"),
                "--no-start",
                "--memory",
                "64",
            ],
        );
        assert_ne!(v["node_id"], 3, "nothing new on a draining node");
    }
    json(&a, &["node", "undrain", "3"]);
}

#[test]
fn pending_vms_are_placed_when_capacity_appears_and_dry_runs_change_nothing() {
    let c = cluster();
    let a = c.addr(1);
    let big = json(&a, &["vm", "create", "big", "--no-start", "--vcpus", "8"]);
    assert_eq!(big["state"], "pending");
    let reason = big["reason"].as_str().unwrap();
    assert!(
        reason.contains("8 vCPUs"),
        "the reason says what is missing: {reason}"
    );

    let before = c.wait_converged();
    let out = run_cli(
        &a,
        &[
            "--json",
            "vm",
            "create",
            "probe",
            "--vcpus",
            "2",
            "--dry-run",
        ],
    );
    assert!(out.status.success());
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["verdicts"].as_array().unwrap().len(), 3);
    assert!(p["node_id"].is_u64());
    assert_eq!(c.wait_converged(), before, "a dry run proposes nothing");
    assert!(run_cli(&a, &["vm", "status", "probe"]).status.code() != Some(0));

    // Doubling vCPU capacity lets the pending VM in.
    let s = json(&a, &["cluster", "settings", "--vcpu-overcommit", "200"]);
    assert_eq!(s["vcpu_overcommit_pct"], 200);
    let placed = c.wait_vm(2, "big", "placed", DEADLINE, |v| v["node_id"].is_u64());
    assert_eq!(placed["state"], "stopped");
    let nodes = json(&a, &["node", "list"]);
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["capacity"]["vcpus"], 8, "capacity shown after overcommit");
        assert!(n["allocated"]["vcpus"].as_u64() <= n["capacity"]["vcpus"].as_u64());
    }
}

#[test]
fn high_priority_vm_preempts_lower_priority_ones() {
    let c = cluster();
    let a = c.addr(1);
    for i in 0..3 {
        json(
            &a,
            &[
                "vm",
                "create",
                &format!("low-{i}"),
                "--no-start",
                "--vcpus",
                "4",
                "--priority",
                "10",
            ],
        );
    }
    let refused = json(
        &a,
        &[
            "vm",
            "create",
            "polite",
            "--no-start",
            "--vcpus",
            "4",
            "--priority",
            "90",
        ],
    );
    assert_eq!(refused["state"], "pending", "without --preempt it waits");
    json(&a, &["vm", "delete", "polite", "--force"]);
    let high = json(
        &a,
        &[
            "vm",
            "create",
            "vip",
            "--no-start",
            "--vcpus",
            "4",
            "--priority",
            "90",
            "--preempt",
        ],
    );
    assert!(high["node_id"].is_u64(), "{high}");
    let list = json(&a, &["vm", "list"]);
    let evicted: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["state"] == "pending")
        .collect();
    assert_eq!(evicted.len(), 1);
    assert!(
        evicted[0]["reason"]
            .as_str()
            .unwrap()
            .contains("preempted by VM vip"),
        "{}",
        evicted[0]
    );
}
