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

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::rundir::{
    self, EVENTS_FILE_ENV, EXIT_CODE, FENCED, LEASE_FILE_ENV, PID, STOP_REQUESTED,
};
use crate::DriverError;

/// How often the supervisor checks the workload, its lease, its timeout and its run directory.
pub const POLL: Duration = Duration::from_millis(100);
/// How often a bounded output is written out while the workload runs.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// Written by the supervisor when it killed a task at its timeout.
pub const TIMED_OUT: &str = "timed_out";
/// Written by the trampoline when the workload could not be executed.
pub const EXEC_FAILED: &str = "exec_failed";
/// First word of a lease file.
const LEASE_TAG: &str = "blixard-lease-v1";

/// What one supervisor runs and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The run directory (supervisor files: `pid`, `exit_code`, `fenced`, ...).
    pub dir: PathBuf,
    /// Name and epoch of the workload, for the events file.
    pub name: String,
    pub epoch: u64,
    /// Where stdout and stderr go (relative: inside `dir`). Appended to, unless
    /// `output_limit` is set: then it holds only the last `output_limit` bytes.
    pub out: PathBuf,
    /// Working directory of the workload (default: `dir`).
    pub cwd: Option<PathBuf>,
    /// Kill the workload this long after it started (tasks).
    pub timeout: Option<Duration>,
    /// Keep only the last this many bytes of output, behind a `[... N bytes truncated ...]`
    /// marker (tasks).
    pub output_limit: Option<usize>,
    /// Kill the workload when `stop_requested` appears in `dir` (tasks: cancellation). VMs
    /// get a graceful stop from the driver instead.
    pub stop_kills: bool,
    /// Run the workload as this user (tasks; needs a root supervisor).
    pub run_as: Option<RunAs>,
    /// Resource limits of the workload (tasks).
    pub limits: Option<Limits>,
    /// The workload's argv (program first).
    pub argv: Vec<String>,
    /// A FIFO (relative: inside `dir`; created when missing) opened read-write as the
    /// workload's stdin: the console input of a VM. The workload holds a writer itself, so it
    /// never sees end of file however often writers come and go.
    pub stdin_fifo: Option<PathBuf>,
    /// Where stdout goes instead of `out` (relative: inside `dir`; appended to). stderr stays
    /// in `out`.
    pub stdout: Option<PathBuf>,
}

/// The user a workload runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Resource limits (soft = hard) set on a workload before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NPROC: processes (and threads) of the workload's user, all its workloads together.
    pub nproc: u64,
    /// RLIMIT_NOFILE: open file descriptors per process.
    pub nofile: u64,
    /// RLIMIT_AS: address space per process, bytes.
    pub address_space: u64,
    /// RLIMIT_FSIZE: largest file a process may write, bytes.
    pub file_size: u64,
}

impl Default for Limits {
    /// The task defaults: 512 processes, 4096 files, 8 GiB of address space, 4 GiB files.
    fn default() -> Self {
        Self {
            nproc: 512,
            nofile: 4096,
            address_space: 8 << 30,
            file_size: 4 << 30,
        }
    }
}

impl Limits {
    fn render(&self) -> String {
        format!(
            "{},{},{},{}",
            self.nproc, self.nofile, self.address_space, self.file_size
        )
    }

    fn parse(s: &str) -> Result<Self, String> {
        let v: Vec<u64> = s
            .split(',')
            .map(|x| x.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--limits {s:?}: {e}"))?;
        match v.as_slice() {
            [nproc, nofile, address_space, file_size] => Ok(Self {
                nproc: *nproc,
                nofile: *nofile,
                address_space: *address_space,
                file_size: *file_size,
            }),
            _ => Err(format!("--limits {s:?}: expected NPROC,NOFILE,AS,FSIZE")),
        }
    }

    /// Sets them on this process (inherited by what it `exec`s).
    fn apply(&self) -> Result<(), String> {
        use nix::sys::resource::{setrlimit, Resource};
        for (what, r, v) in [
            ("RLIMIT_NPROC", Resource::RLIMIT_NPROC, self.nproc),
            ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE, self.nofile),
            ("RLIMIT_AS", Resource::RLIMIT_AS, self.address_space),
            ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE, self.file_size),
            ("RLIMIT_CORE", Resource::RLIMIT_CORE, 0),
        ] {
            setrlimit(r, v, v).map_err(|e| format!("cannot set {what} to {v}: {e}"))?;
        }
        Ok(())
    }
}

