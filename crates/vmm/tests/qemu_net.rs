//! The default guest's devices under real QEMU: a VM with a virtio-net interface on a host tap
//! answers HTTP with its name at the address given by `ip=`, and a VM with a disk image sees
//! (and mounts) `/dev/vda`.
//!
//! Needs root (tap devices) and `scripts/setup-guest.sh` (kernel, modules): without them these
//! tests FAIL with a message saying so.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use blixard_vmm::qemu::host_accel;
use blixard_vmm::{default_guest, guest, NetAttachment, QemuDriver, RunState, VmConfig, VmDriver};
use common::{wait_for, wait_state, KillGuard};

const BOOT: Duration = Duration::from_secs(90);

fn guest_config(name: &str) -> VmConfig {
    let (kernel, initrd) = default_guest(&guest::guest_dir())
        .unwrap_or_else(|e| panic!("the default guest is not usable: {e}"));
    let mut cfg = VmConfig::new(name);
    cfg.memory_mb = 256;
    cfg.kernel = Some(kernel);
    cfg.initrd = Some(initrd);
    cfg
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host tap with an address, deleted on drop.
struct Tap(String);

impl Tap {
    fn new(name: &str, host: Ipv4Addr) -> Self {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = Tap(name.to_string());
        ip(&["addr", "add", &format!("{host}/24"), "dev", name]);
        ip(&["link", "set", name, "up"]);
        tap
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// `GET /` over plain TCP; the body on success.
fn http_get(addr: Ipv4Addr) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((addr, 80)), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vm\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[tokio::test]
async fn guest_answers_http_on_its_address_and_sees_its_disk() {
    // A subnet of its own per test process, so parallel runs do not collide.
    let third = (std::process::id() % 200) as u8 + 20;
    let host = Ipv4Addr::new(10, 213, third, 1);
    let vm_ip = Ipv4Addr::new(10, 213, third, 7);
    let tap = Tap::new(&format!("bxtest{}", std::process::id() % 100_000), host);

    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let disk = root.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk image");

    let mut cfg = guest_config("web1");
    cfg.net = Some(NetAttachment {
        tap: tap.0.clone(),
        mac: "02:b1:0a:d5:00:07".into(),
    });
    cfg.cmdline = Some(format!("ip={vm_ip}::{host}:255.255.255.0:web1:eth0:off"));
    cfg.disk_image = Some(disk);
    let driver = QemuDriver::new(root.path())
        .with_supervisor(common::supervisor())
        .with_accel(host_accel());
    driver.start(&cfg, 1).await.expect("start");
    wait_state(&driver, "web1", BOOT, "Running", |s| {
        *s == RunState::Running
    })
    .await;

    let console = std::fs::read_to_string(driver.console_path("web1")).expect("console");
    assert!(
        console.contains("blixard: eth0 10.213."),
        "eth0 configured:\n{console}"
    );
    assert!(
        console.contains("blixard: /dev/vda present"),
        "the disk is visible:\n{console}"
    );
    let body = wait_for(
        Duration::from_secs(30),
        "the guest's httpd to answer",
        || async move { http_get(vm_ip) },
    )
    .await;
    assert_eq!(body.trim(), "web1");

    driver
        .stop("web1", Duration::from_secs(5))
        .await
        .expect("stop");
    driver.remove("web1").await.expect("remove");
}
