//! ProcessDriver end to end: detached workloads, readiness, stop, crash, re-attach, events.

mod common;

use std::time::Duration;

use blixard_vmm::rundir::{read_events, EventKind, EVENTS_FILE_ENV};
use blixard_vmm::{DriverError, ProcessDriver, RunState, VmConfig, VmDriver};
use common::{kill9, observe, pid_alive, wait_state, KillGuard};

const T: Duration = Duration::from_secs(10);

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn idle() -> Vec<String> {
    sh("echo starting; echo BLIXARD-READY; exec sleep 1000")
}

#[tokio::test]
async fn start_running_stop_remove() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let driver = ProcessDriver::new(root.path(), idle()).with_supervisor(common::supervisor());
    let cfg = VmConfig::new("web1");

    driver.start(&cfg, 7).await.expect("start");
    let running = wait_state(&driver, "web1", T, "Running", |s| *s == RunState::Running).await;
    assert_eq!(running.epoch, 7);
    let pid = running.pid.expect("pid");
    assert!(pid_alive(pid));
    let console = std::fs::read_to_string(driver.console_path("web1")).expect("console");
    assert!(console.contains("starting\nBLIXARD-READY"), "{console}");

    // Idempotent start with the same epoch: same process.
    driver.start(&cfg, 7).await.expect("start again");
    assert_eq!(
        observe(&driver, "web1").await.and_then(|o| o.pid),
        Some(pid)
    );
    // Another epoch while alive: refused.
    let err = driver.start(&cfg, 8).await.expect_err("other epoch");
    assert!(
        matches!(
            err,
            DriverError::AlreadyRunning {
                running_epoch: 7,
                requested_epoch: 8,
                ..
            }
        ),
        "{err}"
    );
    // Removing a running VM is refused.
    assert!(matches!(
        driver.remove("web1").await,
        Err(DriverError::StillRunning { .. })
    ));

    driver
        .stop("web1", Duration::from_secs(5))
        .await
        .expect("stop");
    assert!(!pid_alive(pid));
    let stopped = observe(&driver, "web1").await.expect("listed");
    // sleep dies of the SIGTERM: 128 + 15.
    assert_eq!(
        stopped.state,
        RunState::Stopped {
            exit_code: Some(143)
        }
    );
    driver
        .stop("web1", Duration::from_secs(1))
        .await
        .expect("stop is idempotent");
    driver
        .stop("never-existed", Duration::from_secs(1))
        .await
        .expect("stop of unknown is Ok");

    driver.remove("web1").await.expect("remove");
    assert!(!root.path().join("web1").exists());
    assert!(observe(&driver, "web1").await.is_none());
    driver.remove("web1").await.expect("remove is idempotent");
}

#[tokio::test]
async fn kill9_is_failed_with_reason_and_restart_replaces_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let driver = ProcessDriver::new(root.path(), idle()).with_supervisor(common::supervisor());
    let cfg = VmConfig::new("crashy");
    driver.start(&cfg, 1).await.expect("start");
    let pid = wait_state(&driver, "crashy", T, "Running", |s| *s == RunState::Running)
        .await
        .pid
        .expect("pid");

    kill9(pid);
    let failed = wait_state(&driver, "crashy", T, "Failed", |s| {
        matches!(s, RunState::Failed { .. })
    })
    .await;
    let RunState::Failed { reason } = failed.state else {
        unreachable!()
    };
    assert!(
        reason.contains("exit status 137 (killed by SIGKILL)"),
        "{reason}"
    );
    assert!(
        reason.contains("BLIXARD-READY"),
        "reason carries the console tail: {reason}"
    );
    // Stopping a crashed VM is Ok and does not rewrite its failure as a requested stop.
    driver
        .stop("crashy", Duration::from_secs(1))
        .await
        .expect("stop after crash");
    assert!(matches!(
        observe(&driver, "crashy").await.map(|o| o.state),
        Some(RunState::Failed { .. })
    ));

    // A new start (new epoch) replaces the leftovers of the failed one.
    driver.start(&cfg, 2).await.expect("restart");
    let again = wait_state(&driver, "crashy", T, "Running", |s| *s == RunState::Running).await;
    assert_eq!(again.epoch, 2);
    assert_ne!(again.pid, Some(pid));
    driver
        .stop("crashy", Duration::from_secs(5))
        .await
        .expect("stop");
}

