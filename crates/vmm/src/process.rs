//! `ProcessDriver`: a "VM" that is a supervised, detached host process.
//!
//! For hosts without QEMU and for tests at scale. The workload command (an argv prefix given
//! at construction, used verbatim) runs under the supervisor of [`crate::rundir`], with its
//! stdout and stderr appended to `console.log`. It learns who it is from the environment:
//! `BLIXARD_VM_NAME`, `BLIXARD_VM_EPOCH`, `BLIXARD_VM_VCPUS`, `BLIXARD_VM_MEMORY_MB`.
//! The blixard binary's hidden workload subcommand calls [`idle_workload`].
//!
//! Graceful stop is SIGTERM, forced stop SIGKILL.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::rundir::{self, Liveness, RunDir, CONSOLE};
use crate::{DriverError, Observed, RunState, VmConfig, VmDriver, READY_LINE};

pub const KIND: &str = "process";

/// Runs each VM as a supervised host process. Holds configuration only.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    run_root: PathBuf,
    command: Vec<String>,
    envs: Vec<(String, String)>,
    /// The command that runs a supervisor ([`crate::supervisor::default_command`]).
    supervisor: Vec<String>,
}

impl ProcessDriver {
    /// `command`: the workload argv (program first), e.g. `[current_exe, "__workload"]`.
    pub fn new(run_root: impl Into<PathBuf>, command: Vec<String>) -> Self {
        Self {
            run_root: run_root.into(),
            command,
            envs: Vec::new(),
            supervisor: crate::supervisor::default_command(),
        }
    }

    /// An extra environment variable for every workload (and its supervisor), e.g.
    /// [`rundir::EVENTS_FILE_ENV`].
    /// The command that runs [`crate::supervisor`] (default: this executable with
    /// `supervise`); arguments are appended to it.
    pub fn with_supervisor(mut self, command: Vec<String>) -> Self {
        self.supervisor = command;
        self
    }

    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn run_root(&self) -> &Path {
        &self.run_root
    }
}

#[async_trait::async_trait]
impl VmDriver for ProcessDriver {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn validate(&self, cfg: &VmConfig) -> Result<(), DriverError> {
        crate::validate_common(cfg)?;
        if self.command.is_empty() {
            return Err(DriverError::InvalidConfig {
                name: cfg.name.clone(),
                why: "the process driver has an empty workload command".into(),
            });
        }
        Ok(())
    }

    async fn start(&self, cfg: &VmConfig, epoch: u64) -> Result<(), DriverError> {
        self.validate(cfg)?;
        let Some((rd, mut meta)) = rundir::prepare_start(&self.run_root, cfg, epoch, KIND).await?
        else {
            return Ok(());
        };
        let mut envs = self.envs.clone();
        envs.extend([
            ("BLIXARD_VM_NAME".to_string(), cfg.name.clone()),
            ("BLIXARD_VM_EPOCH".to_string(), epoch.to_string()),
            (
                "BLIXARD_VM_CMDLINE".to_string(),
                cfg.cmdline.clone().unwrap_or_default(),
            ),
            ("BLIXARD_VM_VCPUS".to_string(), cfg.vcpus.to_string()),
            (
                "BLIXARD_VM_MEMORY_MB".to_string(),
                cfg.memory_mb.to_string(),
            ),
        ]);
        rd.launch(
            &self.supervisor,
            &cfg.name,
            epoch,
            CONSOLE,
            &self.command,
            &envs,
        )
        .await?;
        let pid = rundir::record_pid(&rd, &mut meta, &[CONSOLE]).await?;
        tracing::info!(vm = %cfg.name, epoch, pid, "process VM started");
        Ok(())
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), DriverError> {
        rundir::stop_with(
            &self.run_root,
            name,
            grace,
            |_, pid, st| async move {
                rundir::signal(pid, st, Signal::SIGTERM);
            },
            |_, pid, st| async move {
                rundir::signal(pid, st, Signal::SIGKILL);
            },
        )
        .await
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for rd in rundir::scan(&self.run_root)? {
            let mut meta = match rd.read_meta() {
                Ok(Some(meta)) if meta.driver == KIND => meta,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping run directory");
                    continue;
                }
            };
            out.push(observe(&rd, &mut meta).await);
        }
        Ok(out)
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        rundir::remove(&self.run_root, name).await
    }

    fn console_path(&self, name: &str) -> PathBuf {
        self.run_root.join(name).join(CONSOLE)
    }
}

async fn observe(rd: &RunDir, meta: &mut rundir::Meta) -> Observed {
    let (pid, state) = match rd.liveness(meta).await {
        Liveness::Launching => (None, RunState::Starting),
        Liveness::Alive { pid } => {
            let ready = match &meta.config.ready_line {
                Some(line) => rd.is_ready(CONSOLE, line),
                None => true,
            };
            (
                Some(pid),
                if ready {
                    RunState::Running
                } else {
                    RunState::Starting
                },
            )
        }
        Liveness::Exited { pid, code } => (pid, rd.exited_state(code, &[CONSOLE])),
    };
    Observed {
        name: meta.name.clone(),
        epoch: meta.epoch,
        pid,
        state,
    }
}

/// The default workload: prints [`READY_LINE`] on stdout, then idles until SIGTERM or SIGINT
/// and returns (the caller exits 0).
///
/// Its "kernel command line" (`--cmdline`, in `BLIXARD_VM_CMDLINE`) may say
/// `blixard.run-ms=MS` (exit by itself after MS milliseconds) and `blixard.exit=CODE` (the exit
/// status then, default 0): a guest that shuts down or crashes, for tests and demos of restart
/// policies.
pub async fn idle_workload() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Install the handlers before announcing readiness, so an immediate stop is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{READY_LINE}")?;
        stdout.flush()?;
    }
    let cmdline = std::env::var("BLIXARD_VM_CMDLINE").unwrap_or_default();
    let param = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    let run_for = param("blixard.run-ms").map(Duration::from_millis);
    let code = param("blixard.exit")
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(0);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: workload exiting"),
        _ = int.recv() => tracing::info!("SIGINT: workload exiting"),
        _ = async { match run_for { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
            std::process::exit(code);
        }
    }
    Ok(())
}
