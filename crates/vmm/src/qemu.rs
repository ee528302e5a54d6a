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

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use qapi::futures::QmpStreamTokio;
use qapi::qmp;
use tokio::time::{timeout, Instant};

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
const QMP_TIMEOUT: Duration = Duration::from_secs(3);

/// The accelerator QEMU is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM iff some `flags` line of `cpuinfo` has `vmx` or `svm` and `/dev/kvm` opens read-write.
pub fn choose_accel(cpuinfo: &str, kvm_opens: bool) -> Accel {
    let virt_flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if virt_flags && kvm_opens {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// [`choose_accel`] for this host.
pub fn host_accel() -> Accel {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let accel = choose_accel(&cpuinfo, kvm_opens);
    tracing::debug!(?accel, kvm_opens, "accelerator chosen");
    accel
}

/// The files QEMU is pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuPaths {
    pub console: PathBuf,
    pub qmp_socket: PathBuf,
}

impl QemuPaths {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            console: dir.join(CONSOLE),
            qmp_socket: dir.join(QMP_SOCKET),
        }
    }
}

/// QEMU's arguments (without the program name) for `cfg`. Pure.
pub fn build_argv(cfg: &VmConfig, paths: &QemuPaths, accel: Accel) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| argv.extend(args.iter().map(|s| s.to_string()));
    push(&["-name", &cfg.name]);
    push(&["-M", MACHINE]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&[
        "-m",
        &format!("{}M", cfg.memory_mb),
        "-smp",
        &cfg.vcpus.to_string(),
    ]);
    // The serial console is QEMU's stdio: the supervisor appends stdout to `console.log` (a
    // regular file: guest output never waits for a reader) and gives it the `console.in` FIFO
    // as stdin (read-write, so QEMU never sees end of file): `vm console` writes there.
    push(&["-chardev", "stdio,id=console,signal=off"]);
    push(&["-serial", "chardev:console"]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&paths.qmp_socket)),
    ]);
    if let Some(kernel) = &cfg.kernel {
        push(&["-kernel", &kernel.to_string_lossy()]);
        if let Some(initrd) = &cfg.initrd {
            push(&["-initrd", &initrd.to_string_lossy()]);
        }
        let base = match accel {
            Accel::Kvm => BASE_CMDLINE.to_string(),
            Accel::Tcg => format!("{BASE_CMDLINE} {TCG_CMDLINE}"),
        };
        let append = match cfg.cmdline.as_deref().map(str::trim) {
            Some(extra) if !extra.is_empty() => format!("{base} {extra}"),
            _ => base,
        };
        push(&["-append", &append]);
    }
    if let Some(disk) = &cfg.disk_image {
        let readonly = if cfg.disk_readonly {
            ",readonly=on"
        } else {
            ""
        };
        push(&[
            "-drive",
            &format!(
                "id=disk0,if=none,format={},file={}{readonly}",
                disk_format(disk),
                opt_path(disk)
            ),
        ]);
        push(&["-device", "virtio-blk-device,drive=disk0"]);
    }
    if let Some(net) = &cfg.net {
        // The tap exists already (the node creates it, attached to its bridge): QEMU only
        // opens it; no scripts.
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
        ]);
        push(&[
            "-device",
            &format!("virtio-net-device,netdev=net0,mac={}", net.mac),
        ]);
    }
    argv
}

/// `qcow2` by extension, else `raw`.
pub fn disk_format(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("qcow2") => "qcow2",
        _ => "raw",
    }
}

/// A path inside a QEMU `key=value,...` option: commas are doubled.
fn opt_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

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

fn qmp_error(socket: &Path, message: impl std::fmt::Display) -> DriverError {
    DriverError::Qmp {
        socket: socket.to_path_buf(),
        message: message.to_string(),
    }
}

/// Connect, negotiate capabilities, run one command; all within [`QMP_TIMEOUT`].
macro_rules! qmp_execute {
    ($socket:expr, $command:expr) => {{
        let socket: &Path = $socket;
        let run = async {
            let stream = QmpStreamTokio::open_uds(socket)
                .await
                .map_err(|e| qmp_error(socket, e))?;
            let mut stream = stream.negotiate().await.map_err(|e| qmp_error(socket, e))?;
            stream
                .execute($command)
                .await
                .map_err(|e| qmp_error(socket, e))
        };
        match timeout(QMP_TIMEOUT, run).await {
            Ok(result) => result,
            Err(_) => Err(qmp_error(
                socket,
                format!("no answer within {QMP_TIMEOUT:?}"),
            )),
        }
    }};
}

/// QMP `query-status`.
pub async fn query_status(socket: &Path) -> Result<qmp::RunState, DriverError> {
    qmp_execute!(socket, qmp::query_status {}).map(|info| info.status)
}

/// QMP `system_powerdown` (ACPI power button).
pub async fn system_powerdown(socket: &Path) -> Result<(), DriverError> {
    qmp_execute!(socket, qmp::system_powerdown {}).map(|_| ())
}

