//! The pure part of the QEMU driver: which accelerator to use ([`choose_accel`]) and QEMU's
//! command line for a config ([`build_argv`], golden-tested in `tests`).

use std::path::{Path, PathBuf};

use super::{BASE_CMDLINE, MACHINE, TCG_CMDLINE};
use crate::rundir::{CONSOLE, QMP_SOCKET};
use crate::VmConfig;

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