/// The trampoline's part of a [`Spec`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Confine {
    run_as: Option<RunAs>,
    limits: Option<Limits>,
}

impl Confine {
    fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(r) = &self.run_as {
            a.extend([
                "--user".into(),
                r.name.clone().into(),
                "--uid".into(),
                r.uid.to_string().into(),
                "--gid".into(),
                r.gid.to_string().into(),
            ]);
        }
        if let Some(l) = &self.limits {
            a.extend(["--limits".into(), l.render().into()]);
        }
        a
    }
}

impl Spec {
    /// A VM's supervision: output appended to `out` in `dir`, no timeout.
    pub fn vm(dir: &Path, name: &str, epoch: u64, out: &str, argv: &[String]) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            epoch,
            out: PathBuf::from(out),
            cwd: None,
            timeout: None,
            output_limit: None,
            stop_kills: false,
            run_as: None,
            limits: None,
            argv: argv.to_vec(),
            stdin_fifo: None,
            stdout: None,
        }
    }

    fn confine(&self) -> Confine {
        Confine {
            run_as: self.run_as.clone(),
            limits: self.limits,
        }
    }

    /// The arguments after `supervise`.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            "--dir".into(),
            self.dir.clone().into(),
            "--name".into(),
            self.name.clone().into(),
            "--epoch".into(),
            self.epoch.to_string().into(),
            "--out".into(),
            self.out.clone().into(),
        ];
        if let Some(cwd) = &self.cwd {
            a.extend(["--cwd".into(), cwd.clone().into()]);
        }
        if let Some(t) = self.timeout {
            a.extend(["--timeout-ms".into(), t.as_millis().to_string().into()]);
        }
        if let Some(n) = self.output_limit {
            a.extend(["--output-limit".into(), n.to_string().into()]);
        }
        if self.stop_kills {
            a.push("--stop-kills".into());
        }
        a.extend(self.confine().to_args());
        if let Some(p) = &self.stdin_fifo {
            a.extend(["--stdin-fifo".into(), p.clone().into()]);
        }
        if let Some(p) = &self.stdout {
            a.extend(["--stdout".into(), p.clone().into()]);
        }
        a.push("--".into());
        a.extend(self.argv.iter().map(OsString::from));
        a
    }

    fn out_path(&self) -> PathBuf {
        self.dir.join(&self.out)
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    Supervise(Spec),
    Exec {
        parent: i32,
        dir: PathBuf,
        confine: Confine,
        argv: Vec<String>,
    },
}

fn parse(args: Vec<OsString>) -> Result<Mode, String> {
    let mut it = args.into_iter().map(|a| a.into_string()).peekable();
    let mut next = |what: &str| -> Result<String, String> {
        match it.next() {
            Some(Ok(s)) => Ok(s),
            Some(Err(a)) => Err(format!("{what}: not UTF-8: {a:?}")),
            None => Err(format!("missing {what}")),
        }
    };
    let mut first = next("arguments")?;
    if first == "supervise" {
        first = next("arguments")?;
    }
    if first == "--exec" {
        let parent = next("parent pid")?
            .parse()
            .map_err(|e| format!("parent pid: {e}"))?;
        let dir = PathBuf::from(next("run directory")?);
        let mut confine = Confine::default();
        let (mut user, mut uid, mut gid) = (None, None, None);
        loop {
            match next("-- before the program")?.as_str() {
                "--" => break,
                other => parse_confine(
                    other,
                    &mut next,
                    &mut user,
                    &mut uid,
                    &mut gid,
                    &mut confine,
                )?,
            }
        }
        confine.run_as = run_as(user, uid, gid)?;
        let mut argv = Vec::new();
        while let Ok(a) = next("argv") {
            argv.push(a);
        }
        if argv.is_empty() {
            return Err("missing program".into());
        }
        return Ok(Mode::Exec {
            parent,
            dir,
            confine,
            argv,
        });
    }
    let mut dir = None;
    let mut name = None;
    let mut epoch = None;
    let mut out = None;
    let mut spec = Spec::vm(Path::new(""), "", 0, "", &[]);
    let mut confine = Confine::default();
    let (mut user, mut uid, mut gid) = (None, None, None);
    let mut flag = first;
    loop {
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(next("--dir")?)),
            "--name" => name = Some(next("--name")?),
            "--epoch" => {
                epoch = Some(
                    next("--epoch")?
                        .parse()
                        .map_err(|e| format!("--epoch: {e}"))?,
                )
            }
            "--out" => out = Some(PathBuf::from(next("--out")?)),
            "--cwd" => spec.cwd = Some(PathBuf::from(next("--cwd")?)),
            "--timeout-ms" => {
                let ms: u64 = next("--timeout-ms")?
                    .parse()
                    .map_err(|e| format!("--timeout-ms: {e}"))?;
                spec.timeout = Some(Duration::from_millis(ms));
            }
            "--output-limit" => {
                let n: usize = next("--output-limit")?
                    .parse()
                    .map_err(|e| format!("--output-limit: {e}"))?;
                if n == 0 {
                    return Err("--output-limit must be at least 1".into());
                }
                spec.output_limit = Some(n);
            }
            "--stop-kills" => spec.stop_kills = true,
            "--stdin-fifo" => spec.stdin_fifo = Some(PathBuf::from(next("--stdin-fifo")?)),
            "--stdout" => spec.stdout = Some(PathBuf::from(next("--stdout")?)),
            "--" => break,
            other => parse_confine(
                other,
                &mut next,
                &mut user,
                &mut uid,
                &mut gid,
                &mut confine,
            )?,
        }
        flag = next("-- and the program")?;
    }
    spec.run_as = run_as(user, uid, gid)?;
    spec.limits = confine.limits;
    while let Ok(a) = next("argv") {
        spec.argv.push(a);
    }
    if spec.argv.is_empty() {
        return Err("missing program after --".into());
    }
    spec.dir = dir.ok_or("missing --dir")?;
    spec.name = name.ok_or("missing --name")?;
    spec.epoch = epoch.ok_or("missing --epoch")?;
    spec.out = out.ok_or("missing --out")?;
    Ok(Mode::Supervise(spec))
}