#[tokio::test]
async fn a_new_driver_reattaches_to_running_workloads() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let first = ProcessDriver::new(root.path(), idle()).with_supervisor(common::supervisor());
    first.start(&VmConfig::new("a"), 3).await.expect("start a");
    first.start(&VmConfig::new("b"), 4).await.expect("start b");
    let a = wait_state(&first, "a", T, "Running", |s| *s == RunState::Running).await;
    wait_state(&first, "b", T, "Running", |s| *s == RunState::Running).await;
    drop(first);

    // The "restarted daemon": nothing in memory, same run root.
    let second: std::sync::Arc<dyn VmDriver> = std::sync::Arc::new(
        ProcessDriver::new(root.path(), idle()).with_supervisor(common::supervisor()),
    );
    let listed = second.list().await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let a2 = listed.iter().find(|o| o.name == "a").expect("a listed");
    assert_eq!(
        (a2.epoch, a2.pid, &a2.state),
        (3, a.pid, &RunState::Running)
    );
    second
        .stop("a", Duration::from_secs(5))
        .await
        .expect("stop a");
    second
        .stop("b", Duration::from_secs(5))
        .await
        .expect("stop b");
    for o in second.list().await.expect("list") {
        assert!(matches!(o.state, RunState::Stopped { .. }), "{o:?}");
    }
}

#[tokio::test]
async fn workload_that_exits_by_itself_is_failed_with_console_tail() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let driver = ProcessDriver::new(root.path(), sh("echo 'cannot open config' >&2; exit 3"))
        .with_supervisor(common::supervisor());
    // Either the start sees the exit, or list does; both must explain it.
    match driver.start(&VmConfig::new("bad"), 1).await {
        Ok(()) => {}
        Err(DriverError::StartFailed { reason, .. }) => {
            assert!(reason.contains("exit status 3"), "{reason}")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    let failed = wait_state(&driver, "bad", T, "Failed", |s| {
        matches!(s, RunState::Failed { .. })
    })
    .await;
    let RunState::Failed { reason } = failed.state else {
        unreachable!()
    };
    assert!(
        reason.contains("exit status 3") && reason.contains("cannot open config"),
        "{reason}"
    );
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_grace() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    // Ignores SIGTERM (ignored signals survive exec) and never prints the ready line.
    let driver = ProcessDriver::new(root.path(), sh("trap '' TERM; echo armed; exec sleep 1000"))
        .with_supervisor(common::supervisor());
    driver
        .start(&VmConfig::new("stubborn"), 1)
        .await
        .expect("start");
    let starting = wait_state(&driver, "stubborn", T, "Starting", |s| {
        *s == RunState::Starting
    })
    .await;
    // Stop only once the trap is in place (a SIGTERM before it would simply end the shell).
    let console = driver.console_path("stubborn");
    let deadline = std::time::Instant::now() + T;
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("armed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the workload never armed its trap"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    driver
        .stop("stubborn", Duration::from_millis(300))
        .await
        .expect("stop");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!pid_alive(starting.pid.expect("pid")));
    let stopped = observe(&driver, "stubborn").await.expect("listed");
    assert_eq!(
        stopped.state,
        RunState::Stopped {
            exit_code: Some(137)
        }
    );
}

#[tokio::test]
async fn no_ready_line_means_running_while_alive() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let driver = ProcessDriver::new(root.path(), sh("exec sleep 1000"))
        .with_supervisor(common::supervisor());
    let mut cfg = VmConfig::new("plain");
    cfg.ready_line = None;
    driver.start(&cfg, 1).await.expect("start");
    wait_state(&driver, "plain", T, "Running", |s| *s == RunState::Running).await;
    driver
        .stop("plain", Duration::from_secs(5))
        .await
        .expect("stop");
}

