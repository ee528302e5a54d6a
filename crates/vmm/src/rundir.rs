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

use std::fs;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::{DriverError, VmConfig};

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
const PREVIOUS_CONSOLE_LIMIT: u64 = 1 << 20;

/// Environment variable naming the events file (see the module docs).
pub const EVENTS_FILE_ENV: &str = "BLIXARD_EVENTS_FILE";

/// How much of a console is scanned for the ready line.
const READY_SCAN_LIMIT: u64 = 16 << 20;
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

/// Start time (clock ticks since boot) of a live, non-zombie process; `None` otherwise.
pub fn process_starttime(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // state is field 3; starttime is field 22.
    fields.nth(18)?.parse().ok()
}

/// Alive, not a zombie, and (when known) the same process that was recorded.
pub fn is_alive(pid: u32, starttime: Option<u64>) -> bool {
    match (process_starttime(pid), starttime) {
        (Some(now), Some(recorded)) => now == recorded,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// SIGKILL what is left of the process group of a dead workload whose supervisor is gone too
/// (killed with `kill -9`: the workload died with it, its descendants did not). The group id
/// is the workload's pid. Linux does not hand out a number still in use as a group id, so a
/// group `pgid` without a process `pgid` is the workload's leftovers; a process numbered `pgid`
/// means the number was reused, and nothing is sent. True if leftovers were signalled.
pub fn end_orphaned_group(pgid: u32) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    if raw <= 1 || process_starttime(pgid).is_some() {
        return false;
    }
    let group = nix::unistd::Pid::from_raw(raw);
    if nix::sys::signal::killpg(group, None).is_err() {
        return false;
    }
    tracing::warn!(
        pgid,
        "the workload's supervisor is gone and its process group still has members: killing them"
    );
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).is_ok()
}

/// Send `signal` to `pid` if it is still the recorded process; false if it is gone.
pub(crate) fn signal(pid: u32, starttime: Option<u64>, signal: nix::sys::signal::Signal) -> bool {
    if !is_alive(pid, starttime) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(pid, ?signal, error = %e, "kill failed");
            false
        }
    }
}

/// Wait until `pid` is gone; true if it is.
pub(crate) async fn wait_dead(pid: u32, starttime: Option<u64>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !is_alive(pid, starttime) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `137` -> "exit status 137 (killed by SIGKILL)".
pub fn describe_exit(code: i32) -> String {
    match code {
        126 => return format!("exit status {code} (the program is not executable)"),
        127 => return format!("exit status {code} (program not found: is it installed?)"),
        _ => {}
    }
    if code > 128 {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(code - 128) {
            return format!("exit status {code} (killed by {sig})");
        }
    }
    format!("exit status {code}")
}

/// The last `n` lines of a file (lossy UTF-8), empty if it does not exist.
pub fn tail_lines(path: &Path, n: usize) -> String {
    const MAX: u64 = 16 * 1024;
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(len.saturating_sub(MAX))).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `max` bytes of a file; `None` if it does not exist or is empty.
fn read_last(path: &Path, max: u64) -> Option<Vec<u8>> {
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len == 0 {
        return None;
    }
    file.seek(SeekFrom::Start(len.saturating_sub(max))).ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// True if some line of the file (within its first 16 MiB) contains `needle`.
pub fn file_contains_line(path: &Path, needle: &str) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let reader = io::BufReader::new(file.take(READY_SCAN_LIMIT));
    let needle = needle.as_bytes();
    reader
        .split(b'\n')
        .map_while(Result::ok)
        .any(|line| line.windows(needle.len()).any(|w| w == needle))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| DriverError::io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| DriverError::io("renaming", &tmp, e))
}

