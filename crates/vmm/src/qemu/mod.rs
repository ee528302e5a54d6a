//! `QemuDriver`: QEMU `-M microvm` (Debian's `qemu-system-x86_64`), controlled over QMP.
//!
//! - [`build_argv`] is a pure function from a config to QEMU's arguments (golden-tested).
//! - [`choose_accel`] picks KVM only when the CPU advertises `vmx`/`svm` *and* `/dev/kvm`
//!   opens read-write; TCG otherwise (a stock kernel hangs under KVM on hosts where KVM is
//!   exposed without the flags).
//! - QEMU runs in the foreground of the supervisor of [`crate::rundir`] (not `-daemonize`), so
//!   its exit status is recorded even after a daemon restart. The guest serial console goes
//!   to `console.log`, QEMU's own messages to `vmm.log`, control to `qmp.sock`.
//! - QMP is spoken with the `qapi` crate (typed commands, tokio). Graceful stop is ACPI
//!   `system_powerdown` (skipped under TCG, see [`TCG_CMDLINE`] and `stop`); forced stop is
//!   `quit`, then SIGKILL.
//! - Networking: with [`crate::VmConfig::net`], a `virtio-net-device` on an existing tap (the
//!   node creates and removes taps and bridges; see `blixard_node::hostnet`).
//! - Readiness: the console contains the config's ready line (and QMP does not report a
//!   non-running state); with `ready_line: None`, QMP `query-status == running`.
//!
//! # Where things are
//!
//! - this file: [`QemuDriver`] (the [`VmDriver`] implementation: start, observe, stop, list);
//! - `argv`: the pure part, accelerator choice and QEMU's command line ([`build_argv`]);
//! - `qmp_client`: one-shot QMP commands with a timeout ([`query_status`],
//!   [`system_powerdown`], [`quit`]);
//! - `tests`: golden argv tests, accelerator choice, and a boot under real QEMU when present.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::qmp;
use tokio::time::Instant;

use crate::rundir::{self, Liveness, RunDir, CONSOLE, CONSOLE_IN, QMP_SOCKET, VMM_LOG};
use crate::{DriverError, Observed, RunState, VmConfig, VmDriver};

pub const KIND: &str = "qemu";
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// The machine type and the options that give it a serial console and a clock.
pub const MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on";
/// Always on the kernel command line, before [`VmConfig::cmdline`].
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1";
/// Added to the kernel command line under TCG. ACPI stays on (microvm describes its
/// virtio-mmio devices only in ACPI: the Debian kernel has no `virtio_mmio.device=` command
/// line support, so without ACPI a guest sees no disk and no network card). Under TCG on a
/// loaded host, a Linux guest with ACPI intermittently fails to calibrate the TSC against the
/// PIT ("tsc: Unable to calibrate against PIT") and then hangs with no timer interrupts; giving
/// it the TSC frequency skips that calibration. (TCG's TSC is not exact: the guest's clocksource
/// watchdog later switches away from it, which is harmless.)
pub const TCG_CMDLINE: &str = "tsc_early_khz=1000000";
/// Unix socket paths longer than this cannot be bound.
const MAX_SOCKET_PATH: usize = 107;

mod argv;
mod qmp_client;

pub use argv::{build_argv, choose_accel, disk_format, host_accel, Accel, QemuPaths};
pub use qmp_client::{query_status, quit, system_powerdown};

/// Boots VMs with QEMU microvm. Holds configuration only.
#[derive(Debug, Clone)]
pub struct QemuDriver {
    run_root: PathBuf,
    qemu: OsString,
    /// `qemu-img` (qemu-utils), which creates the disk overlays.
    qemu_img: String,
    accel: Accel,
    envs: Vec<(String, String)>,
    /// The command that runs a supervisor ([`crate::supervisor::default_command`]).
    supervisor: Vec<String>,
}

impl QemuDriver {
    /// Uses `qemu-system-x86_64` from `PATH` and the host's accelerator ([`host_accel`]).
    pub fn new(run_root: impl Into<PathBuf>) -> Self {
        Self {
            run_root: run_root.into(),
            qemu: DEFAULT_QEMU.into(),
            qemu_img: "qemu-img".into(),
            accel: host_accel(),
            envs: Vec::new(),
            supervisor: crate::supervisor::default_command(),
        }
    }

