//! Run directories and detached supervision, shared by both drivers.
//!
//! Everything a driver knows about a VM lives in `<run_root>/<name>/`:
//!
//! | file | written by | meaning |
//! |---|---|---|
//! | `meta.json` | driver, at start | [`Meta`]: name, epoch, pid, driver kind, config, start time |
//! | `pid` | supervisor, right after spawning | the VMM / workload pid |
//! | `supervisor.pid` | supervisor | the supervisor (only to know if an exit status may still come) |
//! | `console.log` | guest serial (qemu) or workload stdout+stderr | what the VM printed |
//! | `console.log.1` | driver, at restart | the previous run's console (last 1 MiB) |
//! | `vmm.log` | qemu's own stdout+stderr | QEMU errors (qemu driver only) |
//! | `qmp.sock` | qemu | QMP control socket (qemu driver only) |
//! | `exit_code` | supervisor, after the process was reaped | its exit status (`128+n`: signal n) |
//! | `fenced` | supervisor, when it killed the VM for want of a valid lease | why |
//! | `exec_failed` | supervisor's trampoline | the program could not be executed: why |
//! | `stop_requested` | driver, before stopping | the exit was asked for: `Stopped`, not `Failed` |
//! | `ready` | driver, when it first sees the ready line | cache of a fact that is on disk anyway |
//!
//! # Supervision
//!
//! Every VMM process runs under its own supervisor, the hidden `blixard supervise`
//! subcommand ([`crate::supervisor`]), launched with `setsid -f`: it forks into a new session
//! and returns at once, so the supervisor is re-parented away from the daemon and survives it.
//! The supervisor holds the program as its direct child (which dies with it), records its pid,
//! waits for it and writes `exit_code`; it fences the program on the node's lease
//! ([`LEASE_FILE_ENV`]). A daemon started later reads the same files; identity of a pid is
//! checked against the process start time and the host's boot id recorded in `meta.json`, so
//! a recycled pid (for instance after a host reboot) is never mistaken for the VM.
//!
//! When `BLIXARD_EVENTS_FILE` is set in the supervisor's environment it appends
//! `start <unix_ms> <name> <epoch>` before the program starts and `stop <unix_ms> <name>
//! <epoch>` after it exited (even when it was SIGKILLed): the fault tests use this to prove
//! that a VM never runs twice. See [`read_events`].
//!
//! # Where things are
//!
//! - this file: the file names above, [`Meta`], and [`RunDir`] (one VM's directory: its
//!   files, its liveness verdict, why it ended) with [`scan`];
//! - `lifecycle`: start, pid recording, stop and removal, shared by both drivers;
//! - `host`: process identity (pid + start time + boot id), signals, the clock;
//! - `files`: log tails, bounded line search, atomic writes;
//! - `events`: the start/stop records of the events file;
//! - `tests`: unit tests of the above.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{DriverError, VmConfig};

mod events;
mod files;
mod host;
mod lifecycle;

pub use events::{read_events, Event, EventKind};
pub(crate) use files::write_atomic;
pub use files::{file_contains_line, tail_lines};
pub use host::{boot_id, describe_exit, end_orphaned_group, is_alive, process_starttime, unix_ms};
pub(crate) use host::{signal, wait_dead};
pub(crate) use lifecycle::{prepare_start, record_pid, remove, stop_with};

pub const META: &str = "meta.json";
pub const PID: &str = "pid";
pub const CONSOLE: &str = "console.log";
/// The console input of a VM (a FIFO the VM's process reads as its stdin; qemu only).
pub const CONSOLE_IN: &str = "console.in";
pub const VMM_LOG: &str = "vmm.log";
pub const QMP_SOCKET: &str = "qmp.sock";
pub const EXIT_CODE: &str = "exit_code";
pub const STOP_REQUESTED: &str = "stop_requested";
pub const READY: &str = "ready";
pub const SUPERVISOR_PID: &str = "supervisor.pid";
/// The previous run's console, kept when a VM is started again.
pub const PREVIOUS_CONSOLE: &str = "console.log.1";
/// How much of the previous console is kept.
pub(super) const PREVIOUS_CONSOLE_LIMIT: u64 = 1 << 20;

/// Environment variable naming the events file (see the module docs).
pub const EVENTS_FILE_ENV: &str = "BLIXARD_EVENTS_FILE";

/// How much of a console is scanned for the ready line.
pub(super) const READY_SCAN_LIMIT: u64 = 16 << 20;
/// How many console lines a failure reason carries.
pub const TAIL_LINES: usize = 20;
/// A VM whose pid was never recorded is `Starting` for this long, then `Failed`.
const PID_GRACE: Duration = Duration::from_secs(10);

