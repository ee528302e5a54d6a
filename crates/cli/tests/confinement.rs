//! Workloads that cannot reach what they must not, bounded client messages, CLI timeouts.
//! (Peer and enrollment messages without a member certificate: `security.rs`.)
//!
//! The task-user tests need root and the `blixard-task` user (scripts/setup.sh creates it):
//! without them they FAIL with a message saying so (they never pass silently).

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

use common::{json, run_cli, try_json, wait_for, Cluster, BIN, DEADLINE};
use serde_json::Value;

fn require_root_and_task_user() {
    assert!(
        nix_is_root(),
        "this test needs root (the node drops tasks to the task user)"
    );
    let ok = std::process::Command::new("getent")
        .args(["passwd", "blixard-task"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the task user blixard-task is missing: run scripts/setup.sh (as root)"
    );
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn wait_end(addr: &str, id: &str) -> Value {
    wait_for(&format!("task {id} to end"), DEADLINE, || {
        let t = try_json(addr, &["task", "status", id])?;
        matches!(
            t["state"].as_str(),
            Some("succeeded" | "failed" | "timed_out" | "cancelled")
        )
        .then_some(t)
    })
}

fn logs(addr: &str, id: &str) -> String {
    let out = run_cli(addr, &["task", "logs", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_task_runs_as_the_task_user_with_limits_and_cannot_read_shadow() {
    require_root_and_task_user();
    let c = Cluster::start(1, &[]);
    let a = c.addr(1);
    let script = "id -un; \
        if cat /etc/shadow >/dev/null 2>&1; then echo SHADOW-READ; else echo shadow-refused; fi; \
        if ls .. >/dev/null 2>&1; then echo PARENT-LISTED; else echo parent-closed; fi; \
        if cat ../../../admin.credentials >/dev/null 2>&1; then echo CREDS-READ; else echo creds-refused; fi; \
        echo mine > own-file && echo wrote-cwd; \
        echo nofile=$(ulimit -n) core=$(ulimit -c); \
        if env | grep -q '^CARGO_'; then echo DAEMON-ENV; else echo env-own; fi";
    let t = json(&a, &["task", "submit", "--", "sh", "-c", script]);
    let id = t["id"].as_str().unwrap().to_string();
    let t = wait_end(&a, &id);
    assert_eq!(t["state"], "succeeded", "{t}");
    let out = logs(&a, &id);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "blixard-task",
            "shadow-refused",
            "parent-closed",
            "creds-refused",
            "wrote-cwd",
            "nofile=4096 core=0",
            // The node (started by the test harness) has CARGO_* variables; the task not.
            "env-own"
        ],
        "{out}"
    );
    // The file it wrote is its own, in its working directory.
    let own = c.node(1).dir.join("tasks").join(&id).join("work/own-file");
    assert_eq!(std::fs::read_to_string(&own).unwrap(), "mine\n");
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        std::fs::metadata(&own).unwrap().uid(),
        0,
        "owned by the task user"
    );
}

#[test]
fn a_missing_task_user_fails_the_task_with_what_to_do() {
    assert!(nix_is_root(), "this test needs root");
    let c = Cluster::start(1, &["--task-user", "blixard-no-such-user"]);
    let a = c.addr(1);
    let t = json(&a, &["task", "submit", "--", "true"]);
    let t = wait_end(&a, t["id"].as_str().unwrap());
    assert_eq!(t["state"], "failed", "{t}");
    let reason = t["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("blixard-no-such-user") && reason.contains("scripts/setup.sh"),
        "{t}"
    );
}

/// The one refusal, with the client's name for the file replaced.
fn refusal(what: &str, name: &str) -> String {
    blixard_core::spec::image_refusal(what, name)
}

#[test]
fn host_files_outside_the_image_directories_are_refused_with_one_message() {
    // Room for every VM at once (failed VMs keep their allocation).
    let c = Cluster::start(
        1,
        &[
            "--driver",
            "process",
            "--vcpus",
            "16",
            "--memory-mb",
            "16384",
        ],
    );
    let a = c.addr(1);
    let images = c.node(1).dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::write(images.join("ok.img"), b"disk").unwrap();
    std::fs::write(c.tmp.path().join("outside.img"), b"secret").unwrap();
    std::os::unix::fs::symlink(c.tmp.path().join("outside.img"), images.join("escape.img"))
        .unwrap();

    // Refused when the spec is checked: nothing is created.
    for (flag, what, path) in [
        ("--kernel", "kernel", "../../../../etc/passwd"),
        ("--kernel", "kernel", "/proc/self/environ"),
        ("--disk-image", "disk image", "images/../../outside.img"),
    ] {
        let out = run_cli(&a, &["vm", "create", "early", flag, path]);
        assert!(!out.status.success(), "{path} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&refusal(what, path)), "{err}");
    }
    assert!(
        try_json(&a, &["vm", "status", "early"]).is_none(),
        "nothing created"
    );

    // Refused where the file would be opened, with the same message whether it exists or not.
    let outside = c.tmp.path().join("outside.img").display().to_string();
    let cases = [
        ("shadow", "/etc/shadow"),
        ("nofile", "/etc/no-such-file-blixard"),
        ("outside", outside.as_str()),
        ("escape", "escape.img"),
        ("missing", "missing.img"),
    ];
    for (vm, path) in cases {
        json(
            &a,
            &[
                "vm",
                "create",
                vm,
                "--restart",
                "never",
                "--disk-image",
                path,
            ],
        );
    }
    for (vm, path) in cases {
        let v = c.wait_vm(1, vm, "failed", DEADLINE, |v| v["state"] == "failed");
        let reason = v["reason"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            reason.replace(path, "NAME"),
            refusal("disk image", "NAME"),
            "{vm}: {v}"
        );
    }
    // Inside: accepted (the process driver runs it).
    json(&a, &["vm", "create", "fine", "--disk-image", "ok.img"]);
    c.wait_vm(1, "fine", "running", DEADLINE, |v| v["state"] == "running");
}

/// Accepts connections and never answers (holds them until dropped).
fn silent_listener() -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    let h = std::thread::spawn(move || {
        let mut held = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < end {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if held.len() >= 8 {
                break;
            }
        }
        // Drain nothing, answer nothing; keep them open a little longer.
        for mut s in held {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        }
    });
    (addr, h)
}

fn cli(args: &[&str], creds: &std::path::Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("--credentials")
        .arg(creds)
        .args(args)
        .env_remove("BLIXARD_ADDR")
        .env_remove("BLIXARD_TIMEOUT")
        .output()
        .unwrap()
}

#[test]
fn the_cli_says_what_failed_with_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = common::make_credentials(tmp.path(), "someone", "admin");

    // A listener that accepts and never answers: timed out, within --timeout.
    let (silent, _h) = silent_listener();
    let out = cli(
        &["--addr", &silent, "--timeout", "1s", "vm", "list"],
        &creds,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("timed out after 1s") && err.contains(&silent),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Nothing listening: refused.
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = free.local_addr().unwrap().to_string();
    drop(free);
    let out = cli(&["--addr", &closed, "vm", "list"], &creds);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("connection refused") && err.contains(&closed),
        "{err}"
    );

    // A real node, but credentials of another cluster: a TLS problem.
    let c = Cluster::start(1, &["--driver", "process"]);
    let out = cli(&["--addr", &c.addr(1), "vm", "list"], &creds);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("TLS") && err.contains(&c.addr(1)), "{err}");

    // A bad duration is refused before anything is tried.
    let out = cli(
        &["--addr", &c.addr(1), "--timeout", "0s", "vm", "list"],
        &creds,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn an_oversized_client_message_is_refused_before_it_is_decoded() {
    let c = Cluster::start(1, &["--driver", "process"]);
    let a = c.addr(1);
    let pid = c.node(1).child.as_ref().unwrap().id();
    let admin = c.admin();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rss_kib(pid);
    let big = "x".repeat(200 << 20);
    rt.block_on(async {
        // The client API: 200 MiB in one task command.
        let mut api = common::api_client(&a, &admin).max_encoding_message_size(usize::MAX);
        let mut spec = blixard_api::pb::TaskSpec {
            command: vec![big.clone()],
            ..Default::default()
        };
        spec.timeout_secs = 10;
        let r = api
            .submit_task(blixard_api::pb::SubmitTaskRequest {
                spec: Some(spec),
                request_id: String::new(),
            })
            .await;
        let s = r.expect_err("a 200 MiB request was accepted");
        assert!(
            matches!(
                s.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{s:?}"
        );
        // The networks service, the other client service.
        let mut nets = blixard_api::NetworksClient::new(common::tls_channel(&a, &admin))
            .max_encoding_message_size(usize::MAX);
        let s = nets
            .create_network(blixard_api::pb::CreateNetworkRequest {
                name: big.clone(),
                ..Default::default()
            })
            .await
            .expect_err("a 200 MiB network request was accepted");
        assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
    });
    drop(big);
    let after = rss_kib(pid);
    eprintln!("node RSS before {before} KiB, after {after} KiB");
    assert!(
        after < before + 64 * 1024,
        "the node's RSS grew from {before} KiB to {after} KiB on refused messages"
    );
    // Still serving.
    json(&a, &["vm", "list"]);
}