#[tokio::test]
async fn events_file_records_start_and_stop_even_on_sigkill() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let events = root.path().join("events.log");
    let driver = ProcessDriver::new(root.path().join("vms"), idle())
        .with_supervisor(common::supervisor())
        .with_env(EVENTS_FILE_ENV, events.to_string_lossy());
    driver
        .start(&VmConfig::new("e1"), 5)
        .await
        .expect("start e1");
    driver
        .start(&VmConfig::new("e2"), 6)
        .await
        .expect("start e2");
    let e2 = wait_state(&driver, "e2", T, "Running", |s| *s == RunState::Running).await;
    driver
        .stop("e1", Duration::from_secs(5))
        .await
        .expect("stop e1");
    kill9(e2.pid.expect("pid"));
    wait_state(&driver, "e2", T, "Failed", |s| {
        matches!(s, RunState::Failed { .. })
    })
    .await;

    let evs = common::wait_for(T, "4 events", || {
        let evs = read_events(&events).expect("read events");
        async move { (evs.len() == 4).then_some(evs) }
    })
    .await;
    for (name, epoch) in [("e1", 5), ("e2", 6)] {
        let mine: Vec<_> = evs.iter().filter(|e| e.name == name).collect();
        assert_eq!(mine.len(), 2, "{evs:?}");
        assert_eq!(
            (mine[0].kind, mine[1].kind),
            (EventKind::Start, EventKind::Stop)
        );
        assert!(mine.iter().all(|e| e.epoch == epoch));
        assert!(mine[0].unix_ms <= mine[1].unix_ms);
    }
}

#[tokio::test]
async fn invalid_configs_are_rejected() {
    let root = tempfile::tempdir().expect("tempdir");
    let driver = ProcessDriver::new(root.path(), idle()).with_supervisor(common::supervisor());
    let mut cfg = VmConfig::new("../etc");
    assert!(matches!(
        driver.validate(&cfg),
        Err(DriverError::InvalidName { .. })
    ));
    cfg.name = "ok".into();
    cfg.vcpus = 0;
    assert!(matches!(
        driver.start(&cfg, 1).await,
        Err(DriverError::InvalidConfig { .. })
    ));
    assert!(matches!(
        driver.stop("a/b", Duration::ZERO).await,
        Err(DriverError::InvalidName { .. })
    ));
}

#[tokio::test]
async fn what_a_workload_forked_dies_when_its_supervisor_is_killed() {
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    // A background child stays in the workload's process group; the workload itself is
    // tied to its supervisor (PDEATHSIG), the child is not.
    let driver = ProcessDriver::new(
        root.path(),
        sh("sleep 1000 & echo $! > forked; exec sleep 1000"),
    )
    .with_supervisor(common::supervisor());
    let mut cfg = VmConfig::new("forks");
    cfg.ready_line = None;
    driver.start(&cfg, 1).await.expect("start");
    let running = wait_state(&driver, "forks", T, "Running", |s| *s == RunState::Running).await;
    let pid = running.pid.expect("pid");
    let dir = root.path().join("forks");
    let forked_file = dir.join("forked");
    let forked: u32 = common::wait_for(T, "the forked child's pid", || {
        let p = std::fs::read_to_string(&forked_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        async move { p }
    })
    .await;
    let sup: u32 = std::fs::read_to_string(dir.join(blixard_vmm::rundir::SUPERVISOR_PID))
        .expect("supervisor pid")
        .trim()
        .parse()
        .expect("number");
    kill9(sup);
    common::wait_for(T, "the workload to die with its supervisor", || {
        let gone = !pid_alive(pid);
        async move { gone.then_some(()) }
    })
    .await;
    // The node's next look at it ends what the workload left behind.
    let seen = wait_state(&driver, "forks", T, "exited", |s| {
        !matches!(s, RunState::Running | RunState::Starting)
    })
    .await;
    assert_eq!(seen.pid, Some(pid));
    common::wait_for(T, "the forked child to be killed", || {
        let gone = !pid_alive(forked);
        async move { gone.then_some(()) }
    })
    .await;
}
