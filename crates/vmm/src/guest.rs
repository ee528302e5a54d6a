//! The default guest: the Debian cloud kernel plus a tiny busybox initramfs built here.
//!
//! `scripts/setup-guest.sh` installs the kernel at `<guest_dir>/vmlinuz`, the modules of the
//! virtio drivers at `<guest_dir>/modules/` (Debian builds `virtio_mmio`, `virtio_blk` and
//! `virtio_net` as modules; `modules/order` lists them dependencies first), and busybox-static
//! on the host. [`build_initramfs_with_modules`] writes a newc cpio archive (uncompressed: the
//! kernel takes it as is) with busybox at `/bin/busybox`, applet symlinks, `/dev/console`, the
//! modules under `/lib/modules/`, and an `/init` that:
//!
//! 1. mounts proc/sys/dev and loads the modules (busybox `insmod`, in `order`);
//! 2. configures `eth0` from the kernel parameter `ip=ADDR::GATEWAY:NETMASK:HOSTNAME:eth0:off`
//!    (the classic `ip=` syntax, which the node passes to every VM with an address, custom
//!    images included) and starts busybox `httpd` on port 80 serving the hostname (the VM's
//!    name), so reachability is testable end to end;
//! 3. mounts `/dev/vda` on `/mnt/vda` when a disk is attached (and says so on the console);
//! 4. prints [`crate::READY_LINE`] on the console and runs a root shell there (`vm console`).
//!
//! The guest does not handle ACPI power-down (a bare busybox has no listener for the power
//! button without the kernel's evdev module), so a graceful stop of this guest ends with QMP
//! `quit` once the grace period is over: keep that grace short for the default guest.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cpio::newc::{Builder, ModeFileType};

use crate::DriverError;

/// Where `scripts/setup-guest.sh` puts the kernel unless `BLIXARD_GUEST_DIR` says otherwise.
pub const DEFAULT_GUEST_DIR: &str = "/var/lib/blixard/guest";
/// busybox-static's binary on Debian.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// Bumped whenever the archive's content changes, so cached archives are rebuilt.
const INITRAMFS_FILE: &str = "initramfs-v3.cpio";
/// The modules directory inside the guest dir and inside the initramfs.
pub const MODULES_DIR: &str = "modules";
/// The load-order file in [`MODULES_DIR`].
pub const MODULES_ORDER: &str = "order";

const INIT: &str = r#"#!/bin/sh
# blixard default guest init
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The virtio drivers (modules in the Debian cloud kernel), dependencies first.
if [ -f /lib/modules/order ]; then
    for m in $(cat /lib/modules/order); do
        insmod "/lib/modules/$m.ko" || echo "blixard: cannot load module $m"
    done
fi
ip link set lo up
ipconf=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ip=*) ipconf="${arg#ip=}" ;;
    esac
done
if [ -n "$ipconf" ]; then
    # ip=ADDR:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF
    IFS=:
    set -- $ipconf
    unset IFS
    addr="$1"; gw="$3"; mask="${4:-255.255.255.0}"; name="${5:-blixard}"; dev="${6:-eth0}"
    hostname "$name"
    i=0
    while [ ! -e "/sys/class/net/$dev" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    if ifconfig "$dev" "$addr" netmask "$mask" up; then
        echo "blixard: $dev $addr netmask $mask"
        [ -n "$gw" ] && route add default gw "$gw"
        mkdir -p /www
        echo "$name" > /www/index.html
        httpd -h /www -p 80 && echo "blixard: httpd serving $name on port 80"
    else
        echo "blixard: cannot configure $dev (no virtio-net device?)"
    fi
fi
if [ -b /dev/vda ]; then
    mkdir -p /mnt/vda
    if mount /dev/vda /mnt/vda 2>/dev/null; then
        echo "blixard: /dev/vda mounted on /mnt/vda"
    else
        echo "blixard: /dev/vda present (no filesystem mounted)"
    fi
fi
echo "BLIXARD-READY"
# A root shell on the serial console (`blixard vm console`), started again when it exits:
# PID 1 must not exit. Stop comes from the host (QMP quit).
while :; do setsid cttyhack sh; sleep 1; done
"#;

const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "sleep", "echo", "cat", "ls", "mkdir", "poweroff", "reboot", "insmod",
    "ip", "ifconfig", "route", "hostname", "httpd", "wget", "ping", "ps", "grep", "setsid",
    "cttyhack",
];