    /// The command that runs [`crate::supervisor`] (default: this executable with
    /// `supervise`); arguments are appended to it.
    pub fn with_supervisor(mut self, command: Vec<String>) -> Self {
        self.supervisor = command;
        self
    }

    /// Adds an environment variable for the VM's supervisor (e.g. [`crate::LEASE_FILE_ENV`]).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn with_qemu(mut self, qemu: impl Into<OsString>) -> Self {
        self.qemu = qemu.into();
        self
    }

    pub fn with_accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn run_root(&self) -> &Path {
        &self.run_root
    }

    /// The VM's QMP socket (for tools; the driver opens a connection per operation).
    pub fn qmp_socket(&self, name: &str) -> PathBuf {
        self.run_root.join(name).join(QMP_SOCKET)
    }

    async fn observe(&self, rd: &RunDir, meta: &mut rundir::Meta) -> Observed {
        let (pid, state) = match rd.liveness(meta).await {
            Liveness::Launching => (None, RunState::Starting),
            Liveness::Alive { pid } => {
                let qmp_status = match query_status(&rd.path(QMP_SOCKET)).await {
                    Ok(status) => Some(status),
                    Err(e) => {
                        tracing::debug!(vm = %meta.name, error = %e, "QMP query-status failed");
                        None
                    }
                };
                let ready = match (&meta.config.ready_line, qmp_status) {
                    (_, Some(status)) if status != qmp::RunState::running => false,
                    (Some(line), _) => rd.is_ready(CONSOLE, line),
                    (None, status) => status == Some(qmp::RunState::running),
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
            Liveness::Exited { pid, code } => (pid, rd.exited_state(code, &[VMM_LOG, CONSOLE])),
        };
        Observed {
            name: meta.name.clone(),
            epoch: meta.epoch,
            pid,
            state,
        }
    }
}

#[async_trait::async_trait]
impl VmDriver for QemuDriver {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn validate(&self, cfg: &VmConfig) -> Result<(), DriverError> {
        crate::validate_common(cfg)?;
        let Some(kernel) = &cfg.kernel else {
            return Err(DriverError::InvalidConfig {
                name: cfg.name.clone(),
                why: "a kernel is required for qemu microvm (see blixard_vmm::default_guest)"
                    .into(),
            });
        };
        if let Some(net) = &cfg.net {
            let tap_ok = !net.tap.is_empty()
                && net.tap.len() <= 15
                && net
                    .tap
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let mac_ok = net.mac.len() == 17
                && net.mac.split(':').count() == 6
                && net
                    .mac
                    .split(':')
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            if !tap_ok || !mac_ok {
                return Err(DriverError::InvalidConfig {
                    name: cfg.name.clone(),
                    why: format!(
                        "bad network attachment: tap {:?} (1-15 of [A-Za-z0-9_-]), mac {:?}",
                        net.tap, net.mac
                    ),
                });
            }
        }
        let files = [
            ("kernel", Some(kernel)),
            ("initrd", cfg.initrd.as_ref()),
            ("disk image", cfg.disk_image.as_ref()),
        ];
        for (what, path) in files {
            if let Some(path) = path {
                if !path.is_file() {
                    return Err(DriverError::MissingFile {
                        what,
                        path: path.clone(),
                    });
                }
            }
        }
        let socket = self.qmp_socket(&cfg.name);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(DriverError::InvalidConfig {
                name: cfg.name.clone(),
                why: format!(
                    "QMP socket path {} is longer than {MAX_SOCKET_PATH} bytes: use a shorter run directory or name",
                    socket.display()
                ),
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
        let paths = QemuPaths::in_dir(rd.dir());
        // The base image is never written: the VM gets a copy-on-write overlay of it in its
        // run directory (fresh for each run), unless it asked for a read-only attachment.
        let mut run_cfg = cfg.clone();
        if let (Some(base), false) = (&cfg.disk_image, cfg.disk_readonly) {
            let overlay = rd.path(crate::images::OVERLAY);
            crate::images::create_overlay(
                &self.qemu_img,
                base,
                crate::images::probe_format(base),
                &overlay,
            )
            .await?;
            run_cfg.disk_image = Some(overlay);
        }
        let mut argv = vec![self.qemu.to_string_lossy().into_owned()];
        argv.extend(build_argv(&run_cfg, &paths, self.accel));
        tracing::debug!(vm = %cfg.name, ?argv, "launching qemu");
        let mut spec = crate::supervisor::Spec::vm(rd.dir(), &cfg.name, epoch, VMM_LOG, &argv);
        spec.stdin_fifo = Some(CONSOLE_IN.into());
        spec.stdout = Some(CONSOLE.into());
        crate::supervisor::launch(&self.supervisor, &spec, &self.envs).await?;
        let pid = rundir::record_pid(&rd, &mut meta, &[VMM_LOG, CONSOLE]).await?;

        // Up means: QMP answers (QEMU binds the socket before machine init, which may still
        // fail: bad sizes, unreadable images...). QEMU exits early on such errors.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(code) = rd.exit_code() {
                let reason = match rd.exited_state(Some(code), &[VMM_LOG, CONSOLE]) {
                    RunState::Failed { reason } => reason,
                    other => format!("{other:?}"),
                };
                return Err(DriverError::StartFailed {
                    name: cfg.name.clone(),
                    reason,
                });
            }
            if paths.qmp_socket.exists() && query_status(&paths.qmp_socket).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(vm = %cfg.name, pid, "QMP not answering after 10s; reporting Starting");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(vm = %cfg.name, epoch, pid, accel = ?self.accel, "qemu VM started");
        Ok(())
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), DriverError> {
        crate::validate_name(name)?;
        // Under TCG a graceful stop is not worth its wait: ACPI power-down is slow there and
        // blixard's own guest has no handler for it. Stop with QMP quit directly (as before
        // ACPI was enabled under TCG; `acpi=off` marks VMs started by older versions).
        let tcg = RunDir::new(&self.run_root, name)
            .read_meta()?
            .and_then(|meta| meta.pid)
            .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
            .is_some_and(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.iter().any(|arg| arg.ends_with(b",acpi=off"))
                    || args.windows(2).any(|w| w[0] == b"-accel" && w[1] == b"tcg")
            });
        let grace = if tcg {
            tracing::debug!(vm = name, "TCG guest: stopping with QMP quit directly");
            Duration::ZERO
        } else {
            grace
        };
        rundir::stop_with(
            &self.run_root,
            name,
            grace,
            |rd, pid, st| async move {
                if let Err(e) = system_powerdown(&rd.path(QMP_SOCKET)).await {
                    tracing::warn!(vm = name, error = %e, "QMP system_powerdown failed; sending SIGTERM");
                    rundir::signal(pid, st, nix::sys::signal::Signal::SIGTERM);
                }
            },
            |rd, _, _| async move {
                // QEMU may close the socket before answering: the caller checks the pid.
                if let Err(e) = quit(&rd.path(QMP_SOCKET)).await {
                    tracing::debug!(vm = name, error = %e, "QMP quit");
                }
            },
        )
        .await
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        let mut found = Vec::new();
        for rd in rundir::scan(&self.run_root)? {
            match rd.read_meta() {
                Ok(Some(meta)) if meta.driver == KIND => found.push((rd, meta)),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping run directory"),
            }
        }
        // Concurrently: each observation may wait on a QMP round trip.
        let observations = found.iter_mut().map(|(rd, meta)| self.observe(rd, meta));
        Ok(futures::future::join_all(observations).await)
    }

    async fn remove(&self, name: &str) -> Result<(), DriverError> {
        rundir::remove(&self.run_root, name).await
    }

    fn console_path(&self, name: &str) -> PathBuf {
        self.run_root.join(name).join(CONSOLE)
    }

    fn console_input_path(&self, name: &str) -> Option<PathBuf> {
        Some(self.run_root.join(name).join(CONSOLE_IN))
    }
}

#[cfg(test)]
mod tests;
