//! `blixard vm console` with a real QEMU guest (TCG here): a line typed into the console of a
//! VM on node 2 reaches the guest's shell and its answer comes back, through node 1
//! (forwarded) and through node 2 at the same time; errors are clear.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{credentials_for, json, run_cli, wait_for, Cluster, BIN};

const BOOT: Duration = Duration::from_secs(120);

/// `blixard vm console ARGS` through `addr`, stdin and stdout piped.
fn console(addr: &str, args: &[&str]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("--addr").arg(addr);
    if let Some(c) = credentials_for(addr) {
        cmd.arg("--credentials").arg(c);
    }
    cmd.args(["vm", "console"])
        .args(args)
        .env_remove("BLIXARD_ADDR")
        .env_remove("BLIXARD_CREDENTIALS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run blixard vm console")
}

/// Collects a child's stdout on a thread.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().expect("stdout");
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = out.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

/// Waits (at most 10 s) for the reader of an exited viewer's stdout to deliver `line`.
fn wait_for_output(buf: &Arc<Mutex<Vec<u8>>>, line: &str) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if has_line(&text(buf), line) {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when a line of `out` is exactly `line` (the guest's answer, not the echoed command).
fn has_line(out: &str, line: &str) -> bool {
    out.lines().any(|l| l.trim_end_matches('\r').trim() == line)
}

#[test]
fn qemu_console_round_trip_from_two_nodes_at_once() {
    let c = Cluster::start(2, &["--driver", "qemu"]);
    let (a1, a2) = (c.addr(1), c.addr(2));
    let vm = json(
        &a1,
        &["vm", "create", "con", "--memory", "256", "--node", "2"],
    );
    assert_eq!(vm["node_id"], 2);
    c.wait_vm(1, "con", "running", BOOT, |v| v["state"] == "running");

    // A number of our own, so an answer cannot come from an earlier run; the guest computes
    // n+1, so the answer is not the echo of what was typed.
    let n = std::process::id() as u64 * 1000
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis() as u64;
    let one = format!("one-{}", n + 1);
    let two = format!("two-{}", n + 2);

    // Viewer B on node 2 (the VM's node) types the first line and stays attached.
    let mut b = console(&a2, &["con", "--expect", &two, "--timeout", "3m"]);
    let b_out = collect(&mut b);
    let mut b_in = b.stdin.take().expect("stdin");
    // The guest's shell may still be starting: type until it answers.
    wait_for("the guest's shell to answer viewer B", BOOT, || {
        if has_line(&text(&b_out), &one) {
            return Some(());
        }
        if let Ok(Some(status)) = b.try_wait() {
            let mut err = String::new();
            b.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("viewer B ended ({status}): {err}\n{}", text(&b_out));
        }
        b_in.write_all(format!("echo one-$(({n} + 1))\n").as_bytes())
            .ok()?;
        std::thread::sleep(Duration::from_secs(2));
        has_line(&text(&b_out), &one).then_some(())
    });

    // Viewer A through node 1 (forwarded to node 2), input from a pipe that then ends.
    let mut a = console(&a1, &["con", "--expect", &two, "--timeout", "2m"]);
    let a_out = collect(&mut a);
    {
        let mut a_in = a.stdin.take().expect("stdin");
        a_in.write_all(format!("echo two-$(({n} + 2))\n").as_bytes())
            .expect("write to viewer A");
    } // closed: viewer A's input ends, its output goes on until --expect
    let status = a.wait().expect("viewer A");
    let mut err = String::new();
    a.stderr.take().unwrap().read_to_string(&mut err).ok();
    assert!(
        status.success(),
        "viewer A (through node 1) sees the answer: {err}\n{}",
        text(&a_out)
    );
    // The process has exited; its last output may still be on its way through the reader.
    let got = wait_for_output(&a_out, &two);
    assert!(got, "{}", text(&a_out));

    // Viewer B, attached all along, saw the answer to A's line too.
    drop(b_in);
    let status = b.wait().expect("viewer B");
    let mut err = String::new();
    b.stderr.take().unwrap().read_to_string(&mut err).ok();
    assert!(
        status.success(),
        "viewer B sees A's answer: {err}\n{}",
        text(&b_out)
    );
    // The process has exited; its last output may still be on its way through the reader.
    let got = wait_for_output(&b_out, &two);
    assert!(got, "{}", text(&b_out));

    // The console is captured as before (vm logs).
    let logs = run_cli(&a1, &["vm", "logs", "con"]);
    assert!(has_line(&String::from_utf8_lossy(&logs.stdout), &two));

    // Clear errors: an unknown VM, and a stopped one.
    let out = run_cli(&a1, &["vm", "console", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VM 'nope' not found"), "{err}");

    json(&a1, &["vm", "stop", "con"]);
    c.wait_vm(1, "con", "stopped", BOOT, |v| v["state"] == "stopped");
    let out = run_cli(&a1, &["vm", "console", "con"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not running"), "{err}");
}