/// `BLIXARD_GUEST_DIR` or [`DEFAULT_GUEST_DIR`].
pub fn guest_dir() -> PathBuf {
    std::env::var_os("BLIXARD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR))
}

/// Write the initramfs without kernel modules to `out` (see [`build_initramfs_with_modules`]).
pub fn build_initramfs(busybox: &Path, out: &Path) -> Result<(), DriverError> {
    build_initramfs_with_modules(busybox, None, out)
}

/// The modules listed in `<dir>/order`, as (name, bytes), in that order.
fn read_modules(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, DriverError> {
    let order_path = dir.join(MODULES_ORDER);
    let order =
        fs::read_to_string(&order_path).map_err(|e| DriverError::io("reading", &order_path, e))?;
    order
        .split_whitespace()
        .map(|name| {
            let path = dir.join(format!("{name}.ko"));
            fs::read(&path)
                .map(|b| (name.to_string(), b))
                .map_err(|e| DriverError::io("reading module", &path, e))
        })
        .collect()
}

/// Write the initramfs to `out` (atomically: a temporary file renamed into place), with the
/// kernel modules listed in `<modules>/order` when given.
pub fn build_initramfs_with_modules(
    busybox: &Path,
    modules: Option<&Path>,
    out: &Path,
) -> Result<(), DriverError> {
    let modules = match modules {
        Some(dir) => read_modules(dir)?,
        None => Vec::new(),
    };
    let busybox_bytes = fs::read(busybox).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DriverError::BusyboxMissing {
            path: busybox.to_path_buf(),
        },
        _ => DriverError::io("reading", busybox, e),
    })?;

    let dir = |name: &str| {
        (
            Builder::new(name)
                .mode(0o755)
                .set_mode_file_type(ModeFileType::Directory),
            Vec::new(),
        )
    };
    let file = |name: &str, mode: u32, data: Vec<u8>| {
        (
            Builder::new(name)
                .mode(mode)
                .set_mode_file_type(ModeFileType::Regular)
                .nlink(1),
            data,
        )
    };
    let symlink = |name: &str, target: &str| {
        (
            Builder::new(name)
                .mode(0o777)
                .set_mode_file_type(ModeFileType::Symlink),
            target.as_bytes().to_vec(),
        )
    };

    let mut entries: Vec<(Builder, Vec<u8>)> = ["bin", "dev", "proc", "sys", "tmp", "root", "etc"]
        .into_iter()
        .map(dir)
        .collect();
    entries.push((
        Builder::new("dev/console")
            .mode(0o600)
            .set_mode_file_type(ModeFileType::Char)
            .rdev_major(5)
            .rdev_minor(1),
        Vec::new(),
    ));
    entries.push(file("bin/busybox", 0o755, busybox_bytes));
    entries.extend(
        APPLETS
            .iter()
            .map(|applet| symlink(&format!("bin/{applet}"), "busybox")),
    );
    entries.push(file("init", 0o755, INIT.as_bytes().to_vec()));
    if !modules.is_empty() {
        entries.push(dir("lib"));
        entries.push(dir("lib/modules"));
        let order: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
        entries.push(file(
            "lib/modules/order",
            0o644,
            format!("{}\n", order.join(" ")).into_bytes(),
        ));
        for (name, bytes) in &modules {
            entries.push(file(
                &format!("lib/modules/{name}.ko"),
                0o644,
                bytes.clone(),
            ));
        }
    }

    let mut tmp_name = out.as_os_str().to_owned();
    // Unique per call: several threads (or processes) may build the cache at once.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    tmp_name.push(format!(
        ".tmp{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp_name);
    let output = fs::File::create(&tmp).map_err(|e| DriverError::io("creating", &tmp, e))?;
    let inputs = entries
        .into_iter()
        .map(|(builder, data)| (builder, Cursor::new(data)));
    let written = cpio::write_cpio(inputs, std::io::BufWriter::new(output))
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(DriverError::io("writing initramfs", &tmp, e));
    }
    fs::rename(&tmp, out).map_err(|e| DriverError::io("renaming", &tmp, e))
}

