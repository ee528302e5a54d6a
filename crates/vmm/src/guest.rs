//! The default guest: the Debian cloud kernel plus a tiny busybox initramfs built here.
//!
//! `scripts/setup-guest.sh` installs the kernel at `<guest_dir>/vmlinuz` (and busybox-static
//! on the host). [`build_initramfs`] writes a newc cpio archive (uncompressed: the kernel
//! takes it as is) with busybox at `/bin/busybox`, a few applet symlinks, `/dev/console`, and
//! an `/init` that mounts proc/sys/dev, prints [`crate::READY_LINE`] on the console and idles.
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
const INITRAMFS_FILE: &str = "initramfs-v1.cpio";

const INIT: &str = r#"#!/bin/sh
# blixard default guest init
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "BLIXARD-READY"
# Idle forever: PID 1 must not exit. Stop comes from the host (QMP quit).
while :; do sleep 3600; done
"#;

const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "sleep", "echo", "cat", "ls", "mkdir", "poweroff", "reboot",
];

/// `BLIXARD_GUEST_DIR` or [`DEFAULT_GUEST_DIR`].
pub fn guest_dir() -> PathBuf {
    std::env::var_os("BLIXARD_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR))
}

/// Write the initramfs to `out` (atomically: a temporary file renamed into place).
pub fn build_initramfs(busybox: &Path, out: &Path) -> Result<(), DriverError> {
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
/// `scripts/setup-guest.sh`); the initramfs is built from `/bin/busybox` on first use and
/// cached in `guest_dir`.
pub fn default_guest(guest_dir: &Path) -> Result<(PathBuf, PathBuf), DriverError> {
    let kernel = guest_dir.join("vmlinuz");
    if !kernel.is_file() {
        return Err(DriverError::GuestKernelMissing { path: kernel });
    }
    let initrd = guest_dir.join(INITRAMFS_FILE);
    if !initrd.is_file() {
        tracing::info!(path = %initrd.display(), "building the default guest initramfs");
        build_initramfs(Path::new(DEFAULT_BUSYBOX), &initrd)?;
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
        let out = dir.path().join("initrd.cpio");
        build_initramfs(&fake_busybox, &out).expect("build");

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
