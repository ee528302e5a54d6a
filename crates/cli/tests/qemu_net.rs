//! VM networking end to end with real QEMU VMs (TCG here): each VM answers HTTP with its name
//! at its address from the host that runs it, keeps its address across a restart, and a
//! node's bridges and taps follow the VMs (removed when the VM goes, leftovers cleaned after a
//! `kill -9` of the daemon, a running VM's tap kept). Root is required (bridges, taps).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{json, pid_alive, run_cli, wait_for, Cluster, DEADLINE};

const BOOT: Duration = Duration::from_secs(120);

/// `GET /` over plain TCP; the body on success.
fn http_get(addr: &str) -> Option<String> {
    let ip: Ipv4Addr = addr.parse().ok()?;
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((ip, 80)), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vm\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
}

/// A /24 of its own per test process, so parallel test runs do not share routes.
fn unique_cidr(salt: u32) -> String {
    let n = std::process::id().wrapping_mul(7).wrapping_add(salt) % 60_000;
    format!("10.{}.{}.0/24", 100 + n / 256 % 100, n % 256)
}

fn answers(ip: &str, name: &str) {
    let got = wait_for(&format!("{name} to answer HTTP at {ip}"), BOOT, || {
        http_get(ip).filter(|b| !b.is_empty())
    });
    assert_eq!(got, name, "the page at {ip} names the VM");
}

#[test]
fn qemu_vms_answer_on_their_addresses_and_devices_follow_them() {
    let cidr = unique_cidr(1);
    let mut c = Cluster::start(1, &["--driver", "qemu", "--network-cidr", &cidr]);
    let a = c.addr(1);
    let web = json(&a, &["vm", "create", "web", "--memory", "256"]);
    let db = json(&a, &["vm", "create", "db", "--memory", "256"]);
    let (web_ip, db_ip) = (
        web["ip"].as_str().unwrap().to_string(),
        db["ip"].as_str().unwrap().to_string(),
    );
    assert_ne!(web_ip, db_ip);
    for name in ["web", "db"] {
        c.wait_vm(1, name, "running", BOOT, |v| v["state"] == "running");
    }
    answers(&web_ip, "web");
    answers(&db_ip, "db");
    let devices = c.net_devices(1);
    assert_eq!(devices.len(), 3, "one bridge and two taps: {devices:?}");

    // A restart keeps the address.
    let out = run_cli(&a, &["vm", "restart", "web", "--timeout", "120"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = c.wait_vm(1, "web", "running again", BOOT, |v| v["state"] == "running");
    assert_eq!(v["ip"].as_str(), Some(web_ip.as_str()));
    answers(&web_ip, "web");

    // Deleting a VM removes its tap.
    json(&a, &["vm", "delete", "db", "--force"]);
    wait_for("db's tap to go", DEADLINE, || {
        (c.net_devices(1).len() == 2).then_some(())
    });
    assert!(http_get(&db_ip).is_none());

    // kill -9 of the daemon, a leftover tap of this node appears meanwhile: after the restart
    // the leftover is gone, the running VM kept its tap and still answers.
    let prefix = std::fs::read_to_string(c.node(1).dir.join("netdev-prefix")).unwrap();
    let qemu = c.vm_pid(1, "web").expect("web's qemu");
    c.kill9(1);
    let stale = format!("{}tdeadbeef", prefix.trim());
    let made = Command::new("ip")
        .args(["tuntap", "add", "dev", &stale, "mode", "tap"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    c.restart(1);
    wait_for("the leftover tap to be removed", DEADLINE, || {
        (!c.net_devices(1).contains(&stale)).then_some(())
    });
    assert!(
        pid_alive(qemu),
        "the VM kept running through the daemon's restart"
    );
    assert_eq!(
        c.net_devices(1).len(),
        2,
        "bridge and web's tap: {:?}",
        c.net_devices(1)
    );
    answers(&web_ip, "web");
    assert_eq!(c.vm_pid(1, "web"), Some(qemu));
}
