//! The supervisor's main loop ([`supervise`]): spawn the workload through the trampoline,
//! record its start, then poll its exit, lease, timeout, cancellation and run directory until
//! it ends; then reap its process group and record how it ended. Also the output plumbing:
//! appended files, or a bounded [`Tail`] for tasks.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::lease::check_lease;
use super::spec::Spec;
use super::trampoline::EXEC_FAILED_PENDING;
use super::{EXEC_FAILED, FLUSH_EVERY, POLL, TIMED_OUT};
use crate::rundir::{
    self, EVENTS_FILE_ENV, EXIT_CODE, FENCED, LEASE_FILE_ENV, PID, STOP_REQUESTED,
};

/// The last bytes of a stream, and how many came before them.
#[derive(Debug, Default)]
pub struct Tail {
    limit: usize,
    buf: VecDeque<u8>,
    total: u64,
}

impl Tail {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.buf.extend(data);
        if self.buf.len() > self.limit {
            let extra = self.buf.len() - self.limit;
            self.buf.drain(..extra);
        }
    }

    /// The kept bytes, behind a `[... N bytes truncated ...]` line when some were dropped.
    pub fn render(&self) -> Vec<u8> {
        let dropped = self.total - self.buf.len() as u64;
        let mut out = Vec::with_capacity(self.buf.len() + 48);
        if dropped > 0 {
            out.extend_from_slice(format!("[... {dropped} bytes truncated ...]\n").as_bytes());
        }
        out.extend(self.buf.iter());
        out
    }
}

fn append_event(kind: &str, name: &str, epoch: u64) {
    let Some(path) = std::env::var_os(EVENTS_FILE_ENV) else {
        return;
    };
    let line = format!("{kind} {} {name} {epoch}\n", rundir::unix_ms());
    // One write of one short line to a file opened for appending: lines never interleave.
    let res = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        note(&format!("cannot append to the events file {path:?}: {e}"));
    }
}

/// Diagnostics of the supervisor itself (its stderr is usually /dev/null).
fn note(msg: &str) {
    eprintln!("blixard supervise: {msg}");
}

fn kill_group(pgid: u32) {
    if let Ok(raw) = i32::try_from(pgid) {
        if raw > 1 {
            let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

fn write_file(path: &Path, text: &str) {
    if let Err(e) = rundir::write_atomic(path, text.as_bytes()) {
        note(&format!("{e}"));
    }
}

/// Where the output goes.
enum Output {
    Append,
    Bounded {
        tail: Arc<Mutex<Tail>>,
        done: std::sync::mpsc::Receiver<()>,
    },
}

fn flush_tail(tail: &Mutex<Tail>, path: &Path) {
    let bytes = tail.lock().unwrap_or_else(|p| p.into_inner()).render();
    if let Err(e) = rundir::write_atomic(path, &bytes) {
        note(&format!("{e}"));
    }
}

/// Runs the workload to its end (see the module docs); returns the supervisor's exit status.
pub(super) fn supervise(spec: &Spec) -> i32 {
    // Already a session leader under `setsid -f`; on its own, leave the caller's session.
    let _ = nix::unistd::setsid();
    // The workload's orphaned descendants become our children, so that we can reap them and
    // know when its whole process group is gone (see `end_group`).
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        note(&format!("cannot become the workload's subreaper: {e}"));
    }
    let dir = &spec.dir;
    let lease_file = std::env::var_os(LEASE_FILE_ENV).map(PathBuf::from);
    write_file(
        &dir.join(rundir::SUPERVISOR_PID),
        &std::process::id().to_string(),
    );
    if let Some(lease) = &lease_file {
        if let Err(why) = check_lease(lease) {
            // Never start without a lease: nothing ran, so no events either.
            write_file(&dir.join(FENCED), &format!("not started: {why}"));
            write_file(&dir.join(EXIT_CODE), "137");
            return 0;
        }
    }

    let out_path = spec.out_path();
    let (stdout, stderr, mut output) = match open_output(spec, &out_path) {
        Ok(x) => x,
        Err(why) => {
            write_file(&dir.join(EXEC_FAILED), &why);
            write_file(&dir.join(EXIT_CODE), "126");
            return 0;
        }
    };
    let (stdin, stdout) = match open_console(spec) {
        Ok((stdin, own_stdout)) => (stdin, own_stdout.unwrap_or(stdout)),
        Err(why) => {
            write_file(&dir.join(EXEC_FAILED), &why);
            write_file(&dir.join(EXIT_CODE), "126");
            return 0;
        }
    };
    // This very executable, even if its file was replaced or removed since it started.
    let me = std::env::current_exe()
        .ok()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let mut cmd = Command::new(me);
    cmd.arg("supervise")
        .arg("--exec")
        .arg(std::process::id().to_string())
        .arg(dir)
        .args(spec.confine().to_args())
        .arg("--")
        .args(&spec.argv)
        .current_dir(spec.cwd.as_deref().unwrap_or(dir))
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);

    append_event("start", &spec.name, spec.epoch);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            write_file(
                &dir.join(EXEC_FAILED),
                &format!(
                    "cannot start '{}': the supervisor could not spawn it ({e})",
                    spec.argv[0]
                ),
            );
            write_file(&dir.join(EXIT_CODE), "126");
            append_event("stop", &spec.name, spec.epoch);
            return 0;
        }
    };
    drop(cmd); // closes our copies of the output's write ends
    let pid = child.id();
    write_file(&dir.join(PID), &pid.to_string());

    let started = Instant::now();
    let mut last_flush = Instant::now();
    let mut killed = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                note(&format!("waiting for pid {pid}: {e}"));
                kill_group(pid);
                break child.wait().ok();
            }
        }
        let verdict: Option<(&str, String)> = if !dir.is_dir() {
            Some(("", "its run directory was removed".into()))
        } else if let Some(Err(why)) = lease_file.as_deref().map(check_lease) {
            Some((FENCED, format!("{why}: fenced")))
        } else if spec.timeout.is_some_and(|t| started.elapsed() >= t) {
            let t = spec.timeout.unwrap_or_default();
            Some((
                TIMED_OUT,
                format!(
                    "timed out after {:.1}s; its process group was killed",
                    t.as_secs_f64()
                ),
            ))
        } else if spec.stop_kills && dir.join(STOP_REQUESTED).exists() {
            Some(("", "stop requested".into()))
        } else {
            None
        };
        if let Some((file, why)) = verdict {
            if !killed && !file.is_empty() {
                write_file(&dir.join(file), &why);
            }
            killed = true;
            kill_group(pid);
        }
        if let Output::Bounded { tail, .. } = &output {
            if last_flush.elapsed() >= FLUSH_EVERY {
                flush_tail(tail, &out_path);
                last_flush = Instant::now();
            }
        }
        std::thread::sleep(POLL);
    };
    // Whatever the workload left in its group goes with it, and only once all of it is gone
    // does the workload count as stopped.
    if !end_group(pid, GROUP_GONE_WITHIN) {
        note(&format!(
            "process group {pid} still has members {}s after SIGKILL",
            GROUP_GONE_WITHIN.as_secs()
        ));
    }
    if let Output::Bounded { tail, done } = &mut output {
        let _ = done.recv_timeout(Duration::from_secs(2));
        flush_tail(tail, &out_path);
    }
    // The trampoline's report of a failed exec, written after it dropped its privileges.
    let pending = dir.join(EXEC_FAILED_PENDING);
    match fs::read_to_string(&pending) {
        Ok(why) if !why.is_empty() && !dir.join(EXEC_FAILED).exists() => {
            write_file(&dir.join(EXEC_FAILED), &why)
        }
        _ => {}
    }
    let _ = fs::remove_file(&pending);
    let code = match status {
        Some(s) => s
            .code()
            .or_else(|| s.signal().map(|n| 128 + n))
            .unwrap_or(-1),
        None => -1,
    };
    // The stop record first, then `exit_code`: whoever sees `exit_code` (the node, which then
    // reports the workload stopped and lets it run elsewhere) sees a complete record.
    append_event("stop", &spec.name, spec.epoch);
    if dir.is_dir() {
        write_file(&dir.join(EXIT_CODE), &code.to_string());
    }
    0
}