/// This boot of the host (Linux), if readable.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Wall-clock milliseconds since the Unix epoch (0 before it); the node's `now_ms` too.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// First half of `start`, shared by the drivers. `Ok(None)`: a VM with this name and epoch is
/// already alive (nothing to do). `Ok(Some(_))`: a fresh run directory with `meta.json`
/// written, ready for [`RunDir::launch`]. Leftovers of an exited VM are removed.
pub(crate) async fn prepare_start(
    run_root: &Path,
    cfg: &VmConfig,
    epoch: u64,
    driver: &'static str,
) -> Result<Option<(RunDir, Meta)>, DriverError> {
    let rd = RunDir::new(run_root, &cfg.name);
    if let Some(mut old) = rd.read_meta()? {
        match rd.liveness(&mut old).await {
            Liveness::Alive { .. } | Liveness::Launching if old.epoch == epoch => {
                tracing::debug!(vm = %cfg.name, epoch, "already running");
                return Ok(None);
            }
            Liveness::Alive { .. } | Liveness::Launching => {
                return Err(DriverError::AlreadyRunning {
                    name: cfg.name.clone(),
                    running_epoch: old.epoch,
                    requested_epoch: epoch,
                });
            }
            Liveness::Exited { .. } => {
                tracing::info!(vm = %cfg.name, old_epoch = old.epoch, epoch, "replacing the run directory of an exited VM");
            }
        }
    }
    // Keep the previous run's console (bounded) for `vm logs --previous`.
    let previous = read_last(&rd.path(CONSOLE), PREVIOUS_CONSOLE_LIMIT);
    rd.remove()?;
    rd.create()?;
    if let Some(bytes) = previous {
        if let Err(e) = write_atomic(&rd.path(PREVIOUS_CONSOLE), &bytes) {
            tracing::warn!(vm = %cfg.name, error = %e, "cannot keep the previous console");
        }
    }
    let meta = Meta {
        name: cfg.name.clone(),
        epoch,
        pid: None,
        pid_starttime: None,
        driver: driver.to_string(),
        config: cfg.clone(),
        started_at_unix_ms: unix_ms(),
        boot_id: boot_id(),
    };
    rd.write_meta(&meta)?;
    Ok(Some((rd, meta)))
}

/// Second half of `start`: wait for the supervisor to record the pid, pin it in `meta.json`.
pub(crate) async fn record_pid(
    rd: &RunDir,
    meta: &mut Meta,
    logs: &[&str],
) -> Result<u32, DriverError> {
    match rd.wait_pid(Duration::from_secs(10)).await {
        Ok(pid) => {
            match process_starttime(pid) {
                Some(starttime) => {
                    meta.pid = Some(pid);
                    meta.pid_starttime = Some(starttime);
                    rd.write_meta(meta)?;
                }
                // Already gone: its exit is for `list` (or the caller's check) to report.
                None => tracing::debug!(vm = %meta.name, pid, "process exited right after start"),
            }
            Ok(pid)
        }
        Err(code) => {
            let reason = match rd.exited_state(code, logs) {
                crate::RunState::Failed { reason } => reason,
                other => format!("{other:?}"),
            };
            Err(DriverError::StartFailed {
                name: meta.name.clone(),
                reason: if code.is_none() {
                    format!("no pid recorded within 10s; {reason}")
                } else {
                    reason
                },
            })
        }
    }
}

/// Stop skeleton shared by the drivers: mark the stop as requested, run `graceful`, wait up
/// to `grace`, then `forced`, then SIGKILL. Unknown or exited VM: `Ok`.
pub(crate) async fn stop_with<G, F, GF, FF>(
    run_root: &Path,
    name: &str,
    grace: Duration,
    graceful: G,
    forced: F,
) -> Result<(), DriverError>
where
    G: FnOnce(RunDir, u32, Option<u64>) -> GF,
    F: FnOnce(RunDir, u32, Option<u64>) -> FF,
    GF: std::future::Future<Output = ()>,
    FF: std::future::Future<Output = ()>,
{
    crate::validate_name(name)?;
    let rd = RunDir::new(run_root, name);
    let Some(mut meta) = rd.read_meta()? else {
        return Ok(());
    };
    match rd.liveness(&mut meta).await {
        // Already gone: keep what it was (a crash stays `Failed`).
        Liveness::Exited { .. } => return Ok(()),
        Liveness::Alive { .. } => rd.mark_stop_requested()?,
        Liveness::Launching => {
            // Started a moment ago: the pid is about to be recorded.
            rd.mark_stop_requested()?;
            let _ = rd.wait_pid(Duration::from_secs(5)).await;
        }
    }
    let Some((pid, starttime)) = rd.resolve_pid(&mut meta) else {
        return Ok(());
    };
    if !is_alive(pid, starttime) {
        return Ok(());
    }
    tracing::info!(vm = name, pid, ?grace, "stopping");
    graceful(rd.clone(), pid, starttime).await;
    if !wait_dead(pid, starttime, grace).await {
        tracing::info!(vm = name, pid, "grace period over, forcing");
        forced(rd.clone(), pid, starttime).await;
        if !wait_dead(pid, starttime, Duration::from_secs(3)).await {
            signal(pid, starttime, nix::sys::signal::Signal::SIGKILL);
            let waited = Duration::from_secs(5);
            if !wait_dead(pid, starttime, waited).await {
                return Err(DriverError::StopTimeout {
                    name: name.to_string(),
                    pid,
                    waited,
                });
            }
        }
    }
    // Let the supervisor record the exit status so `list` reports it.
    rd.wait_exit_code(Duration::from_secs(2)).await;
    Ok(())
}