/// Environment variable naming the node's lease file. When set, each workload's supervisor
/// kills the workload as soon as it cannot prove that lease valid (see
/// [`crate::supervisor::check_lease`]): a node cut off from its cluster (or whose daemon is
/// stopped or dead) fences its own workloads before the cluster may run them elsewhere.
pub const LEASE_FILE_ENV: &str = "BLIXARD_LEASE_FILE";
/// Written by the supervisor when it fenced the workload: why.
pub const FENCED: &str = "fenced";

/// `meta.json`: what was started, by whom, and which process it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub name: String,
    pub epoch: u64,
    /// Set once the supervisor recorded it.
    pub pid: Option<u32>,
    /// Start time of `pid` (field 22 of `/proc/<pid>/stat`), against pid reuse.
    pub pid_starttime: Option<u64>,
    /// [`crate::VmDriver::kind`] of the driver that started it.
    pub driver: String,
    pub config: VmConfig,
    pub started_at_unix_ms: u64,
    /// `/proc/sys/kernel/random/boot_id` at start: after a host reboot no pid is trusted.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// Where the process of a VM stands, from disk and `/proc` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Launched but its pid is not recorded yet.
    Launching,
    /// The process is alive.
    Alive { pid: u32 },
    /// The process is gone; `code` is its exit status when the supervisor recorded it.
    Exited { pid: Option<u32>, code: Option<i32> },
}

