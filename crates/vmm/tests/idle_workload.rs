//! `idle_workload` under the ProcessDriver, the way the blixard binary's hidden subcommand
//! runs it: this test executable re-runs itself as the workload (selected by an env var).

mod common;

use std::time::Duration;

use blixard_vmm::{idle_workload, ProcessDriver, RunState, VmConfig, VmDriver};
use common::{observe, wait_state, KillGuard};

const AS_WORKLOAD: &str = "BLIXARD_TEST_RUN_IDLE_WORKLOAD";

/// The workload entry point, run (with `--ignored`) only by the test below.
#[tokio::test]
#[ignore = "entry point of the workload started by idle_workload_is_ready_and_exits_0_on_sigterm"]
async fn idle_entry() {
    assert!(
        std::env::var_os(AS_WORKLOAD).is_some(),
        "only meant to run as the test workload"
    );
    idle_workload().await.expect("idle workload");
}

#[tokio::test]
async fn idle_workload_is_ready_and_exits_0_on_sigterm() {
    let exe = std::env::current_exe().expect("current exe");
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let command = vec![
        exe.to_string_lossy().into_owned(),
        "--exact".into(),
        "idle_entry".into(),
        "--ignored".into(),
        "--nocapture".into(),
    ];
    let driver = ProcessDriver::new(root.path(), command).with_env(AS_WORKLOAD, "1");
    driver
        .start(&VmConfig::new("idle"), 1)
        .await
        .expect("start");
    wait_state(&driver, "idle", Duration::from_secs(20), "Running", |s| {
        *s == RunState::Running
    })
    .await;
    driver
        .stop("idle", Duration::from_secs(10))
        .await
        .expect("stop");
    let stopped = observe(&driver, "idle").await.expect("listed");
    assert_eq!(
        stopped.state,
        RunState::Stopped { exit_code: Some(0) },
        "graceful exit on SIGTERM"
    );
}
