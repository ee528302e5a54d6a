//! VM drivers: how a blixard node boots, watches and stops virtual machines.
//!
//! The node's executor talks to the hypervisor only through the [`VmDriver`] trait. Two
//! drivers implement it:
//!
//! - [`QemuDriver`]: QEMU `-M microvm`, controlled over QMP, serial console captured to a file;
//! - [`ProcessDriver`]: the "VM" is a supervised host process (hosts without QEMU, tests at
//!   scale).
//!
//! # Stateless by construction
//!
//! A driver keeps nothing in memory that cannot be rediscovered from the host. Each VM owns a
//! run directory `<run_root>/<name>/` (see [`rundir`]) holding `meta.json` (name, epoch, pid,
//! driver kind, config, start time), the console log, the QMP socket (qemu) and the markers
//! written by the supervisor (`exit_code`) and by [`VmDriver::stop`] (`stop_requested`).
//! VMM processes run detached under a [`supervisor`] each (own session, re-parented away from
//! the daemon; the supervisor fences its VM on the node's lease), so a
//! restarted daemon re-attaches by scanning the run directories: [`VmDriver::list`] is always
//! computed from disk and `/proc`.
//!
//! # Readiness
//!
//! A VM is `Running` once its console contains [`VmConfig::ready_line`] (by default
//! [`READY_LINE`], printed by blixard's guest init and by the idle workload). With
//! `ready_line: None` the fallback is explicit: QMP `query-status == running` for qemu, the
//! process being alive for the process driver.
//!
//! The default guest (Debian cloud kernel + a busybox initramfs built here) is in [`guest`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod guest;
pub mod images;
pub mod process;
pub mod qemu;
pub mod rundir;
pub mod supervisor;

pub use guest::{build_initramfs, build_initramfs_with_modules, default_guest, DEFAULT_GUEST_DIR};
pub use process::{idle_workload, ProcessDriver};
pub use qemu::{build_argv, choose_accel, Accel, QemuDriver, QemuPaths};
pub use rundir::{read_events, Event, EventKind, EVENTS_FILE_ENV, LEASE_FILE_ENV};

/// The line a guest prints on its console once it is up.
pub const READY_LINE: &str = "BLIXARD-READY";

/// Longest accepted VM name (it is a directory name and part of the QMP socket path). The
/// same limit as the cluster's (`blixard_core::spec::MAX_NAME_LEN`, a DNS label); the node
/// checks at compile time that they agree.
pub const MAX_NAME_LEN: usize = 63;

/// What to boot. Serialized into `meta.json` so a restarted daemon knows what it watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Unique on the host: `[A-Za-z0-9_.-]`, not starting with `.` or `-`, at most
    /// [`MAX_NAME_LEN`] bytes.
    pub name: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    /// Guest kernel (qemu; required by [`QemuDriver`]).
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (qemu).
    pub initrd: Option<PathBuf>,
    /// Extra kernel command line, appended after `console=ttyS0 ...`.
    pub cmdline: Option<String>,
    /// Root disk image, attached as a virtio-blk device (raw, or qcow2 by `.qcow2` extension).
    /// Never written: qemu gives the VM a copy-on-write overlay of it (see [`images`]).
    pub disk_image: Option<PathBuf>,
    /// Attach the disk image read-only instead of through an overlay.
    #[serde(default)]
    pub disk_readonly: bool,
    /// The console line that marks the VM ready. `None`: no readiness line (custom images
    /// without blixard's init); qemu then uses QMP `query-status == running`, the process
    /// driver "process alive".
    #[serde(default = "default_ready_line")]
    pub ready_line: Option<String>,
    /// A network interface (qemu: virtio-net on an existing tap device; the process driver
    /// has no networking and ignores it).
    #[serde(default)]
    pub net: Option<NetAttachment>,
}

/// A VM's network interface: the host tap device it is attached to and its MAC address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAttachment {
    /// An existing tap device on the host (at most 15 bytes).
    pub tap: String,
    /// `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
}

fn default_ready_line() -> Option<String> {
    Some(READY_LINE.to_string())
}

impl VmConfig {
    /// A config with 1 vcpu, 128 MiB, no images, and the default [`READY_LINE`].
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            vcpus: 1,
            memory_mb: 128,
            kernel: None,
            initrd: None,
            cmdline: None,
            disk_image: None,
            disk_readonly: false,
            ready_line: default_ready_line(),
            net: None,
        }
    }
}

/// What a driver observes about one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// The VMM process is alive but the guest is not ready yet.
    Starting,
    /// Alive and ready.
    Running,
    /// Exited after a requested stop.
    Stopped { exit_code: Option<i32> },
    /// Exited without being asked to (crash, kill, guest power-off, host reboot...).
    Failed { reason: String },
}

impl RunState {
    /// True while the VMM process is alive.
    pub fn is_alive(&self) -> bool {
        matches!(self, RunState::Starting | RunState::Running)
    }
}

/// One VM as found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub name: String,
    /// The epoch the VM was started with (see the design's invariant 4).
    pub epoch: u64,
    /// The VMM (qemu) or workload process id, once known.
    pub pid: Option<u32>,
    pub state: RunState,
}

