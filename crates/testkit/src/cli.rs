//! Driving a cluster through the real CLI: `run_cli` with the admin credential of the cluster
//! an address belongs to, `--json` helpers, polling with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::bin;

/// Generous: the CI machine has two cores shared by parallel tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Credentials by node address (addresses are unique while their node runs).
static CREDENTIALS: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<String, PathBuf>>,
> = std::sync::OnceLock::new();

pub fn register_credentials(addr: &str, path: &Path) {
    let m = CREDENTIALS.get_or_init(Default::default);
    m.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr.to_string(), path.to_path_buf());
}

/// The credential file of the cluster that node `addr` belongs to.
pub fn credentials_for(addr: &str) -> Option<PathBuf> {
    CREDENTIALS
        .get()?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(addr)
        .cloned()
}

/// Runs the CLI against `addr` with that cluster's admin credential (when known).
pub fn run_cli(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("--addr").arg(addr);
    if let Some(c) = credentials_for(addr) {
        cmd.arg("--credentials").arg(c);
    }
    cmd.args(args)
        .env_remove("BLIXARD_ADDR")
        .env_remove("BLIXARD_CREDENTIALS")
        .output()
        .expect("run blixard cli")
}

/// Runs the CLI against `addr` with the given credentials file (or none).
pub fn run_cli_with(addr: &str, credentials: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.arg("--addr").arg(addr);
    if let Some(c) = credentials {
        cmd.arg("--credentials").arg(c);
    }
    cmd.args(args)
        .env_remove("BLIXARD_ADDR")
        .env_remove("BLIXARD_CREDENTIALS")
        .output()
        .expect("run blixard cli")
}

/// A fresh join token from the member at `seed` (retried while the cluster elects a leader).
pub fn join_token(seed: &str) -> String {
    wait_for("a join token", DEADLINE, || {
        try_json(seed, &["cluster", "token", "create", "--ttl", "600"])?["token"]
            .as_str()
            .map(String::from)
    })
}

/// Runs a `--json` command that must succeed and returns its document.
pub fn json(addr: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = run_cli(addr, &a);
    assert!(
        out.status.success(),
        "blixard {args:?} via {addr} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of {args:?} is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Like [`json`] but returns `None` on failure (for polling).
pub fn try_json(addr: &str, args: &[&str]) -> Option<Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = run_cli(addr, &a);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}
