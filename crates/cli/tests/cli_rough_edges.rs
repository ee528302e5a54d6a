//! The CLI's rough edges, as a new user meets them (issue 13): version and completions,
//! humane durations, list filters, `--tail`, task-id prefixes, the human `vm status` and
//! `node list`, `--force` on destructive commands, `vm wait` saying why on timeout, escaped
//! control characters, no colours in logs that are not a terminal.

mod common;

use common::{json, run_cli, wait_for, Cluster, BIN, DEADLINE};

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded unexpectedly: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn local(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("run blixard")
}

#[test]
fn version_and_completions_need_no_cluster() {
    let out = ok(&local(&["version"]));
    assert!(out.starts_with("blixard "), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&local(&["--json", "version"]))).expect("one JSON document");
    let commit = v["commit"].as_str().expect("commit");
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit}"
    );
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(out.contains(commit), "{out}");
    assert!(ok(&local(&["--version"])).contains(commit));

    let bash = ok(&local(&["completions", "bash"]));
    assert!(
        bash.contains("_blixard") && bash.contains("console"),
        "{bash}"
    );
    assert!(ok(&local(&["completions", "zsh"])).contains("#compdef blixard"));
    let err = fails(&local(&["completions", "cmd.exe"]));
    assert!(err.contains("invalid value"), "{err}");

    // Durations: humane forms, and a clear error for a bad one (before any connection).
    let err = fails(&local(&[
        "vm",
        "wait",
        "x",
        "--state",
        "running",
        "--timeout",
        "10x",
    ]));
    assert!(err.contains("unknown unit"), "{err}");
    let err = fails(&local(&[
        "vm",
        "wait",
        "x",
        "--state",
        "running",
        "--timeout",
        "-5",
    ]));
    assert!(err.contains("cannot be negative"), "{err}");
}