/// Errors of the drivers. Messages say what went wrong and what to do about it.
#[derive(thiserror::Error, Debug)]
pub enum DriverError {
    #[error("invalid VM name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("invalid VM config for {name:?}: {why}")]
    InvalidConfig { name: String, why: String },
    #[error("{what} not found at {}: check the path (for the default guest run scripts/setup-guest.sh)", path.display())]
    MissingFile { what: &'static str, path: PathBuf },
    /// A host file the VM may not be given (outside the image directories, or missing: one
    /// message for both).
    #[error("{why}")]
    Refused { why: String },
    #[error("VM {name:?} is already running with epoch {running_epoch} (asked for epoch {requested_epoch}): stop it first")]
    AlreadyRunning {
        name: String,
        running_epoch: u64,
        requested_epoch: u64,
    },
    #[error("VM {name:?} is still running: stop it before removing it")]
    StillRunning { name: String },
    #[error("VM {name:?} failed to start: {reason}")]
    StartFailed { name: String, reason: String },
    #[error("VM {name:?} did not stop within {waited:?} even after SIGKILL (pid {pid}); check the host (process in D state?)")]
    StopTimeout {
        name: String,
        pid: u32,
        waited: Duration,
    },
    #[error(
        "cannot run {program}: {source} (is it installed? for qemu run scripts/setup-guest.sh)"
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP on {}: {message}", socket.display())]
    Qmp { socket: PathBuf, message: String },
    #[error("corrupt run directory {}: {why} (remove it by hand if the VM is not running)", dir.display())]
    CorruptRunDir { dir: PathBuf, why: String },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest kernel or its modules not found at {}: run scripts/setup-guest.sh (as root) to install them", path.display())]
    GuestKernelMissing { path: PathBuf },
    #[error("busybox (static) not found at {}: run scripts/setup-guest.sh (as root) to install busybox-static", path.display())]
    BusyboxMissing { path: PathBuf },
}

impl DriverError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        DriverError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The executor's view of a hypervisor. Object safe: the node holds `Arc<dyn VmDriver>`.
///
/// Calls for different VMs may run concurrently; calls for the same VM must not (the executor
/// serializes its actions per VM).
#[async_trait::async_trait]
pub trait VmDriver: Send + Sync {
    /// `"qemu"` or `"process"`; recorded in `meta.json`.
    fn kind(&self) -> &'static str;

    /// Validate a config before it is accepted (bad name, zero sizes, missing
    /// kernel/initrd/image: the error names the path).
    fn validate(&self, cfg: &VmConfig) -> Result<(), DriverError>;

    /// Boot the VM detached; returns once the VMM process is up (state `Starting`).
    /// Idempotent: if a VM with this name and epoch is already alive, `Ok`. An alive VM with
    /// another epoch is an error ([`DriverError::AlreadyRunning`]); leftovers of an exited
    /// VM with this name are replaced.
    async fn start(&self, cfg: &VmConfig, epoch: u64) -> Result<(), DriverError>;

    /// Graceful stop (ACPI power-down over QMP for qemu, SIGTERM for a process), waiting up
    /// to `grace`, then forced (QMP `quit`, then SIGKILL). Idempotent: stopping a VM that is
    /// not running (or unknown) is `Ok`.
    async fn stop(&self, name: &str, grace: Duration) -> Result<(), DriverError>;

    /// Everything this driver has on this host, from the run directories.
    async fn list(&self) -> Result<Vec<Observed>, DriverError>;

    /// Forget a stopped VM: remove its run directory. Unknown name: `Ok`.
    async fn remove(&self, name: &str) -> Result<(), DriverError>;

    /// Where the VM's console (serial output, or workload stdout+stderr) is written.
    fn console_path(&self, name: &str) -> PathBuf;

    /// Where input for the VM's console is written (a FIFO read by the VM's process), when
    /// the driver has console input (qemu: the guest serial). `None`: output only.
    fn console_input_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }
}

/// Check that `name` is usable as a run directory name.
pub fn validate_name(name: &str) -> Result<(), DriverError> {
    let bad = |why| {
        Err(DriverError::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 63 bytes");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return bad("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// Checks shared by both drivers: name and sizes.
pub(crate) fn validate_common(cfg: &VmConfig) -> Result<(), DriverError> {
    validate_name(&cfg.name)?;
    let bad = |why: &str| {
        Err(DriverError::InvalidConfig {
            name: cfg.name.clone(),
            why: why.to_string(),
        })
    };
    if cfg.vcpus == 0 {
        return bad("vcpus must be at least 1");
    }
    if cfg.memory_mb == 0 {
        return bad("memory_mb must be at least 1");
    }
    if let Some(line) = &cfg.ready_line {
        if line.is_empty() || line.contains('\n') {
            return bad("ready_line must be a non-empty single line");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "a b",
            "..",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn config_ready_line_defaults_when_absent_from_json() {
        let json = r#"{"name":"a","vcpus":1,"memory_mb":64,"kernel":null,"initrd":null,"cmdline":null,"disk_image":null}"#;
        let cfg: VmConfig = serde_json::from_str(json).expect("parse");
        assert_eq!(cfg.ready_line.as_deref(), Some(READY_LINE));
    }
}
