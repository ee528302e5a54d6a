//! The CLI's edges as a user meets them: a closed stdout (`| head -1`) ends quietly.

mod common;

use common::{json, Cluster, BIN};

#[test]
fn a_closed_stdout_ends_quietly() {
    let c = Cluster::start(1, &[]);
    let a = c.addr(1);
    for i in 0..3 {
        json(
            &a,
            &[
                "vm",
                "create",
                &format!("p{i}"),
                "--no-start",
                "--memory",
                "32",
            ],
        );
    }
    // `true` exits without reading: blixard's first write meets a broken pipe.
    for args in ["vm list", "--json vm list", "node list", "cluster status"] {
        let creds = common::credentials_for(&a).expect("the cluster's admin credential");
        let script =
            format!("'{BIN}' --addr {a} --credentials '{}' {args} 2>\"$ERR\" | true; echo ${{PIPESTATUS[0]}}", creds.display());
        let dir = tempfile::tempdir().unwrap();
        let err = dir.path().join("err");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("ERR", &err)
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(
            !stderr.contains("panicked"),
            "`blixard {args} | true` panicked: {stderr}"
        );
        assert_eq!(
            status, "0",
            "`blixard {args} | true` exited {status}: {stderr}"
        );
    }
}

#[test]
fn many_large_tasks_can_be_listed_and_cancelled_and_env_values_never_come_back() {
    let c = Cluster::start(1, &["--vcpus", "2"]);
    let a = c.addr(1);
    // ~30 KiB each (command and environment), waiting forever for 64 vCPUs: 150 of them are
    // more than a client's 4 MiB decode limit in one answer.
    let big = "x".repeat(15 * 1024);
    let env = format!("SECRET={}", "s".repeat(15 * 1024));
    let mut ids = Vec::new();
    for _ in 0..150 {
        let t = json(
            &a,
            &[
                "task", "submit", "--cpus", "64", "--env", &env, "--", "echo", &big,
            ],
        );
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let all = json(&a, &["task", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 150);
    let pending = json(&a, &["task", "list", "--state", "pending"]);
    assert_eq!(pending.as_array().unwrap().len(), 150);
    let listed: Vec<&str> = pending
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    let mut got: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, sorted, "every task exactly once across pages");
    let one = json(&a, &["task", "status", &ids[0]]);
    assert_eq!(
        one["env"],
        serde_json::json!(["SECRET"]),
        "names only: {}",
        one["env"]
    );
    assert!(!one.to_string().contains("sss"), "an env value came back");
    for id in &ids {
        json(&a, &["task", "cancel", id]);
    }
    let cancelled = json(&a, &["task", "list", "--state", "cancelled"]);
    assert_eq!(cancelled.as_array().unwrap().len(), 150);
}