#[test]
fn rough_edges_on_one_node() {
    let c = Cluster::start(
        1,
        &["--label", "zone=a", "--vcpus", "4", "--memory-mb", "4096"],
    );
    let a = c.addr(1);

    // Two VMs with labels; one that cannot be placed.
    json(
        &a,
        &[
            "vm",
            "create",
            "web",
            "--label",
            "tier=front",
            "--memory",
            "64",
        ],
    );
    json(
        &a,
        &[
            "vm",
            "create",
            "db",
            "--label",
            "tier=back",
            "--memory",
            "64",
        ],
    );
    for name in ["web", "db"] {
        // Durations: `2m` where seconds were required.
        ok(&run_cli(
            &a,
            &["vm", "wait", name, "--state", "running", "--timeout", "2m"],
        ));
    }
    json(&a, &["vm", "create", "huge", "--memory", "1000000"]);

    // vm wait: the timeout says why the VM is not there.
    let err = fails(&run_cli(
        &a,
        &[
            "vm",
            "wait",
            "huge",
            "--state",
            "running",
            "--timeout",
            "500ms",
        ],
    ));
    assert!(err.contains("(it is pending: "), "{err}");

    // vm list filters.
    let names = |args: &[&str]| -> Vec<String> {
        let mut a2 = vec!["vm", "list"];
        a2.extend_from_slice(args);
        let mut v: Vec<String> = json(&a, &a2)
            .as_array()
            .expect("array")
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&["--label", "tier=front"]), ["web"]);
    assert_eq!(names(&["--state", "running"]), ["db", "web"]);
    assert_eq!(names(&["--state", "pending"]), ["huge"]);
    assert_eq!(names(&["--node", "1", "--label", "tier=back"]), ["db"]);
    assert!(names(&["--node", "7"]).is_empty());
    let err = fails(&run_cli(&a, &["vm", "list", "--state", "sleepy"]));
    // clap's refusal, on one line, naming the accepted states (the contract's spellings).
    assert!(err.contains("invalid value 'sleepy'"), "{err}");
    assert!(
        err.contains("pending, starting, running, stopping, stopped, failed, lost"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The human vm status.
    let out = ok(&run_cli(&a, &["vm", "status", "web"]));
    for want in [
        "labels: tier=front",
        "restart policy: on-failure",
        "restarts: 0",
        "disk: ",
        "address: ",
        "uptime: ",
    ] {
        assert!(out.contains(want), "{want:?} in {out}");
    }
    // node list shows labels.
    let out = ok(&run_cli(&a, &["node", "list"]));
    assert!(out.contains("LABELS") && out.contains("zone=a"), "{out}");

    // vm logs: --json is one document; --tail N the last lines.
    let v = json(&a, &["vm", "logs", "web"]);
    assert!(v["console"].as_str().is_some(), "{v}");
    let all = ok(&run_cli(&a, &["vm", "logs", "web"]));
    let last = ok(&run_cli(&a, &["vm", "logs", "web", "--tail", "1"]));
    assert_eq!(last.lines().count(), 1, "{last:?}");
    assert_eq!(last.trim_end(), all.trim_end().lines().last().unwrap());

    // Deleting a running VM needs --force; a pending one does not.
    let err = fails(&run_cli(&a, &["vm", "delete", "web"]));
    assert!(err.contains("--force"), "{err}");
    assert!(
        json(&a, &["vm", "status", "web"])["name"] == "web",
        "nothing changed"
    );
    ok(&run_cli(&a, &["vm", "delete", "web", "--force"]));
    ok(&run_cli(&a, &["vm", "delete", "huge"]));

    // Removing the leader, or leaving below three voters, needs --force.
    let err = fails(&run_cli(&a, &["cluster", "remove", "1"]));
    assert!(
        err.contains("is the leader") && err.contains("--force"),
        "{err}"
    );
    let err = fails(&run_cli(&a, &["cluster", "leave"]));
    assert!(err.contains("voter") && err.contains("--force"), "{err}");
    assert_eq!(
        json(&a, &["cluster", "status"])["members"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Tasks: ids by prefix, --tail, --json logs.
    let id = json(&a, &["task", "submit", "--", "sh", "-c", "seq 1 10"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = &id[..8];
    ok(&run_cli(&a, &["task", "wait", prefix, "--timeout", "1m"]));
    assert_eq!(
        ok(&run_cli(&a, &["task", "logs", prefix, "--tail", "3"])),
        "8\n9\n10\n"
    );
    let v = json(&a, &["task", "logs", prefix, "--tail", "2"]);
    assert_eq!(v["output"], "9\n10\n");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(json(&a, &["task", "status", prefix])["id"], id.as_str());
    let err = fails(&run_cli(&a, &["task", "status", "ffffffffff"]));
    assert!(err.contains("no task id starts with"), "{err}");
    let err = fails(&run_cli(&a, &["task", "status", "zz"]));
    assert!(err.contains("not found"), "{err}");
    // Two more tasks: the empty-ish prefix "" is refused, a 1-character one may be ambiguous.
    json(&a, &["task", "submit", "--", "true"]);
    json(&a, &["task", "submit", "--", "true"]);
    let tasks = json(&a, &["task", "list"]);
    let ids: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    if let Some(p) = (0..16)
        .map(|d| format!("{d:x}"))
        .find(|p| ids.iter().filter(|i| i.starts_with(p.as_str())).count() > 1)
    {
        let err = fails(&run_cli(&a, &["task", "status", &p]));
        assert!(err.contains("ambiguous"), "{err}");
    }

    // Control characters in a name are never echoed raw.
    let err = fails(&run_cli(&a, &["vm", "create", "bad\x1b[31mname"]));
    assert!(!err.contains('\x1b') && err.contains("\\u{1b}"), "{err:?}");

    // The daemon's log (not a terminal) has no colour codes.
    let log = std::fs::read_to_string(c.node(1).dir.with_extension("log")).unwrap();
    assert!(!log.is_empty() && !log.contains('\x1b'), "ANSI in the log");
    wait_for("db to still run", DEADLINE, || {
        (json(&a, &["vm", "status", "db"])["state"] == "running").then_some(())
    });
}
