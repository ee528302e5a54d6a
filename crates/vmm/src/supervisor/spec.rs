//! What a supervisor runs ([`Spec`], with its confinement: [`RunAs`], [`Limits`]) and its
//! command line: [`Spec::to_args`] renders it for [`super::launch`], [`parse`] reads it back
//! in the supervisor (and the trampoline's `--exec` form). Kept apart from the running code
//! so the round trip is tested without processes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub(super) fn render(&self) -> String {
        format!(
            "{},{},{},{}",
            self.nproc, self.nofile, self.address_space, self.file_size
        )
    }

    pub(super) fn parse(s: &str) -> Result<Self, String> {
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
    pub(super) fn apply(&self) -> Result<(), String> {
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
pub(super) struct Confine {
    pub(super) run_as: Option<RunAs>,
    pub(super) limits: Option<Limits>,
}

impl Confine {
    pub(super) fn to_args(&self) -> Vec<OsString> {
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

    pub(super) fn confine(&self) -> Confine {
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

    pub(super) fn out_path(&self) -> PathBuf {
        self.dir.join(&self.out)
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Mode {
    Supervise(Spec),
    Exec {
        parent: i32,
        dir: PathBuf,
        confine: Confine,
        argv: Vec<String>,
    },
}

/// Reads the arguments after `supervise` (the supervisor's or the trampoline's).
pub(super) fn parse(args: Vec<OsString>) -> Result<Mode, String> {
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
