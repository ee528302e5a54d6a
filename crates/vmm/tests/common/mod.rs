//! Helpers shared by the integration tests: condition polling with deadlines and a guard
//! that kills every VM process under a run root when the test ends (even by panic).

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blixard_vmm::{Observed, RunState, VmDriver};
use tokio::time::Instant;

/// The supervisor binary built by this crate.
pub fn supervisor() -> Vec<String> {
    vec![env!("CARGO_BIN_EXE_blixard-supervise").to_string()]
}

/// Kills (SIGKILL) every recorded VM pid under `run_root` on drop.
pub struct KillGuard {
    pub run_root: PathBuf,
}

impl KillGuard {
    pub fn new(run_root: &Path) -> Self {
        Self {
            run_root: run_root.to_path_buf(),
        }
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.run_root) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("pid")) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<i32>() else {
                continue;
            };
            if std::fs::metadata(format!("/proc/{pid}")).is_ok() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Poll `check` every 50 ms until it returns `Some`, or panic after `within` with `what`.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The observation of `name`, if listed.
pub async fn observe(driver: &dyn VmDriver, name: &str) -> Option<Observed> {
    driver
        .list()
        .await
        .expect("list")
        .into_iter()
        .find(|o| o.name == name)
}

/// Wait until `name` is observed in a state accepted by `pred`; returns the observation.
pub async fn wait_state(
    driver: &dyn VmDriver,
    name: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&RunState) -> bool,
) -> Observed {
    let deadline = Instant::now() + within;
    loop {
        let last = observe(driver, name).await;
        if let Some(o) = &last {
            if pred(&o.state) {
                return o.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {name} to be {what}; last seen: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}

pub fn pid_alive(pid: u32) -> bool {
    blixard_vmm::rundir::process_starttime(pid).is_some()
}