/// QMP `quit`.
pub async fn quit(socket: &Path) -> Result<(), DriverError> {
    qmp_execute!(socket, qmp::quit {}).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn paths() -> QemuPaths {
        QemuPaths::in_dir(Path::new("/run/blixard/vm1"))
    }

    #[test]
    fn argv_kernel_initrd_tcg() {
        let mut cfg = VmConfig::new("vm1");
        cfg.vcpus = 2;
        cfg.memory_mb = 256;
        cfg.kernel = Some("/g/vmlinuz".into());
        cfg.initrd = Some("/g/initrd.cpio".into());
        assert_eq!(
            build_argv(&cfg, &paths(), Accel::Tcg),
            s(&[
                "-name",
                "vm1",
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=on",
                "-accel",
                "tcg",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-m",
                "256M",
                "-smp",
                "2",
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
                "-qmp",
                "unix:/run/blixard/vm1/qmp.sock,server=on,wait=off",
                "-kernel",
                "/g/vmlinuz",
                "-initrd",
                "/g/initrd.cpio",
                "-append",
                "console=ttyS0 panic=-1 tsc_early_khz=1000000",
            ])
        );
    }

    #[test]
    fn argv_kvm_disk_cmdline() {
        let mut cfg = VmConfig::new("db");
        cfg.kernel = Some("/g/vmlinuz".into());
        cfg.cmdline = Some(" root=/dev/vda rw ".into());
        cfg.disk_image = Some("/img/root,1.qcow2".into());
        assert_eq!(
            build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/db")), Accel::Kvm),
            s(&[
                "-name",
                "db",
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=on",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-m",
                "128M",
                "-smp",
                "1",
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
                "-qmp",
                "unix:/r/db/qmp.sock,server=on,wait=off",
                "-kernel",
                "/g/vmlinuz",
                "-append",
                "console=ttyS0 panic=-1 root=/dev/vda rw",
                "-drive",
                "id=disk0,if=none,format=qcow2,file=/img/root,,1.qcow2",
                "-device",
                "virtio-blk-device,drive=disk0",
            ])
        );
    }

    #[test]
    fn argv_readonly_disk() {
        let mut cfg = VmConfig::new("ro");
        cfg.disk_image = Some("/img/base.img".into());
        cfg.disk_readonly = true;
        let argv = build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/ro")), Accel::Tcg);
        assert!(argv
            .contains(&"id=disk0,if=none,format=raw,file=/img/base.img,readonly=on".to_string()));
    }

    #[test]
    fn argv_raw_disk_without_kernel() {
        let mut cfg = VmConfig::new("raw");
        cfg.disk_image = Some("/img/disk.img".into());
        let argv = build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/raw")), Accel::Tcg);
        assert!(!argv.iter().any(|a| a == "-kernel" || a == "-append"));
        assert_eq!(
            argv[argv.len() - 4..],
            s(&[
                "-drive",
                "id=disk0,if=none,format=raw,file=/img/disk.img",
                "-device",
                "virtio-blk-device,drive=disk0"
            ])
        );
    }

    #[test]
    fn argv_network_interface_on_a_tap() {
        let mut cfg = VmConfig::new("web");
        cfg.kernel = Some("/g/vmlinuz".into());
        cfg.net = Some(crate::NetAttachment {
            tap: "bx1a2bt0a0b0c0d".into(),
            mac: "02:b1:0a:58:00:05".into(),
        });
        let argv = build_argv(&cfg, &QemuPaths::in_dir(Path::new("/r/web")), Accel::Tcg);
        assert_eq!(
            argv[argv.len() - 4..],
            s(&[
                "-netdev",
                "tap,id=net0,ifname=bx1a2bt0a0b0c0d,script=no,downscript=no",
                "-device",
                "virtio-net-device,netdev=net0,mac=02:b1:0a:58:00:05"
            ])
        );
        let driver = QemuDriver::new("/r").with_accel(Accel::Tcg);
        cfg.net = Some(crate::NetAttachment {
            tap: "x".repeat(16),
            mac: "02:b1:0a:58:00:05".into(),
        });
        let err = driver.validate(&cfg).expect_err("long tap name");
        assert!(err.to_string().contains("bad network attachment"), "{err}");
    }

    #[test]
    fn accel_needs_flags_and_device() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
        let amd = "processor\t: 0\nflags\t\t: fpu svm sse2\n";
        let none = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n";
        let lookalike = "processor\t: 0\nflags\t\t: vmxx svm_lock\nmodel name\t: vmx svm\n";
        assert_eq!(choose_accel(intel, true), Accel::Kvm);
        assert_eq!(choose_accel(amd, true), Accel::Kvm);
        assert_eq!(choose_accel(intel, false), Accel::Tcg);
        assert_eq!(choose_accel(none, true), Accel::Tcg);
        assert_eq!(choose_accel(lookalike, true), Accel::Tcg);
        assert_eq!(choose_accel("", true), Accel::Tcg);
    }

    #[test]
    fn validate_names_missing_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let driver = QemuDriver::new(dir.path()).with_accel(Accel::Tcg);
        let mut cfg = VmConfig::new("v");
        assert!(matches!(
            driver.validate(&cfg),
            Err(DriverError::InvalidConfig { .. })
        ));
        cfg.kernel = Some(dir.path().join("no-such-kernel"));
        let err = driver.validate(&cfg).expect_err("missing kernel");
        assert!(err.to_string().contains("no-such-kernel"), "{err}");
        let kernel = dir.path().join("k");
        std::fs::write(&kernel, b"k").expect("write");
        cfg.kernel = Some(kernel);
        cfg.initrd = Some(dir.path().join("no-such-initrd"));
        let err = driver.validate(&cfg).expect_err("missing initrd");
        assert!(
            err.to_string().contains("initrd not found at")
                && err.to_string().contains("no-such-initrd"),
            "{err}"
        );
    }
}
