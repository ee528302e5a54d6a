//! Networks through the real CLI and daemons: the default network from `--init`, create /
//! list / delete with their refusals, addresses given at create time, kept across moves, and
//! free again once the node confirmed the deleted VM stopped. (Process driver: the addresses
//! are the replicated part; `qemu_net.rs` checks that QEMU VMs answer on them.)

mod common;

use std::collections::BTreeSet;

use common::{json, run_cli, try_json, wait_for, Cluster, DEADLINE};

fn fails_with(addr: &str, args: &[&str], needle: &str) {
    let out = run_cli(addr, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn networks_and_addresses_through_the_cli() {
    let c = Cluster::start(3, &["--network-cidr", "10.77.0.0/24"]);
    let a = c.addr(1);
    let nets = json(&a, &["network", "list"]);
    assert_eq!(nets[0]["name"], "default");
    assert_eq!(nets[0]["cidr"], "10.77.0.0/24");
    assert_eq!(nets[0]["vms"], 0);
    // Every node got a bridge address on it.
    assert_eq!(nets[0]["nodes"].as_object().map(|o| o.len()), Some(3));

    let blue = json(
        &c.addr(2),
        &["network", "create", "blue", "--cidr", "192.168.40.0/28"],
    );
    assert_eq!(blue["cidr"], "192.168.40.0/28");
    fails_with(
        &a,
        &["network", "create", "red", "--cidr", "10.77.0.128/25"],
        "overlaps network 'default'",
    );
    fails_with(
        &a,
        &["network", "create", "red", "--cidr", "8.8.8.0/24"],
        "private range",
    );
    fails_with(
        &a,
        &["network", "create", "blue", "--cidr", "10.9.0.0/16"],
        "already exists",
    );

    // Addresses: distinct, from the right network, a requested one honoured.
    let v1 = json(&a, &["vm", "create", "v1", "--memory", "32"]);
    let v2 = json(&c.addr(3), &["vm", "create", "v2", "--memory", "32"]);
    let v3 = json(
        &a,
        &[
            "vm",
            "create",
            "v3",
            "--memory",
            "32",
            "--network",
            "blue",
            "--ip",
            "192.168.40.9",
        ],
    );
    assert_eq!(v1["network"], "default");
    assert_eq!(v3["network"], "blue");
    assert_eq!(v3["ip"], "192.168.40.9");
    let ips: BTreeSet<String> = [&v1, &v2, &v3]
        .iter()
        .map(|v| v["ip"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ips.len(), 3, "distinct addresses: {ips:?}");
    assert!(v1["ip"]
        .as_str()
        .is_some_and(|ip| ip.starts_with("10.77.0.")));
    fails_with(
        &a,
        &[
            "vm",
            "create",
            "v4",
            "--network",
            "blue",
            "--ip",
            "192.168.40.9",
        ],
        "is taken by VM 'v3'",
    );
    fails_with(
        &a,
        &[
            "vm",
            "create",
            "v4",
            "--network",
            "blue",
            "--ip",
            "10.77.0.9",
        ],
        "is outside network 'blue'",
    );
    fails_with(
        &a,
        &["vm", "create", "v4", "--network", "nope"],
        "network 'nope' not found",
    );
    assert!(
        run_cli(&a, &["vm", "status", "v4"]).status.code() != Some(0),
        "refusals create nothing"
    );
    fails_with(&a, &["network", "delete", "blue"], "in use by 1 VM(s) (v3)");

    // Moves keep the address.
    c.wait_vm(1, "v1", "running", DEADLINE, |v| v["state"] == "running");
    let from = c.wait_vm(1, "v1", "placed", DEADLINE, |v| {
        v["node_id"].as_u64().is_some()
    })["node_id"]
        .as_u64();
    let out = run_cli(
        &a,
        &[
            "node",
            "drain",
            &from.unwrap_or(0).to_string(),
            "--timeout",
            "60",
        ],
    );
    assert!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let moved = c.wait_vm(1, "v1", "running elsewhere", DEADLINE, |v| {
        v["state"] == "running" && v["node_id"].as_u64() != from
    });
    assert_eq!(moved["ip"], v1["ip"]);

    // Delete: the address is free again once the node confirms the VM stopped.
    c.wait_vm(1, "v3", "running", DEADLINE, |v| v["state"] == "running");
    json(&a, &["vm", "delete", "v3", "--force"]);
    let again = wait_for("the deleted VM's address to be free", DEADLINE, || {
        try_json(
            &a,
            &[
                "vm",
                "create",
                "v5",
                "--memory",
                "32",
                "--network",
                "blue",
                "--ip",
                "192.168.40.9",
            ],
        )
    });
    assert_eq!(again["ip"], "192.168.40.9");
    json(&a, &["vm", "delete", "v5", "--force"]);
    wait_for("blue to be unused", DEADLINE, || {
        let nets = try_json(&a, &["network", "list"])?;
        let blue = nets
            .as_array()?
            .iter()
            .find(|n| n["name"] == "blue")?
            .clone();
        (blue["vms"] == 0).then_some(())
    });
    // v5's address may still be quarantined for a moment: deletion waits for it.
    wait_for("blue to be deleted", DEADLINE, || {
        run_cli(&a, &["network", "delete", "blue"])
            .status
            .success()
            .then_some(())
    });
    let names: Vec<String> = json(&a, &["network", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["default".to_string()]);
    fails_with(&a, &["network", "delete", "default"], "cannot be deleted");
    c.wait_converged();
}

#[test]
fn concurrent_creates_through_several_nodes_get_distinct_addresses() {
    let c = Cluster::start(3, &["--network-cidr", "10.78.0.0/24"]);
    // 14 usable addresses, 3 of them the nodes' bridges: 11 VMs fit in "tiny".
    json(
        &c.addr(1),
        &["network", "create", "tiny", "--cidr", "192.168.41.0/28"],
    );
    let addrs: Vec<String> = (1..=3).map(|i| c.addr(i)).collect();
    let results: Vec<(String, std::process::Output)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let addr = addrs[i % 3].clone();
                s.spawn(move || {
                    let name = format!("c{i}");
                    let net = if i % 2 == 0 { "default" } else { "tiny" };
                    let out = run_cli(
                        &addr,
                        &[
                            "--json",
                            "vm",
                            "create",
                            &name,
                            "--memory",
                            "16",
                            "--no-start",
                            "--network",
                            net,
                        ],
                    );
                    (name, out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut ips = BTreeSet::new();
    let (mut ok_tiny, mut full_tiny) = (0, 0);
    for (name, out) in &results {
        let tiny = name[1..].parse::<usize>().unwrap() % 2 == 1;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            assert!(
                ips.insert(v["ip"].as_str().unwrap().to_string()),
                "{name} got a taken address: {v}"
            );
            ok_tiny += usize::from(tiny);
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(tiny && err.contains("no free address"), "{name}: {err}");
            full_tiny += 1;
        }
    }
    assert_eq!((ok_tiny, full_tiny), (11, 1), "tiny holds exactly 11 VMs");
    // And every node agrees on the same state.
    c.wait_converged();
    let listed: BTreeSet<String> = json(&c.addr(2), &["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ips);
}
