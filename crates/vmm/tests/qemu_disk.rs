//! A VM's disk writes never reach its base image: real QEMU boots of the default guest whose
//! init is replaced (a second cpio archive appended to the initramfs) by one that writes the
//! start of `/dev/vda` and syncs it.
//!
//! Needs `scripts/setup.sh` to have run (guest kernel, qemu-img): without them these tests
//! FAIL with a message saying so (they never pass silently).

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blixard_vmm::qemu::host_accel;
use blixard_vmm::{default_guest, guest, QemuDriver, RunState, VmConfig, VmDriver};
use common::{wait_for, wait_state, KillGuard};

/// Generous: TCG on a loaded 2-core machine.
const BOOT: Duration = Duration::from_secs(90);
const MARK: &str = "BLIXARD-DISK-WRITE";

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in $(cat /lib/modules/order); do insmod "/lib/modules/$m.ko"; done
i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if echo BLIXARD-DISK-WRITE | /bin/busybox dd of=/dev/vda conv=fsync 2>/dev/null; then
    echo "disk-test: wrote"
else
    echo "disk-test: write refused"
fi
echo BLIXARD-READY
while :; do sleep 3600; done
"#;

/// The default guest's initramfs with [`INIT`] appended as a later `/init`.
fn writer_initrd(dir: &Path) -> (PathBuf, PathBuf) {
    let (kernel, initrd) = default_guest(&guest::guest_dir())
        .unwrap_or_else(|e| panic!("the default guest is not usable: {e}"));
    let mut bytes = std::fs::read(&initrd).expect("read initramfs");
    while bytes.len() % 4 != 0 {
        bytes.push(0);
    }
    let entry = (
        cpio::newc::Builder::new("init")
            .mode(0o755)
            .set_mode_file_type(cpio::newc::ModeFileType::Regular),
        Cursor::new(INIT.as_bytes().to_vec()),
    );
    let extra = cpio::write_cpio(std::iter::once(entry), Vec::new()).expect("cpio");
    bytes.extend(extra);
    let out = dir.join("writer-initrd.cpio");
    std::fs::write(&out, bytes).expect("write initramfs");
    (kernel, out)
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_string()
}

async fn console_line(driver: &QemuDriver, name: &str) -> String {
    let path = driver.console_path(name);
    wait_for(BOOT, "the guest's disk test line", || {
        let path = path.clone();
        async move {
            let c = std::fs::read_to_string(&path).ok()?;
            c.lines()
                .find(|l| l.starts_with("disk-test:"))
                .map(|l| l.trim().to_string())
        }
    })
    .await
}

async fn run(readonly: bool) {
    assert!(
        std::process::Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-img is missing: run scripts/setup.sh (as root)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("run");
    let _guard = KillGuard::new(&root);
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    let base = images.join("base.img");
    std::fs::write(&base, vec![0x5au8; 1 << 20]).expect("base image");
    let before = sha256(&base);

    let (kernel, initrd) = writer_initrd(tmp.path());
    let name = if readonly { "ro" } else { "rw" };
    let mut cfg = VmConfig::new(name);
    cfg.memory_mb = 256;
    cfg.kernel = Some(kernel);
    cfg.initrd = Some(initrd);
    cfg.disk_image =
        Some(blixard_vmm::images::resolve("disk image", "base.img", &[images]).expect("inside"));
    cfg.disk_readonly = readonly;
    let driver = QemuDriver::new(&root)
        .with_supervisor(common::supervisor())
        .with_accel(host_accel());
    driver.start(&cfg, 1).await.expect("start");
    let line = console_line(&driver, name).await;
    wait_state(&driver, name, BOOT, "Running", |s| *s == RunState::Running).await;
    driver
        .stop(name, Duration::from_secs(5))
        .await
        .expect("stop");

    let overlay = root.join(name).join(blixard_vmm::images::OVERLAY);
    if readonly {
        assert_eq!(line, "disk-test: write refused");
        assert!(!overlay.exists(), "no overlay for a read-only disk");
    } else {
        assert_eq!(line, "disk-test: wrote");
        // The write is in the overlay...
        let flat = tmp.path().join("flat.raw");
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&overlay)
            .arg(&flat)
            .output()
            .expect("qemu-img convert");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data = std::fs::read(&flat).expect("flattened overlay");
        assert!(
            data.starts_with(MARK.as_bytes()),
            "the guest's write is in the overlay"
        );
    }
    // ... and never in the base image.
    assert_eq!(sha256(&base), before, "the base image was written");
    let bytes = std::fs::read(&base).expect("base");
    assert!(bytes.iter().all(|b| *b == 0x5a));

    driver.remove(name).await.expect("remove");
    assert!(!overlay.exists(), "the overlay goes with the VM");
}

#[tokio::test]
async fn a_vm_writing_its_disk_leaves_the_base_image_unchanged() {
    run(false).await;
}

#[tokio::test]
async fn a_read_only_disk_cannot_be_written() {
    run(true).await;
}