/// `remove` shared by the drivers.
pub(crate) async fn remove(run_root: &Path, name: &str) -> Result<(), DriverError> {
    crate::validate_name(name)?;
    let rd = RunDir::new(run_root, name);
    if let Some(mut meta) = rd.read_meta()? {
        if !matches!(rd.liveness(&mut meta).await, Liveness::Exited { .. }) {
            return Err(DriverError::StillRunning {
                name: name.to_string(),
            });
        }
    }
    rd.remove()
}

/// One line of the events file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub unix_ms: u64,
    pub name: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Start,
    Stop,
}

/// Parse an events file (malformed lines are skipped with a warning).
pub fn read_events(path: &Path) -> Result<Vec<Event>, DriverError> {
    let text = fs::read_to_string(path).map_err(|e| DriverError::io("reading", path, e))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let parsed = parse_event(line);
            if parsed.is_none() {
                tracing::warn!(line, "malformed event line");
            }
            parsed
        })
        .collect())
}

fn parse_event(line: &str) -> Option<Event> {
    let mut it = line.split_whitespace();
    let kind = match it.next()? {
        "start" => EventKind::Start,
        "stop" => EventKind::Stop,
        _ => return None,
    };
    let unix_ms = it.next()?.parse().ok()?;
    let name = it.next()?.to_string();
    let epoch = it.next()?.parse().ok()?;
    Some(Event {
        kind,
        unix_ms,
        name,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_descriptions() {
        assert_eq!(describe_exit(0), "exit status 0");
        assert_eq!(describe_exit(137), "exit status 137 (killed by SIGKILL)");
        assert_eq!(describe_exit(143), "exit status 143 (killed by SIGTERM)");
        assert!(describe_exit(127).contains("not found"));
    }

    #[test]
    fn own_process_is_alive_with_stable_starttime() {
        let me = std::process::id();
        let t = process_starttime(me).expect("own starttime");
        assert!(is_alive(me, Some(t)));
        assert!(
            !is_alive(me, Some(t + 1)),
            "a different start time is a different process"
        );
    }

    #[tokio::test]
    async fn a_pid_from_another_boot_is_not_trusted() {
        let root = tempfile::tempdir().expect("tempdir");
        let rd = RunDir::new(root.path(), "vm");
        rd.create().expect("create");
        // Our own pid and start time: alive, unless the host has rebooted since.
        let me = std::process::id();
        let mut meta = Meta {
            name: "vm".into(),
            epoch: 1,
            pid: Some(me),
            pid_starttime: process_starttime(me),
            driver: "process".into(),
            config: VmConfig::new("vm"),
            started_at_unix_ms: unix_ms(),
            boot_id: boot_id(),
        };
        assert_eq!(rd.liveness(&mut meta).await, Liveness::Alive { pid: me });
        meta.boot_id = Some("another-boot".into());
        assert_eq!(
            rd.liveness(&mut meta).await,
            Liveness::Exited {
                pid: Some(me),
                code: None
            }
        );
        assert!(
            matches!(rd.exited_state(None, &[]), crate::RunState::Failed { reason } if reason.contains("host reboot"))
        );
    }

    #[test]
    fn events_parse() {
        let ev = parse_event("start 1700000000000 web 7").expect("parse");
        assert_eq!(
            ev,
            Event {
                kind: EventKind::Start,
                unix_ms: 1_700_000_000_000,
                name: "web".into(),
                epoch: 7
            }
        );
        assert!(parse_event("bogus 1 a 2").is_none());
    }

    #[test]
    fn tail_and_contains() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("log");
        fs::write(&p, "a\r\nb\nBLIXARD-READY\r\nc\n").expect("write");
        assert_eq!(tail_lines(&p, 2), "BLIXARD-READY\nc");
        assert!(file_contains_line(&p, "BLIXARD-READY"));
        assert!(!file_contains_line(&p, "nope"));
        assert_eq!(tail_lines(&dir.path().join("missing"), 3), "");
    }
}