/// The default guest's `(kernel, initrd)`. The kernel must be there (installed by
/// `scripts/setup-guest.sh`); the initramfs is built from `/bin/busybox` and the modules in
/// `<guest_dir>/modules` on first use and cached in `guest_dir`. Without the modules (a guest
/// dir from an older setup script) it says to run the script again.
pub fn default_guest(guest_dir: &Path) -> Result<(PathBuf, PathBuf), DriverError> {
    let kernel = guest_dir.join("vmlinuz");
    if !kernel.is_file() {
        return Err(DriverError::GuestKernelMissing { path: kernel });
    }
    let modules = guest_dir.join(MODULES_DIR);
    if !modules.join(MODULES_ORDER).is_file() {
        return Err(DriverError::GuestKernelMissing {
            path: modules.join(MODULES_ORDER),
        });
    }
    let initrd = guest_dir.join(INITRAMFS_FILE);
    if !initrd.is_file() {
        tracing::info!(path = %initrd.display(), "building the default guest initramfs");
        build_initramfs_with_modules(Path::new(DEFAULT_BUSYBOX), Some(&modules), &initrd)?;
    }
    Ok((kernel, initrd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_has_init_busybox_console() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake_busybox = dir.path().join("busybox");
        fs::write(&fake_busybox, b"\x7fELF fake").expect("write");
        let modules = dir.path().join("modules");
        fs::create_dir(&modules).expect("mkdir");
        fs::write(modules.join("a.ko"), b"AAAA").expect("write");
        fs::write(modules.join("b.ko"), b"BB").expect("write");
        fs::write(modules.join(MODULES_ORDER), b"b a\n").expect("write");
        let out = dir.path().join("initrd.cpio");
        build_initramfs_with_modules(&fake_busybox, Some(&modules), &out).expect("build");

        let mut reader = fs::File::open(&out).expect("open");
        let mut seen = Vec::new();
        loop {
            let entry = cpio::NewcReader::new(reader).expect("entry");
            if entry.entry().is_trailer() {
                break;
            }
            let e = entry.entry();
            seen.push((
                e.name().to_string(),
                e.mode(),
                e.rdev_major(),
                e.rdev_minor(),
                e.file_size(),
            ));
            reader = entry.finish().expect("next");
        }
        let find = |n: &str| {
            seen.iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing: {seen:?}"))
                .clone()
        };
        assert_eq!(find("init").1, 0o100755);
        assert_eq!(find("init").4 as usize, INIT.len());
        assert_eq!(find("bin/busybox").4, 9);
        assert_eq!(find("bin/sh").1 & 0o170000, 0o120000, "symlink");
        assert_eq!(find("bin/httpd").1 & 0o170000, 0o120000, "symlink");
        assert_eq!(find("lib/modules/a.ko").4, 4);
        assert_eq!(find("lib/modules/b.ko").4, 2);
        assert_eq!(find("lib/modules/order").4, 4, "b a\\n");
        assert_eq!(
            find("dev/console"),
            ("dev/console".into(), 0o020600, 5, 1, 0)
        );
    }

    #[test]
    fn missing_busybox_and_kernel_say_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = build_initramfs(&dir.path().join("nope"), &dir.path().join("out"))
            .expect_err("no busybox");
        assert!(err.to_string().contains("setup-guest.sh"), "{err}");
        let err = default_guest(dir.path()).expect_err("no kernel");
        assert!(
            err.to_string().contains("run scripts/setup-guest.sh"),
            "{err}"
        );
    }
}
