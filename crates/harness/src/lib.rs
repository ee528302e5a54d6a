//! Jepsen-style fault-injection harness for blixard.
//!
//! Real `blixard` daemons run in their own network namespaces ([`net`], [`cluster`]); concurrent
//! clients drive the VM registry over gRPC and record a history ([`client`], [`history`]); a
//! nemesis follows a schedule generated up front from a seed ([`schedule`]); checkers judge the
//! history and the VM start/stop events ([`lin`], [`check`]). [`run::run`] ties it together.
//! See `docs/fault-testing.md`.

pub mod check;
pub mod client;
pub mod cluster;
pub mod history;
pub mod lin;
pub mod net;
pub mod run;
pub mod schedule;

use std::path::PathBuf;

/// The `blixard` binary to test: `$BLIXARD_BIN`, else `<target dir>/debug/blixard`.
pub fn default_bin() -> PathBuf {
    if let Ok(b) = std::env::var("BLIXARD_BIN") {
        return PathBuf::from(b);
    }
    target_dir().join("debug").join("blixard")
}

/// `$CARGO_TARGET_DIR`, else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// Builds `blixard` (optionally with extra features) and copies the binary to
/// `<target>/harness-bins/blixard[-<features>]` so two variants can coexist.
pub fn build_blixard(features: Option<&str>) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "blixard"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    let status = cmd.status()?;
    anyhow::ensure!(
        status.success(),
        "cargo build -p blixard {features:?} failed"
    );
    let dir = target_dir().join("harness-bins");
    std::fs::create_dir_all(&dir)?;
    let dst = dir.join(match features {
        Some(f) => format!("blixard-{f}"),
        None => "blixard".into(),
    });
    // copy to a temp name then rename: a running daemon may still use the old file
    let tmp = dst.with_extension("tmp");
    std::fs::copy(target_dir().join("debug").join("blixard"), &tmp)?;
    std::fs::rename(&tmp, &dst)?;
    if features.is_some() {
        // put the default build back at <target>/debug/blixard (cached: only a copy)
        build_blixard(None)?;
    }
    Ok(dst)
}