/// How long [`end_group`] waits for a killed process group to disappear.
const GROUP_GONE_WITHIN: Duration = Duration::from_secs(5);

/// SIGKILL the process group `pgid` until no member is left (zombies included: the
/// supervisor is the group's subreaper and reaps them), at most `within`. True if it is gone.
fn end_group(pgid: u32, within: Duration) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return true;
    };
    if raw <= 1 {
        return true;
    }
    let deadline = Instant::now() + within;
    loop {
        let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
        reap_orphans();
        match killpg(Pid::from_raw(raw), None) {
            Err(nix::errno::Errno::ESRCH) => return true,
            _ if Instant::now() >= deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reap exited children adopted as subreaper (the workload's orphaned descendants).
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The workload's stdin (the console FIFO, or nothing) and its own stdout file, if any.
fn open_console(spec: &Spec) -> Result<(Stdio, Option<Stdio>), String> {
    let stdin = match &spec.stdin_fifo {
        None => Stdio::null(),
        Some(rel) => {
            let path = spec.dir.join(rel);
            match nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(format!("cannot create the FIFO {}: {e}", path.display())),
            }
            // Read-write: opening never blocks, and the workload keeps a writer of its own.
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Stdio::from(f)
        }
    };
    let stdout = match &spec.stdout {
        None => None,
        Some(rel) => {
            let path = spec.dir.join(rel);
            let f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Some(Stdio::from(f))
        }
    };
    Ok((stdin, stdout))
}

fn open_output(spec: &Spec, out_path: &Path) -> Result<(Stdio, Stdio, Output), String> {
    match spec.output_limit {
        None => {
            let f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out_path)
                .map_err(|e| format!("cannot open {}: {e}", out_path.display()))?;
            let f2 = f
                .try_clone()
                .map_err(|e| format!("cannot open {}: {e}", out_path.display()))?;
            Ok((Stdio::from(f), Stdio::from(f2), Output::Append))
        }
        Some(limit) => {
            let (r, w) = nix::unistd::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
            let w2 = w
                .try_clone()
                .map_err(|e| format!("cannot duplicate a pipe: {e}"))?;
            let tail = Arc::new(Mutex::new(Tail::new(limit)));
            flush_tail(&tail, out_path);
            let (tx, rx) = std::sync::mpsc::channel();
            let t = tail.clone();
            std::thread::spawn(move || {
                let mut r = fs::File::from(r);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => t.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = tx.send(());
            });
            Ok((
                Stdio::from(w),
                Stdio::from(w2),
                Output::Bounded { tail, done: rx },
            ))
        }
    }
}
