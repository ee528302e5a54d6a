//! One `blixard node` daemon as a child process: how it is started and how a test ends,
//! freezes or signals it. Both cluster fixtures hold their daemons as [`NodeProcess`]es: the
//! CLI tests' [`crate::cluster::Cluster`] (127.0.0.1, ports chosen by the OS) and the fault
//! harness's cluster (one network namespace per node).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The `blixard` binary under test: `$BLIXARD_BIN`, else the `blixard` next to the running
/// test's own directory (`target/<profile>/deps/<test>` -> `target/<profile>/blixard`, where
/// cargo puts the binary of the package's integration tests).
pub fn bin() -> PathBuf {
    if let Some(b) = std::env::var_os("BLIXARD_BIN") {
        return PathBuf::from(b);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let found = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("blixard"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "no blixard binary near {} (build it with `cargo build -p blixard`, or set BLIXARD_BIN)",
            exe.display()
        )
    })
}

/// `blixard node --id ID --listen LISTEN --data-dir DIR`, run inside network namespace
/// `netns` when given (`ip netns exec`), its supervisors appending start/stop records to
/// `events` (`BLIXARD_EVENTS_FILE`, read by [`crate::never_twice`]). The caller adds the
/// remaining flags and environment, then [`NodeProcess::spawn`]s it.
pub fn node_command(
    bin: &Path,
    netns: Option<&str>,
    id: u64,
    listen: &str,
    data_dir: &Path,
    events: &Path,
) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args([
        "node",
        "--id",
        &id.to_string(),
        "--listen",
        listen,
        "--data-dir",
    ])
    .arg(data_dir)
    .env("BLIXARD_EVENTS_FILE", events);
    cmd
}

/// A running (or exited, not yet reaped) daemon.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    paused: bool,
}

impl NodeProcess {
    /// Spawns `cmd` with no stdin and its stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> std::io::Result<Self> {
        let out = OpenOptions::new().create(true).append(true).open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Self {
            child,
            paused: false,
        })
    }

    /// The process id (of `ip netns exec`'s successor: `ip` execs the daemon).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"))
    }

    /// Sends `signal` (ignoring a process already gone).
    pub fn signal(&self, signal: Signal) {
        let _ = kill(self.pid(), signal);
    }

    /// SIGSTOP: the daemon freezes (its workloads and their supervisors keep running).
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
        self.paused = false;
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Whether the process exited (reaping it if so); never blocks.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Polls [`Self::exited`] until `deadline` has passed; returns whether it exited.
    pub fn wait_exit(&mut self, deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            if self.exited() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` (after SIGCONT when paused) and reap.
    pub fn kill9(mut self) {
        if self.paused {
            self.signal(Signal::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