/// One of the confinement flags (`--user`, `--uid`, `--gid`, `--limits`), or an error.
fn parse_confine(
    flag: &str,
    next: &mut impl FnMut(&str) -> Result<String, String>,
    user: &mut Option<String>,
    uid: &mut Option<u32>,
    gid: &mut Option<u32>,
    confine: &mut Confine,
) -> Result<(), String> {
    match flag {
        "--user" => *user = Some(next("--user")?),
        "--uid" => *uid = Some(next("--uid")?.parse().map_err(|e| format!("--uid: {e}"))?),
        "--gid" => *gid = Some(next("--gid")?.parse().map_err(|e| format!("--gid: {e}"))?),
        "--limits" => confine.limits = Some(Limits::parse(&next("--limits")?)?),
        other => return Err(format!("unknown argument {other:?}")),
    }
    Ok(())
}

fn run_as(
    user: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<Option<RunAs>, String> {
    match (user, uid, gid) {
        (None, None, None) => Ok(None),
        (Some(name), Some(uid), Some(gid)) => Ok(Some(RunAs { name, uid, gid })),
        _ => Err("--user, --uid and --gid go together".into()),
    }
}

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

/// Written (empty) by the trampoline before it drops its privileges; holds the reason when the
/// workload then cannot be executed (the supervisor renames it to [`EXEC_FAILED`]).
const EXEC_FAILED_PENDING: &str = "exec_failed.pending";

/// Applies the limits and drops to the user (in this order: limits may need root).
fn drop_privileges(confine: &Confine) -> Result<(), String> {
    if let Some(l) = &confine.limits {
        l.apply()?;
    }
    if let Some(r) = &confine.run_as {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        let gid = Gid::from_raw(r.gid);
        let uid = Uid::from_raw(r.uid);
        setgroups(&[gid]).map_err(|e| format!("cannot set the groups of {}: {e}", r.name))?;
        setgid(gid).map_err(|e| format!("cannot switch to group {}: {e}", r.gid))?;
        setuid(uid).map_err(|e| format!("cannot switch to user {} ({}): {e}", r.name, r.uid))?;
        // Never run with privileges left over.
        if nix::unistd::getuid() != uid
            || nix::unistd::geteuid() != uid
            || nix::unistd::getegid() != gid
            || (r.uid != 0 && setuid(Uid::from_raw(0)).is_ok())
        {
            return Err(format!("switching to user {} did not take", r.name));
        }
    }
    Ok(())
}

/// The trampoline: drop privileges, die with the parent, check it is still there, become the
/// workload.
fn exec(parent: i32, dir: &Path, confine: &Confine, argv: &[String]) -> i32 {
    // Opened while the run directory is still writable (close-on-exec: it closes when the
    // workload starts).
    let mut pending = fs::File::create(dir.join(EXEC_FAILED_PENDING)).ok();
    if let Err(why) = drop_privileges(confine) {
        let why = format!("cannot start '{}': {why}", argv[0]);
        let _ = rundir::write_atomic(&dir.join(EXEC_FAILED), why.as_bytes());
        eprintln!("{why}");
        return 126;
    }
    let mut fail = |why: &str| {
        if let Some(f) = pending.as_mut() {
            let _ = f.write_all(why.as_bytes());
        } else {
            let _ = rundir::write_atomic(&dir.join(EXEC_FAILED), why.as_bytes());
        }
        eprintln!("{why}");
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&format!(
            "cannot tie the workload to its supervisor (prctl PR_SET_PDEATHSIG): {e}"
        ));
        return 126;
    }
    // The supervisor may have died between the fork and the prctl: then nobody would kill us.
    if nix::unistd::getppid().as_raw() != parent {
        return 125;
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if let Some(r) = &confine.run_as {
        cmd.env("USER", &r.name).env("LOGNAME", &r.name);
        if let Ok(cwd) = std::env::current_dir() {
            cmd.env("HOME", cwd);
        }
    }
    let err = cmd.exec();
    fail(&format!("cannot start '{}': {err}", argv[0]));
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// Milliseconds of CLOCK_BOOTTIME: time since boot, counting suspend, never stepped.
pub fn boottime_ms() -> Option<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let ms = i128::from(ts.tv_sec()) * 1000 + i128::from(ts.tv_nsec()) / 1_000_000;
    u64::try_from(ms).ok()
}

/// A parsed lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub boot_id: String,
    /// CLOCK_BOOTTIME milliseconds; 0: revoked.
    pub deadline_ms: u64,
}

