//! The workload supervisor: one small process per workload (VM or task), written in Rust, run
//! as the hidden `blixard supervise ...` subcommand.
//!
//! # Why a separate process
//!
//! The daemon may die (kill -9), freeze (SIGSTOP) or be cut off from its cluster while its
//! workloads run. Whatever happens to it, a workload must stop before the cluster may run it
//! elsewhere, and a task must never outlive its timeout. The supervisor is launched detached
//! (`setsid -f`: own session, re-parented away from the daemon) and holds the workload as its
//! direct child, so it alone decides when the workload ends and records how it ended:
//!
//! - it writes `supervisor.pid`, the workload's `pid` (right after spawning it: the pid cannot
//!   be reused while the supervisor has not reaped it), and `exit_code` once the workload is
//!   reaped (`128+n`: killed by signal n);
//! - it appends `start`/`stop` records to `$BLIXARD_EVENTS_FILE` (see
//!   [`crate::rundir::read_events`]); `stop` is written after the workload was reaped, even
//!   when it was SIGKILLed;
//! - when `$BLIXARD_LEASE_FILE` is set it reads the node's lease every [`POLL`] and kills the
//!   workload's process group (SIGKILL) as soon as it cannot prove the lease valid: an
//!   unreadable, malformed or revoked lease, one written during another boot of the host, or
//!   one whose deadline has passed ([`check_lease`]). The reason goes to the `fenced` file;
//! - when its run directory disappears, it kills the workload;
//! - for tasks it also enforces the timeout (`timed_out` file), stops the workload when
//!   `stop_requested` appears (cancellation) and keeps only the last bytes of the output.
//!
//! # The lease is on a monotonic clock
//!
//! The lease file holds `blixard-lease-v1 <boot id> <deadline>`, the deadline being
//! CLOCK_BOOTTIME milliseconds (time since boot, including suspend, never stepped). A
//! wall-clock step cannot extend or shorten it, and a file left from another boot of the host
//! is never trusted. The daemon writes it ([`write_lease`]) after each renewal.
//!
//! # The workload dies with its supervisor
//!
//! The workload is started through a trampoline (`blixard supervise --exec PARENT DIR -- argv`)
//! in its own process group: it asks the kernel for SIGKILL when its parent dies
//! (`PR_SET_PDEATHSIG`), checks that its parent is still the supervisor (the supervisor may have
//! died before the request), then `exec`s the workload. The death signal survives `exec`, so a
//! supervisor killed with `kill -9` takes its workload with it. (Descendants the workload forked
//! itself are killed by the supervisor's group kill, but not by the death signal.)
//!
//! # Unprivileged workloads
//!
//! With [`Spec::run_as`] the trampoline drops to that user before `exec` (supplementary groups
//! replaced by the user's primary group, then `setgid`, then `setuid`; checked), and with
//! [`Spec::limits`] it sets hard and soft resource limits first ([`Limits`]: processes of the
//! user, open files, address space, file size, no core dumps). The death signal is requested
//! after the drop (the kernel clears it when credentials change). The supervisor and its run
//! directory stay root's: the workload cannot forge its own ending.
//!
//! # Where things are
//!
//! - this file: the entry point ([`main`]) and the daemon's side ([`launch`],
//!   [`default_command`]);
//! - `spec`: what one supervisor runs ([`Spec`], [`RunAs`], [`Limits`]) and its command line,
//!   both ways;
//! - `run`: the supervisor's loop (spawn, poll, fence, time out, reap, record) and the output
//!   plumbing ([`Tail`]);
//! - `trampoline`: the child that confines itself and `exec`s the workload;
//! - `lease`: the lease file and its verdict ([`write_lease`], [`check_lease`]);
//! - `tests`: argument round trips, lease verdicts, the bounded tail (processes are tested by
//!   the node's and the CLI's tests).

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Duration;

use crate::rundir::EVENTS_FILE_ENV;
use crate::DriverError;

/// How often the supervisor checks the workload, its lease, its timeout and its run directory.
pub const POLL: Duration = Duration::from_millis(100);
/// How often a bounded output is written out while the workload runs.
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Written by the supervisor when it killed a task at its timeout.
pub const TIMED_OUT: &str = "timed_out";
/// Written by the trampoline when the workload could not be executed.
pub const EXEC_FAILED: &str = "exec_failed";
/// First word of a lease file.
pub(super) const LEASE_TAG: &str = "blixard-lease-v1";

mod lease;
mod run;
mod spec;
mod trampoline;

use run::supervise;
use spec::{parse, Mode};
use trampoline::exec;

pub use lease::{boottime_ms, check_lease, write_lease, Lease};
pub use run::Tail;
pub use spec::{Limits, RunAs, Spec};

/// Entry point of `blixard supervise ARGS` (`args` may start with `supervise`). Returns the
/// process exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    match parse(args) {
        Ok(Mode::Supervise(spec)) => supervise(&spec),
        Ok(Mode::Exec {
            parent,
            dir,
            confine,
            argv,
        }) => exec(parent, &dir, &confine, &argv),
        Err(e) => {
            eprintln!("blixard supervise: {e} (this command is started by the blixard daemon, not by hand)");
            2
        }
    }
}

/// The command that runs a supervisor: `[<this executable>, "supervise"]` (the daemon and the
/// CLI are the same `blixard` binary).
pub fn default_command() -> Vec<String> {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "blixard".into());
    vec![exe, "supervise".into()]
}

/// Launches `supervisor` (e.g. [`default_command`]) for `spec`, detached (`setsid -f`: new
/// session, re-parented away from the caller, survives it). `envs` are added to the
/// supervisor's environment (and so the workload's): [`LEASE_FILE_ENV`](crate::rundir::LEASE_FILE_ENV) enables
/// fencing.
/// Returns once the supervisor is launched, not waiting for the workload's pid.
pub async fn launch(
    supervisor: &[String],
    spec: &Spec,
    envs: &[(String, String)],
) -> Result<(), DriverError> {
    let Some((program, pre)) = supervisor.split_first() else {
        return Err(DriverError::StartFailed {
            name: spec.name.clone(),
            reason: "empty supervisor command".into(),
        });
    };
    let mut cmd = tokio::process::Command::new("setsid");
    if spec.run_as.is_some() {
        // A confined workload (a task) gets only what it was given, not the daemon's
        // environment (which may name credentials, tokens or paths of the node).
        cmd.env_clear().env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        // The node's start/stop records stay on for every workload.
        if let Some(f) = std::env::var_os(EVENTS_FILE_ENV) {
            cmd.env(EVENTS_FILE_ENV, f);
        }
    }
    cmd.arg("-f")
        .arg(program)
        .args(pre)
        .args(spec.to_args())
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.dir)
        // No pipes: the detached supervisor would hold them open for its whole life.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = cmd.status().await.map_err(|source| DriverError::Spawn {
        program: "setsid (util-linux)".into(),
        source,
    })?;
    if !status.success() {
        return Err(DriverError::StartFailed {
            name: spec.name.clone(),
            reason: format!("`setsid -f {program} supervise` exited with {status}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
