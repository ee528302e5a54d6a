//! Real VMs end to end: the executor boots, watches, restarts and stops QEMU microVMs (TCG
//! here) and supervised processes, reporting through Raft.

mod common;

use std::time::Duration;

use common::{json, pid_alive, run_cli, try_json, wait_for, Cluster, DEADLINE};

/// QEMU under TCG on a loaded two-core machine: boots take seconds, allow plenty.
const BOOT: Duration = Duration::from_secs(120);

fn logs(c: &Cluster, via: u64, name: &str) -> String {
    let out = run_cli(&c.addr(via), &["vm", "logs", name]);
    assert!(
        out.status.success(),
        "vm logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn qemu_vm_lifecycle_on_one_node() {
    let c = Cluster::start(1, &["--driver", "qemu"]);
    let vm = json(&c.addr(1), &["vm", "create", "solo", "--memory", "256"]);
    assert_eq!(vm["node_id"], 1);
    let out = run_cli(
        &c.addr(1),
        &[
            "vm",
            "wait",
            "solo",
            "--state",
            "running",
            "--timeout",
            "120",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let console = logs(&c, 1, "solo");
    assert!(
        console.contains("Linux version"),
        "the console shows the kernel booting: {console}"
    );
    assert!(console.contains("BLIXARD-READY"));
    let pid = c.vm_pid(1, "solo").expect("qemu pid");
    assert!(pid_alive(pid));

    json(&c.addr(1), &["vm", "stop", "solo"]);
    c.wait_vm(1, "solo", "stopped", BOOT, |v| v["state"] == "stopped");
    assert!(
        !pid_alive(pid),
        "QEMU is gone once the VM is reported stopped"
    );

    json(&c.addr(1), &["vm", "delete", "solo"]);
    wait_for("the run directory to be cleaned up", DEADLINE, || {
        c.vm_dirs(1).is_empty().then_some(())
    });
    assert!(run_cli(&c.addr(1), &["vm", "status", "solo"]).status.code() != Some(0));
}

#[test]
fn qemu_vm_lifecycle_across_three_nodes() {
    let c = Cluster::start(3, &["--driver", "qemu"]);
    // Created through node 3, pinned to node 2, watched through node 1.
    let vm = json(
        &c.addr(3),
        &["vm", "create", "trio", "--memory", "256", "--node", "2"],
    );
    assert_eq!(vm["node_id"], 2);
    let v = c.wait_vm(1, "trio", "running", BOOT, |v| v["state"] == "running");
    assert_eq!(v["epoch"], vm["epoch"]);
    assert!(c.vm_pid(2, "trio").is_some(), "it runs on node 2");
    assert!(
        c.vm_dirs(1).is_empty() && c.vm_dirs(3).is_empty(),
        "and nowhere else"
    );
    let console = logs(&c, 1, "trio");
    assert!(
        console.contains("Linux version"),
        "console read through node 1: {console}"
    );

    json(&c.addr(2), &["vm", "stop", "trio"]);
    c.wait_vm(3, "trio", "stopped", BOOT, |v| v["state"] == "stopped");
    json(&c.addr(1), &["vm", "delete", "trio"]);
    wait_for("node 2 to clean up", DEADLINE, || {
        c.vm_dirs(2).is_empty().then_some(())
    });
}

#[test]
fn qemu_crash_is_handled_per_restart_policy() {
    let c = Cluster::start(1, &["--driver", "qemu"]);
    json(
        &c.addr(1),
        &[
            "vm",
            "create",
            "phoenix",
            "--memory",
            "256",
            "--restart",
            "on-failure",
        ],
    );
    json(
        &c.addr(1),
        &[
            "vm",
            "create",
            "mortal",
            "--memory",
            "256",
            "--restart",
            "never",
        ],
    );
    for name in ["phoenix", "mortal"] {
        c.wait_vm(1, name, "running", BOOT, |v| v["state"] == "running");
    }
    let (p1, p2) = (
        c.vm_pid(1, "phoenix").unwrap(),
        c.vm_pid(1, "mortal").unwrap(),
    );
    for pid in [p1, p2] {
        assert!(std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }
    let m = c.wait_vm(1, "mortal", "failed", BOOT, |v| v["state"] == "failed");
    let reason = m["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("SIGKILL") || reason.contains("137"),
        "the reason names the exit: {reason}"
    );
    let p = c.wait_vm(1, "phoenix", "restarted and running", BOOT, |v| {
        v["state"] == "running" && v["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(p["restarts"], 1);
    let new_pid = c.vm_pid(1, "phoenix").unwrap();
    assert_ne!(new_pid, p1);
    assert!(pid_alive(new_pid));
    // "never" stays failed: nothing restarted it.
    assert_eq!(
        json(&c.addr(1), &["vm", "status", "mortal"])["state"],
        "failed"
    );
}

#[test]
fn daemon_restart_reattaches_a_running_vm_without_rebooting_it() {
    let mut c = Cluster::start(1, &["--driver", "qemu"]);
    json(&c.addr(1), &["vm", "create", "survivor", "--memory", "256"]);
    c.wait_vm(1, "survivor", "running", BOOT, |v| v["state"] == "running");
    let pid = c.vm_pid(1, "survivor").unwrap();
    c.kill9(1);
    assert!(pid_alive(pid), "the VM outlives its daemon");
    c.restart(1);
    let v = c.wait_vm(1, "survivor", "running after restart", DEADLINE, |v| {
        v["state"] == "running"
    });
    assert_eq!(v["restarts"], 0);
    // Give the executor a few passes to (wrongly) act on it, then check nothing changed.
    let before = json(&c.addr(1), &["cluster", "status"])["applied_index"]
        .as_u64()
        .unwrap();
    json(&c.addr(1), &["vm", "create", "marker", "--no-start"]);
    wait_for("a few reconcile passes", DEADLINE, || {
        let s = try_json(&c.addr(1), &["cluster", "status"])?;
        (s["applied_index"].as_u64()? > before).then_some(())
    });
    assert_eq!(c.vm_pid(1, "survivor"), Some(pid), "same QEMU process");
    assert!(pid_alive(pid));
    assert_eq!(
        logs(&c, 1, "survivor").matches("Linux version").count(),
        1,
        "booted once"
    );
}

#[test]
fn process_driver_runs_many_vms_across_nodes() {
    // Ten 1-vCPU VMs per node need more vCPUs than this machine has: declare them.
    let c = Cluster::start(3, &["--vcpus", "16"]);
    for i in 0..30 {
        json(
            &c.addr(1 + (i % 3)),
            &["vm", "create", &format!("p{i}"), "--memory", "64"],
        );
    }
    wait_for("30 running VMs", DEADLINE, || {
        let l = try_json(&c.addr(2), &["vm", "list"])?;
        (l.as_array()?
            .iter()
            .filter(|v| v["state"] == "running")
            .count()
            == 30)
            .then_some(())
    });
    let list = json(&c.addr(3), &["vm", "list"]);
    for v in list.as_array().unwrap() {
        let node = v["node_id"].as_u64().unwrap();
        let name = v["name"].as_str().unwrap();
        assert!(
            c.vm_dirs(node).contains(&name.to_string()),
            "{name} runs on its node {node}"
        );
        for other in [1, 2, 3].into_iter().filter(|n| *n != node) {
            assert!(
                !c.vm_dirs(other).contains(&name.to_string()),
                "{name} runs only on node {node}"
            );
        }
    }
    let nodes = json(&c.addr(1), &["node", "list"]);
    let total: u64 = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["vms"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 30);
    for i in 0..30 {
        json(
            &c.addr(1 + (i % 3)),
            &["vm", "delete", &format!("p{i}"), "--force"],
        );
    }
    wait_for("every node to clean up", DEADLINE, || {
        [1, 2, 3]
            .iter()
            .all(|n| c.vm_dirs(*n).is_empty())
            .then_some(())
    });
}

#[test]
fn builtin_workload_signals_ready_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(common::BIN)
        .arg("__workload")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "BLIXARD-READY");
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status on SIGTERM: {status}");
}

#[test]
fn qemu_vm_boots_with_a_raw_disk_image_through_an_overlay_and_bad_paths_are_refused() {
    let c = Cluster::start(1, &["--driver", "qemu"]);
    let refused = run_cli(
        &c.addr(1),
        &["vm", "create", "nokernel", "--kernel", "../../vmlinuz"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("image directories"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A raw image is just a (sparse) file, in the node's image directory (DATA_DIR/images).
    let images = c.node(1).dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let img = images.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    json(
        &c.addr(1),
        &[
            "vm",
            "create",
            "withdisk",
            "--memory",
            "256",
            "--disk-image",
            "disk.img",
        ],
    );
    c.wait_vm(1, "withdisk", "running", BOOT, |v| v["state"] == "running");
    let pid = c.vm_pid(1, "withdisk").unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let overlay = c.node(1).dir.join("vms/withdisk/disk.qcow2");
    assert!(
        cmdline.contains(overlay.to_str().unwrap()) && cmdline.contains("format=qcow2"),
        "QEMU got the overlay, not the image: {cmdline}"
    );
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output", "json", "-U"])
        .arg(&overlay)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["backing-filename"].as_str(),
        Some(img.canonicalize().unwrap().to_str().unwrap()),
        "{info}"
    );
    assert_eq!(info["backing-filename-format"], "raw", "{info}");
}

#[test]
fn a_restart_keeps_the_previous_console() {
    let c = Cluster::start(1, &[]);
    let a = c.addr(1);
    json(&a, &["vm", "create", "phoenix", "--restart", "always"]);
    c.wait_vm(1, "phoenix", "running", DEADLINE, |v| {
        v["state"] == "running"
    });
    // No restart yet: nothing to show, one clear line.
    let out = run_cli(&a, &["vm", "logs", "phoenix", "--previous"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no previous console"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let pid = c.vm_pid(1, "phoenix").unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_for("phoenix to run again", DEADLINE, || {
        let v = try_json(&a, &["vm", "status", "phoenix"])?;
        (v["state"] == "running" && c.vm_pid(1, "phoenix").is_some_and(|p| p != pid)).then_some(())
    });
    let out = run_cli(&a, &["vm", "logs", "phoenix", "--previous"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("BLIXARD-READY"));
    assert!(c
        .node(1)
        .dir
        .join("vms")
        .join("phoenix")
        .join("console.log.1")
        .is_file());
    let out = run_cli(&a, &["vm", "logs", "phoenix", "--previous", "--follow"]);
    assert!(!out.status.success());
}