impl Lease {
    pub fn render(&self) -> String {
        format!("{LEASE_TAG} {} {}\n", self.boot_id, self.deadline_ms)
    }

    pub fn parse(text: &str) -> Result<Lease, String> {
        let f: Vec<&str> = text.split_whitespace().collect();
        match f.as_slice() {
            [tag, boot, deadline] if *tag == LEASE_TAG && !boot.is_empty() => Ok(Lease {
                boot_id: boot.to_string(),
                deadline_ms: deadline
                    .parse()
                    .map_err(|_| format!("malformed lease deadline {deadline:?}"))?,
            }),
            _ => Err(format!(
                "malformed lease {:?}",
                text.chars().take(80).collect::<String>()
            )),
        }
    }
}

/// Writes the lease file (atomically): valid until `deadline_ms` of CLOCK_BOOTTIME in this
/// boot. `0` revokes it.
pub fn write_lease(path: &Path, deadline_ms: u64) -> std::io::Result<()> {
    let boot_id = rundir::boot_id().ok_or_else(|| {
        std::io::Error::other("cannot read /proc/sys/kernel/random/boot_id (needed for the lease)")
    })?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let lease = Lease {
        boot_id,
        deadline_ms,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, lease.render())?;
    fs::rename(tmp, path)
}

/// `Ok(remaining)` only when the lease at `path` provably holds now; otherwise why not (the
/// workload must be killed).
pub fn check_lease(path: &Path) -> Result<Duration, String> {
    let text = fs::read_to_string(path).map_err(|e| {
        format!(
            "the node's lease file {} is unreadable ({e})",
            path.display()
        )
    })?;
    let lease = Lease::parse(&text)
        .map_err(|e| format!("the node's lease file {}: {e}", path.display()))?;
    let boot = rundir::boot_id().ok_or("cannot read this host's boot id")?;
    if lease.boot_id != boot {
        return Err(format!(
            "the node's lease was written during another boot of this host ({})",
            lease.boot_id
        ));
    }
    if lease.deadline_ms == 0 {
        return Err("the node gave its lease up (revoked)".into());
    }
    let now = boottime_ms().ok_or("cannot read CLOCK_BOOTTIME")?;
    if now >= lease.deadline_ms {
        return Err(format!(
            "the node's lease expired {} ms ago (no contact with the cluster)",
            now - lease.deadline_ms
        ));
    }
    Ok(Duration::from_millis(lease.deadline_ms - now))
}

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
fn supervise(spec: &Spec) -> i32 {
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
/// supervisor's environment (and so the workload's): [`LEASE_FILE_ENV`] enables fencing.
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
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let mut spec = Spec::vm(
            Path::new("/run/x"),
            "web",
            7,
            "console.log",
            &["sh".into(), "-c".into(), "echo --dir".into()],
        );
        assert_eq!(parse(spec.to_args()), Ok(Mode::Supervise(spec.clone())));
        spec.cwd = Some("/tmp".into());
        spec.timeout = Some(Duration::from_millis(1500));
        spec.output_limit = Some(65536);
        spec.stop_kills = true;
        spec.run_as = Some(RunAs {
            name: "blixard-task".into(),
            uid: 990,
            gid: 989,
        });
        spec.limits = Some(Limits::default());
        spec.stdin_fifo = Some("console.in".into());
        spec.stdout = Some("console.log".into());
        let mut args: Vec<OsString> = vec!["supervise".into()];
        args.extend(spec.to_args());
        assert_eq!(parse(args), Ok(Mode::Supervise(spec)));
        assert!(parse(vec!["--dir".into(), "/x".into()]).is_err());
        assert!(parse(vec!["--bogus".into()]).is_err());
        assert_eq!(
            parse(
                ["--exec", "12", "/d", "--", "true"]
                    .map(OsString::from)
                    .to_vec()
            ),
            Ok(Mode::Exec {
                parent: 12,
                dir: "/d".into(),
                confine: Confine::default(),
                argv: vec!["true".into()]
            })
        );
        let confine = Confine {
            run_as: Some(RunAs {
                name: "u".into(),
                uid: 5,
                gid: 6,
            }),
            limits: Some(Limits::default()),
        };
        let mut args: Vec<OsString> = ["--exec", "12", "/d"].map(OsString::from).to_vec();
        args.extend(confine.to_args());
        args.extend(["--", "true"].map(OsString::from));
        assert_eq!(
            parse(args),
            Ok(Mode::Exec {
                parent: 12,
                dir: "/d".into(),
                confine,
                argv: vec!["true".into()]
            })
        );
        assert!(parse(
            ["--exec", "1", "/d", "--uid", "5", "--", "true"]
                .map(OsString::from)
                .to_vec()
        )
        .is_err());
        assert!(parse(
            ["--exec", "1", "/d", "--limits", "1,2", "--", "true"]
                .map(OsString::from)
                .to_vec()
        )
        .is_err());
    }

    #[test]
    fn lease_format() {
        let l = Lease {
            boot_id: "abc".into(),
            deadline_ms: 42,
        };
        assert_eq!(Lease::parse(&l.render()), Ok(l));
        for bad in [
            "",
            "42",
            "blixard-lease-v1 abc",
            "blixard-lease-v1 abc x",
            "v0 abc 1",
            "blixard-lease-v1 a 1 2",
        ] {
            assert!(Lease::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn check_lease_verdicts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("lease");
        assert!(check_lease(&p).unwrap_err().contains("unreadable"));
        let now = boottime_ms().expect("boottime");
        write_lease(&p, now + 60_000).expect("write");
        assert!(check_lease(&p).is_ok());
        write_lease(&p, now.saturating_sub(1)).expect("write");
        assert!(check_lease(&p).unwrap_err().contains("expired"));
        write_lease(&p, 0).expect("write");
        assert!(check_lease(&p).unwrap_err().contains("revoked"));
        fs::write(&p, format!("{LEASE_TAG} another-boot {}\n", now + 60_000)).expect("write");
        assert!(check_lease(&p).unwrap_err().contains("another boot"));
        fs::write(&p, "9999999999999").expect("write");
        assert!(check_lease(&p).unwrap_err().contains("malformed"));
    }

    #[test]
    fn tail_keeps_the_last_bytes_with_a_marker() {
        let mut t = Tail::new(64 * 1024);
        t.push(b"hello\n");
        assert_eq!(t.render(), b"hello\n");
        t.push(&vec![b'x'; 64 * 1024]);
        t.push(b"END");
        let r = t.render();
        let text = String::from_utf8_lossy(&r);
        assert!(
            text.starts_with("[... 9 bytes truncated ...]\n"),
            "{}",
            &text[..40]
        );
        assert!(text.ends_with("xEND"));
        assert_eq!(r.len() - "[... 9 bytes truncated ...]\n".len(), 64 * 1024);
    }
}