/// One VM's run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    pub fn new(run_root: &Path, name: &str) -> Self {
        Self {
            dir: run_root.join(name),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// `Ok(None)` when there is no `meta.json` (not a VM directory, or removed meanwhile).
    pub fn read_meta(&self) -> Result<Option<Meta>, DriverError> {
        let path = self.path(META);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| DriverError::CorruptRunDir {
                        dir: self.dir.clone(),
                        why: format!("{META}: {e}"),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::io("reading", &path, e)),
        }
    }

    /// Atomic (write to a temporary file, then rename).
    pub(crate) fn write_meta(&self, meta: &Meta) -> Result<(), DriverError> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| DriverError::CorruptRunDir {
            dir: self.dir.clone(),
            why: format!("encoding {META}: {e}"),
        })?;
        write_atomic(&self.path(META), &bytes)
    }

    pub(crate) fn create(&self) -> Result<(), DriverError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| DriverError::io("creating run directory", &self.dir, e))
    }

    pub(crate) fn remove(&self) -> Result<(), DriverError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io("removing run directory", &self.dir, e)),
        }
    }

    fn read_number<T: std::str::FromStr>(&self, file: &str) -> Option<T> {
        fs::read_to_string(self.path(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn pid_file(&self) -> Option<u32> {
        self.read_number(PID)
    }

    pub fn exit_code(&self) -> Option<i32> {
        self.read_number(EXIT_CODE)
    }

    pub fn stop_requested(&self) -> bool {
        self.path(STOP_REQUESTED).exists()
    }

    pub(crate) fn mark_stop_requested(&self) -> Result<(), DriverError> {
        let path = self.path(STOP_REQUESTED);
        fs::write(&path, b"").map_err(|e| DriverError::io("writing", &path, e))
    }

    /// True once `console` (a file in this directory) contains `line`; cached in `ready`.
    pub(crate) fn is_ready(&self, console: &str, line: &str) -> bool {
        let marker = self.path(READY);
        if marker.exists() {
            return true;
        }
        if file_contains_line(&self.path(console), line) {
            if let Err(e) = fs::write(&marker, b"") {
                tracing::warn!(path = %marker.display(), error = %e, "cannot write ready marker");
            }
            return true;
        }
        false
    }

    /// Pid and its start time: from `meta.json`, or from the `pid` file (then recorded into
    /// `meta.json`, so the start time pins the identity from now on).
    pub(crate) fn resolve_pid(&self, meta: &mut Meta) -> Option<(u32, Option<u64>)> {
        if let Some(pid) = meta.pid {
            return Some((pid, meta.pid_starttime));
        }
        let pid = self.pid_file()?;
        let starttime = process_starttime(pid);
        if starttime.is_some() && self.exit_code().is_none() {
            meta.pid = Some(pid);
            meta.pid_starttime = starttime;
            if let Err(e) = self.write_meta(meta) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot record pid in meta.json");
            }
        }
        Some((pid, starttime))
    }

    /// Where the VM's process stands.
    pub(crate) async fn liveness(&self, meta: &mut Meta) -> Liveness {
        if let Some(code) = self.exit_code() {
            return Liveness::Exited {
                pid: meta.pid.or_else(|| self.pid_file()),
                code: Some(code),
            };
        }
        if meta.boot_id.is_some() && meta.boot_id != boot_id() {
            return Liveness::Exited {
                pid: meta.pid,
                code: None,
            };
        }
        match self.resolve_pid(meta) {
            Some((pid, starttime)) if is_alive(pid, starttime) => Liveness::Alive { pid },
            Some((pid, _)) => {
                // The supervisor writes exit_code right after the process is reaped: if it is
                // still around, give it a moment before calling the status unknown.
                let supervisor_alive = self
                    .read_number::<u32>(SUPERVISOR_PID)
                    .is_some_and(|p| is_alive(p, None));
                if !supervisor_alive {
                    // The supervisor was killed (its workload died with it, by PDEATHSIG):
                    // what the workload forked may still run in its process group.
                    end_orphaned_group(pid);
                    return Liveness::Exited {
                        pid: Some(pid),
                        code: self.exit_code(),
                    };
                }
                match self.wait_exit_code(Duration::from_millis(500)).await {
                    Some(code) => Liveness::Exited {
                        pid: Some(pid),
                        code: Some(code),
                    },
                    // The supervisor is still ending the workload (killing what is left of its
                    // process group, writing its stop record): not stopped yet. Reporting it
                    // stopped now would let it start elsewhere while part of it still runs.
                    None => Liveness::Alive { pid },
                }
            }
            None if unix_ms().saturating_sub(meta.started_at_unix_ms)
                < u64::try_from(PID_GRACE.as_millis()).unwrap_or(u64::MAX) =>
            {
                Liveness::Launching
            }
            None => Liveness::Exited {
                pid: None,
                code: self.exit_code(),
            },
        }
    }

    pub(crate) async fn wait_exit_code(&self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(code) = self.exit_code() {
                return Some(code);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The state of an exited VM: `Stopped` if the stop was requested, else `Failed` with the
    /// exit status and the last lines of the given logs.
    pub(crate) fn exited_state(&self, code: Option<i32>, logs: &[&str]) -> crate::RunState {
        if self.stop_requested() {
            return crate::RunState::Stopped { exit_code: code };
        }
        let fenced = std::fs::read_to_string(self.path(FENCED))
            .or_else(|_| std::fs::read_to_string(self.path(crate::supervisor::EXEC_FAILED)))
            .ok();
        let mut reason = match (code, fenced) {
            (_, Some(why)) => why.trim().to_string(),
            (Some(code), None) => format!("exited unexpectedly: {}", describe_exit(code)),
            (None, None) => {
                "the process is gone without a recorded exit status (host reboot, or its \
                     supervisor was killed)"
                    .to_string()
            }
        };
        for log in logs {
            let tail = tail_lines(&self.path(log), TAIL_LINES);
            if !tail.is_empty() {
                reason.push_str(&format!("\n--- last lines of {log} ---\n{tail}"));
            }
        }
        crate::RunState::Failed { reason }
    }

    /// Launch `argv` detached under the supervisor (`supervisor`: the command that runs
    /// [`crate::supervisor`], e.g. [`crate::supervisor::default_command`]), output appended to
    /// `out` (a file in this directory). Returns once the supervisor is running (not waiting
    /// for the pid).
    pub(crate) async fn launch(
        &self,
        supervisor: &[String],
        name: &str,
        epoch: u64,
        out: &str,
        argv: &[String],
        envs: &[(String, String)],
    ) -> Result<(), DriverError> {
        let spec = crate::supervisor::Spec::vm(&self.dir, name, epoch, out, argv);
        crate::supervisor::launch(supervisor, &spec, envs).await
    }

    /// Wait until the supervisor recorded the pid, or the process already exited.
    pub(crate) async fn wait_pid(&self, within: Duration) -> Result<u32, Option<i32>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(code) = self.exit_code() {
                return Err(Some(code));
            }
            if let Some(pid) = self.pid_file() {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The run directories under `run_root` (missing root: none).
pub fn scan(run_root: &Path) -> Result<Vec<RunDir>, DriverError> {
    let entries = match fs::read_dir(run_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DriverError::io("listing", run_root, e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DriverError::io("listing", run_root, e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if crate::validate_name(&name).is_ok() && entry.path().is_dir() {
            dirs.push(RunDir::new(run_root, &name));
        }
    }
    dirs.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(dirs)
}

#[cfg(test)]
mod tests;
