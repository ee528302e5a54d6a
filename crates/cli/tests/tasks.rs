//! One-shot tasks end to end: real daemons (process driver) driven through the CLI.

mod common;

use std::time::Duration;

use common::{json, run_cli, try_json, wait_for, Cluster, DEADLINE, FAST_LIVENESS};
use serde_json::Value;

fn submit(addr: &str, args: &[&str]) -> String {
    let mut a = vec!["task", "submit"];
    a.extend_from_slice(args);
    let t = json(addr, &a);
    t["id"].as_str().expect("task id").to_string()
}

fn wait_end(addr: &str, id: &str, deadline: Duration) -> Value {
    wait_for(&format!("task {id} to end"), deadline, || {
        let t = try_json(addr, &["task", "status", id])?;
        (!matches!(t["state"].as_str()?, "pending" | "running")).then_some(t)
    })
}

fn logs(addr: &str, id: &str) -> String {
    let out = run_cli(addr, &["task", "logs", id]);
    assert!(
        out.status.success(),
        "task logs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn tasks_on_one_node() {
    let c = Cluster::start(1, &[]);
    let a = c.addr(1);

    // Success; the plain output is the id alone.
    let out = run_cli(
        &a,
        &["task", "submit", "--", "sh", "-c", "echo hi; echo err >&2"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(ok.len(), 36, "a uuid: {ok}");
    let w = run_cli(&a, &["task", "wait", &ok, "--timeout", "60"]);
    assert!(
        w.status.success(),
        "task wait: {}",
        String::from_utf8_lossy(&w.stderr)
    );
    let t = json(&a, &["task", "status", &ok]);
    assert_eq!(t["state"], "succeeded");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["node_id"], 1);
    assert_eq!(t["attempt"], 1);
    assert!(t["duration_ms"].as_u64().is_some());
    let l = logs(&a, &ok);
    assert!(l.contains("hi") && l.contains("err"), "logs: {l}");

    // Non-zero exit; env vars reach the process.
    let bad = submit(&a, &["--env", "CODE=3", "--", "sh", "-c", "exit $CODE"]);
    let w = run_cli(&a, &["task", "wait", &bad, "--timeout", "60"]);
    assert!(!w.status.success());
    let err = String::from_utf8_lossy(&w.stderr);
    assert!(
        err.contains("failed") && err.contains("exit code 3"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let t = json(&a, &["task", "status", &bad]);
    assert_eq!(t["state"], "failed");
    assert_eq!(t["exit_code"], 3);

    // Timeout: the process (group) is killed.
    let slow = submit(
        &a,
        &[
            "--timeout",
            "1",
            "--",
            "sh",
            "-c",
            "echo $$ > pid; sleep 30",
        ],
    );
    let t = wait_end(&a, &slow, DEADLINE);
    assert_eq!(t["state"], "timed_out");
    assert!(t["exit_code"].is_null());
    let pid: u32 = std::fs::read_to_string(
        c.node(1)
            .dir
            .join("tasks")
            .join(&slow)
            .join("work")
            .join("pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    wait_for(
        "the timed-out process to be gone",
        Duration::from_secs(10),
        || (!common::pid_alive(pid)).then_some(()),
    );

    // Cancel a running task.
    let long = submit(&a, &["--", "sh", "-c", "echo $$ > pid; sleep 60"]);
    wait_for("the long task to run", DEADLINE, || {
        let t = try_json(&a, &["task", "status", &long])?;
        (t["state"] == "running").then_some(())
    });
    let out = run_cli(&a, &["task", "cancel", &long]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = wait_end(&a, &long, DEADLINE);
    assert_eq!(t["state"], "cancelled");
    let pid: u32 = std::fs::read_to_string(
        c.node(1)
            .dir
            .join("tasks")
            .join(&long)
            .join("work")
            .join("pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    wait_for(
        "the cancelled process to be gone",
        Duration::from_secs(10),
        || (!common::pid_alive(pid)).then_some(()),
    );
    let w = run_cli(&a, &["task", "wait", &long, "--timeout", "5"]);
    assert!(!w.status.success());
    assert!(String::from_utf8_lossy(&w.stderr).contains("cancelled"));
    // Cancelling a finished task is refused.
    let again = run_cli(&a, &["task", "cancel", &long]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));

    // Large output: the last 64 KiB are kept, behind a marker.
    let big = submit(&a, &["--", "sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo \"line $i padding padding padding padding\"; i=$((i+1)); done; echo LAST-LINE"]);
    let t = wait_end(&a, &big, DEADLINE);
    assert_eq!(t["state"], "succeeded");
    let l = logs(&a, &big);
    assert!(
        l.starts_with("[... "),
        "marker first: {}",
        &l[..60.min(l.len())]
    );
    assert!(l.lines().next().unwrap().contains("bytes truncated"));
    assert!(l.trim_end().ends_with("LAST-LINE"));
    let body = l.split_once('\n').unwrap().1;
    assert_eq!(body.len(), 64 * 1024);

    // Lists and filters.
    let all = json(&a, &["task", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 5);
    let failed = json(&a, &["task", "list", "--state", "failed"]);
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["id"], bad.as_str());

    // Bad input: one clear line each.
    for (args, needle) in [
        (vec!["task", "submit", "--"], "empty command"),
        (vec!["task", "submit"], "empty command"),
        (vec!["task", "status", "no-such-task"], "not found"),
        (vec!["task", "logs", "no-such-task"], "not found"),
        (
            vec!["task", "submit", "--timeout", "0", "--", "true"],
            "timeout",
        ),
        (vec!["task", "submit", "--node", "9", "--", "true"], "node"),
        (vec!["task", "submit", "--env", "NOEQ", "--", "true"], "K"),
        (
            vec!["task", "list", "--state", "weird"],
            "invalid value 'weird' for '--state",
        ),
    ] {
        let out = run_cli(&a, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
        assert!(out.stdout.is_empty());
    }
    // A command that does not exist fails with a reason.
    let missing = submit(&a, &["--", "/no/such/program"]);
    let t = wait_end(&a, &missing, DEADLINE);
    assert_eq!(t["state"], "failed");
    assert!(t["reason"].as_str().unwrap().contains("cannot start"));
}

#[test]
fn pending_tasks_wait_for_capacity() {
    let c = Cluster::start(1, &["--vcpus", "2"]);
    let a = c.addr(1);
    wait_for("node 1 to register", DEADLINE, || {
        (try_json(&a, &["node", "list"])?.as_array()?.len() == 1).then_some(())
    });
    let first = submit(&a, &["--cpus", "2", "--", "sh", "-c", "sleep 2"]);
    let second = submit(&a, &["--cpus", "1", "--", "true"]);
    let t = json(&a, &["task", "status", &second]);
    assert_eq!(t["state"], "pending");
    assert!(t["node_id"].is_null());
    assert!(t["reason"].as_str().unwrap().contains("waiting"));
    let nodes = json(&a, &["node", "list"]);
    assert_eq!(nodes[0]["allocated"]["vcpus"], 2);
    let t = wait_end(&a, &second, DEADLINE);
    assert_eq!(t["state"], "succeeded");
    let f = json(&a, &["task", "status", &first]);
    assert_eq!(f["state"], "succeeded");
    assert!(f["finished_ms"].as_u64().unwrap() <= t["started_ms"].as_u64().unwrap() + 50);
    let nodes = json(&a, &["node", "list"]);
    assert_eq!(nodes[0]["allocated"]["vcpus"], 0);
}

#[test]
fn node_death_retries_on_another_node_and_the_old_attempt_never_reports() {
    let mut f = FAST_LIVENESS.to_vec();
    f.extend_from_slice(&["--vcpus", "4"]);
    let mut c = Cluster::start(3, &f);
    let leader = c.leader();
    // Keep the leader busy so the task lands on a follower.
    let a = c.addr(leader);
    let hold = submit(
        &a,
        &[
            "--node",
            &leader.to_string(),
            "--cpus",
            "4",
            "--",
            "sleep",
            "60",
        ],
    );
    let id = submit(
        &a,
        &[
            "--",
            "sh",
            "-c",
            "echo attempt $BLIXARD_TASK_ATTEMPT; sleep 6; echo done",
        ],
    );
    let t = wait_for("the task to run", DEADLINE, || {
        let t = try_json(&a, &["task", "status", &id])?;
        (t["state"] == "running").then_some(t)
    });
    let victim = t["node_id"].as_u64().unwrap();
    assert_ne!(victim, leader);
    // The pinned task is on its node; `--node` filters the list.
    assert_eq!(json(&a, &["task", "status", &hold])["node_id"], leader);
    let on_leader = json(&a, &["task", "list", "--node", &leader.to_string()]);
    assert_eq!(on_leader.as_array().unwrap().len(), 1);
    assert_eq!(on_leader[0]["id"], hold.as_str());
    assert_eq!(t["attempt"], 1);
    let first_epoch = t["epoch"].as_u64().unwrap();
    c.kill9(victim);

    let t = wait_end(&a, &id, Duration::from_secs(90));
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["attempt"], 2);
    let second = t["node_id"].as_u64().unwrap();
    assert_ne!(second, victim);
    assert!(t["epoch"].as_u64().unwrap() > first_epoch);
    assert!(logs(&a, &id).contains("attempt 2"));

    // The dead node returns: it must not report a result for its old attempt.
    c.restart(victim);
    wait_for("the victim to be up again", DEADLINE, || {
        let nodes = try_json(&a, &["node", "list"])?;
        nodes
            .as_array()?
            .iter()
            .any(|n| n["id"] == victim && n["state"] == "up")
            .then_some(())
    });
    // Once it has dealt with its old attempt (marker closed, below), the record must still be
    // the successful attempt: it did not report a result for an attempt it no longer owns.
    let marker: Value = wait_for("the old attempt's marker to be closed", DEADLINE, || {
        let m: Value = serde_json::from_slice(
            &std::fs::read(
                c.node(victim)
                    .dir
                    .join("tasks")
                    .join(&id)
                    .join("attempt.json"),
            )
            .ok()?,
        )
        .ok()?;
        (m["done"] == true).then_some(m)
    });
    assert_eq!(marker["epoch"].as_u64(), Some(first_epoch));
    if let Some(pid) = marker["pid"].as_u64() {
        wait_for("the old attempt's process to be gone", DEADLINE, || {
            (!common::pid_alive(u32::try_from(pid).expect("a pid"))).then_some(())
        });
    }

    let after = json(&a, &["task", "status", &id]);
    assert_eq!(after, t, "the final record stays the successful attempt");

    // Every node answers with the same object.
    c.wait_converged();
    for n in c.live() {
        assert_eq!(
            json(&c.addr(n), &["task", "status", &id]),
            after,
            "via node {n}"
        );
        assert!(logs(&c.addr(n), &id).contains("done"), "logs via node {n}");
    }
    let out = run_cli(&a, &["task", "cancel", &hold]);
    assert!(out.status.success());
    assert_eq!(wait_end(&a, &hold, DEADLINE)["state"], "cancelled");
}

#[test]
fn a_daemon_restart_mid_task_reports_the_attempt_failed_and_never_reruns_it() {
    let mut c = Cluster::start(1, &[]);
    let a = c.addr(1);
    wait_for("node 1 to register", DEADLINE, || {
        (try_json(&a, &["node", "list"])?.as_array()?.len() == 1).then_some(())
    });
    let id = submit(
        &a,
        &[
            "--",
            "sh",
            "-c",
            "echo $$ > pid; echo started >> runs; sleep 60",
        ],
    );
    wait_for("the task to run", DEADLINE, || {
        let t = try_json(&a, &["task", "status", &id])?;
        (t["state"] == "running").then_some(())
    });
    let dir = c.node(1).dir.join("tasks").join(&id).join("work");
    let pid: u32 = wait_for("the pid file", DEADLINE, || {
        std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    c.kill9(1);
    c.restart(1);
    let t = wait_end(&a, &id, DEADLINE);
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["attempt"], 1);
    assert!(t["reason"].as_str().unwrap().contains("restarted"), "{t}");
    wait_for(
        "the orphaned process to be gone",
        Duration::from_secs(10),
        || (!common::pid_alive(pid)).then_some(()),
    );
    // A later task running to completion proves the runner made passes since: none reran it.
    let probe = submit(&a, &["--", "true"]);
    assert_eq!(wait_end(&a, &probe, DEADLINE)["state"], "succeeded");
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "the attempt ran once");
}

/// The node running a task stops answering (`kill -9`, frozen with SIGSTOP, or stopped
/// gracefully, which leaves workloads running to be adopted on restart): the task's
/// supervisor fences it when the lease expires, before the leader (after lease + grace)
/// retries it elsewhere. The workloads' own start/stop records show no overlap.
#[derive(PartialEq, Debug)]
enum Loss {
    Kill,
    Freeze,
    GracefulStop,
}

fn a_lost_node_s_task_stops_before_its_retry_starts(loss: Loss) {
    let freeze = loss == Loss::Freeze;
    let mut f = FAST_LIVENESS.to_vec();
    f.extend_from_slice(&["--vcpus", "4"]);
    let mut c = Cluster::start(3, &f);
    let leader = c.leader();
    let a = c.addr(leader);
    // Keep the leader busy so the task lands on a follower.
    let hold = submit(
        &a,
        &[
            "--node",
            &leader.to_string(),
            "--cpus",
            "4",
            "--",
            "sleep",
            "120",
        ],
    );
    // The first attempt would run for a minute: only fencing can end it early.
    let id = submit(&a, &["--timeout", "300", "--", "sh", "-c", "echo attempt $BLIXARD_TASK_ATTEMPT; if [ $BLIXARD_TASK_ATTEMPT = 1 ]; then sleep 60; fi; echo done"]);
    let t = wait_for("the task to run", DEADLINE, || {
        let t = try_json(&a, &["task", "status", &id])?;
        (t["state"] == "running").then_some(t)
    });
    let victim = t["node_id"].as_u64().unwrap();
    assert_ne!(victim, leader);
    let first_epoch = t["epoch"].as_u64().unwrap();
    let marker = c
        .node(victim)
        .dir
        .join("tasks")
        .join(&id)
        .join("attempt.json");
    let pid = wait_for("the first attempt's pid", DEADLINE, || {
        let m: Value = serde_json::from_slice(&std::fs::read(&marker).ok()?).ok()?;
        m["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    });
    match loss {
        Loss::Kill => c.kill9(victim),
        Loss::Freeze => c.signal(victim, "-STOP"),
        Loss::GracefulStop => c.stop(victim),
    }
    // Fenced by its supervisor, with nobody left to tell it.
    let run = c.node(victim).dir.join("tasks").join(&id).join("run");
    wait_for("the first attempt to be fenced", DEADLINE, || {
        (!common::pid_alive(pid) && run.join("exit_code").exists()).then_some(())
    });
    let fenced = run.join("fenced");
    let why =
        std::fs::read_to_string(&fenced).expect("the supervisor recorded why it fenced the task");
    assert!(why.contains("expired"), "{why}");

    let t = wait_end(&a, &id, Duration::from_secs(90));
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["attempt"], 2);
    assert_ne!(t["node_id"].as_u64(), Some(victim));
    assert!(t["epoch"].as_u64().unwrap() > first_epoch);
    // Both attempts left their records; they never overlapped.
    let runs = wait_for("both attempts' start and stop records", DEADLINE, || {
        let text = std::fs::read_to_string(c.events_path()).ok()?;
        let mine: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some(id.as_str()))
            .collect();
        (mine.iter().filter(|l| l.starts_with("stop ")).count() == 2).then_some(mine.len())
    });
    assert_eq!(runs, 4, "one start and one stop per attempt");
    c.assert_never_ran_twice();
    let text = std::fs::read_to_string(c.events_path()).unwrap();
    let at = |kind: &str, epoch: u64| {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[0] == kind && f[2] == id && f[3].parse() == Ok(epoch))
            .map(|f| f[1].parse::<u64>().unwrap())
            .unwrap()
    };
    let gap = at("start", t["epoch"].as_u64().unwrap()) as i64 - at("stop", first_epoch) as i64;
    eprintln!("fenced {gap} ms before the retry started ({loss:?})");

    if freeze {
        // Woken up, the node learns the attempt is no longer its own: no result from it.
        c.signal(victim, "-CONT");
        let m: Value = wait_for("the old attempt's marker to be closed", DEADLINE, || {
            let m: Value = serde_json::from_slice(&std::fs::read(&marker).ok()?).ok()?;
            (m["done"] == true).then_some(m)
        });
        assert_eq!(m["epoch"].as_u64(), Some(first_epoch));
        assert_eq!(
            json(&a, &["task", "status", &id]),
            t,
            "the record stays the successful attempt"
        );
    }
    let out = run_cli(&a, &["task", "cancel", &hold]);
    assert!(out.status.success());
    assert_eq!(wait_end(&a, &hold, DEADLINE)["state"], "cancelled");
    c.assert_never_ran_twice();
}

#[test]
fn a_killed_daemon_s_task_is_fenced_before_its_retry_starts() {
    a_lost_node_s_task_stops_before_its_retry_starts(Loss::Kill);
}

#[test]
fn a_stopped_daemon_s_task_is_fenced_before_its_retry_starts() {
    a_lost_node_s_task_stops_before_its_retry_starts(Loss::GracefulStop);
}

#[test]
fn a_frozen_daemon_s_task_is_fenced_before_its_retry_starts() {
    a_lost_node_s_task_stops_before_its_retry_starts(Loss::Freeze);
}
