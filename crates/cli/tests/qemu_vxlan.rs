//! VMs on different nodes reach each other over VXLAN: three nodes, each in its own network
//! namespace (joined by veth pairs on a bridge, as the fault harness does), real QEMU VMs. A
//! VM's page is fetched from another node's namespace through that node's bridge, the tunnel
//! and the VM's node's bridge; when the VM's node dies the VM is placed elsewhere with the same
//! address and answers there. Root is required. Everything created is removed on drop.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{wait_for, BIN, DEADLINE, FAST_LIVENESS};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(150);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces `nvx<R>-n<i>` with addresses 10.251.<R>.<i>/24 on veths to a bridge `nvx<R>br`.
struct Netns {
    run: u32,
    nodes: Vec<(String, PathBuf, Option<Child>, String)>,
    tmp: tempfile::TempDir,
}

impl Netns {
    fn new(n: u32) -> Self {
        let run = std::process::id() % 200 + 20;
        let s = Netns {
            run,
            nodes: Vec::new(),
            tmp: tempfile::tempdir().expect("tempdir"),
        };
        s.cleanup_devices();
        let br = format!("nvx{run}br");
        sh(&["ip", "link", "add", &br, "type", "bridge"]);
        sh(&["ip", "link", "set", &br, "up"]);
        for i in 1..=n {
            let ns = s.ns(i);
            let (host, peer) = (format!("nvx{run}v{i}"), format!("nvx{run}p{i}"));
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ]);
            sh(&["ip", "link", "set", &peer, "netns", &ns]);
            sh(&["ip", "link", "set", &host, "master", &br, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", s.node_ip(i)),
                "dev",
                &peer,
            ]);
            sh(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        s
    }

    fn ns(&self, i: u32) -> String {
        format!("nvx{}-n{i}", self.run)
    }

    fn node_ip(&self, i: u32) -> String {
        format!("10.251.{}.{i}", self.run)
    }

    fn cleanup_devices(&self) {
        for i in 1..=3 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("nvx{}br", self.run)])
            .output();
    }

    /// Starts node `i` in its namespace (node 1 bootstraps, the others join it).
    fn start(&mut self, i: u32, cidr: &str) {
        let dir = self.tmp.path().join(format!("n{i}"));
        let log = std::fs::File::create(dir.with_extension("log")).expect("log");
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.ns(i),
            BIN.into(),
            "node".into(),
        ];
        args.extend([
            "--id".into(),
            i.to_string(),
            "--listen".into(),
            format!("{}:0", self.node_ip(i)),
        ]);
        args.extend([
            "--data-dir".into(),
            dir.display().to_string(),
            "--driver".into(),
            "qemu".into(),
        ]);
        args.extend(FAST_LIVENESS.iter().map(|s| s.to_string()));
        if i == 1 {
            args.extend(["--init".into(), "--network-cidr".into(), cidr.into()]);
        } else {
            // Joins need a token (made with node 1's admin credential).
            let token = wait_for("a join token", DEADLINE, || {
                self.json(1, &["cluster", "token", "create", "--ttl", "600"])?["token"]
                    .as_str()
                    .map(String::from)
            });
            args.extend([
                "--join".into(),
                self.nodes[0].3.clone(),
                "--token".into(),
                token,
            ]);
        }
        let child = Command::new("ip")
            .args(&args)
            .env("BLIXARD_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        let addr = wait_for(&format!("node {i} to bind"), DEADLINE, || read_addr(&dir));
        self.nodes.push((self.ns(i), dir, Some(child), addr));
    }

    /// Runs the CLI inside node `via`'s namespace against it.
    fn cli(&self, via: u32, args: &[&str]) -> Output {
        let n = &self.nodes[via as usize - 1];
        let creds = self.nodes[0].1.join("admin.credentials");
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &n.0,
                BIN,
                "--addr",
                &n.3,
                "--json",
                "--credentials",
            ])
            .arg(&creds)
            .args(args)
            .output()
            .expect("cli")
    }

    fn json(&self, via: u32, args: &[&str]) -> Option<Value> {
        let out = self.cli(via, args);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `GET http://ip/` from inside node `from`'s namespace (bash's /dev/tcp: no HTTP client
    /// needed on the host); the body.
    fn fetch(&self, from: u32, ip: &str) -> Option<String> {
        let script = format!(
            "exec 3<>/dev/tcp/{ip}/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(from),
                "timeout",
                "5",
                "bash",
                "-c",
                &script,
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let body = text.split_once("\r\n\r\n")?.1.trim().to_string();
        (out.status.success() && !body.is_empty()).then_some(body)
    }

    fn kill9(&mut self, i: u32) {
        if let Some(mut c) = self.nodes[i as usize - 1].2.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn vm_pids(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir.join("vms"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path().join("pid")).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn read_addr(dir: &Path) -> Option<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(dir.join("node.json")).ok()?).ok()?;
    Some(v["addr"].as_str()?.to_string())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                if let Ok(s) = std::fs::read_to_string(n.1.with_extension("log")) {
                    eprintln!("----- {} log (last 30 lines) -----", n.0);
                    let lines: Vec<&str> = s.lines().collect();
                    for l in &lines[lines.len().saturating_sub(30)..] {
                        eprintln!("{l}");
                    }
                }
            }
        }
        for i in 1..=u32::try_from(self.nodes.len()).expect("a few nodes") {
            self.kill9(i);
        }
        for n in &self.nodes {
            for pid in Netns::vm_pids(&n.1) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
        }
        // The nodes' bridges, VXLAN devices and taps live in the namespaces: they go with them.
        self.cleanup_devices();
    }
}

#[test]
fn vms_on_different_nodes_reach_each_other_over_vxlan_and_keep_their_address_when_moved() {
    let mut net = Netns::new(3);
    let cidr = format!("10.252.{}.0/24", net.run);
    for i in 1..=3 {
        net.start(i, &cidr);
    }
    wait_for("3 registered workers", DEADLINE, || {
        (net.json(1, &["node", "list"])?.as_array()?.len() == 3).then_some(())
    });
    for name in ["a", "b"] {
        let out = net.cli(
            1,
            &[
                "vm",
                "create",
                name,
                "--memory",
                "256",
                "--anti-affinity",
                "ab",
                "--restart",
                "always",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let running = |name: &str| {
        let name = name.to_string();
        wait_for(&format!("VM {name} running"), BOOT, || {
            net.json(1, &["vm", "status", &name])
                .filter(|v| v["state"] == "running")
        })
    };
    let (a, b) = (running("a"), running("b"));
    let (na, nb) = (
        u32::try_from(a["node_id"].as_u64().unwrap()).unwrap(),
        u32::try_from(b["node_id"].as_u64().unwrap()).unwrap(),
    );
    assert_ne!(na, nb);
    let (ip_a, ip_b) = (
        a["ip"].as_str().unwrap().to_string(),
        b["ip"].as_str().unwrap().to_string(),
    );

    // Each VM's page, fetched from the namespace of the node running the other one: across
    // the tunnel.
    let got = wait_for("a's page from b's node", BOOT, || net.fetch(nb, &ip_a));
    assert_eq!(got, "a");
    let got = wait_for("b's page from a's node", BOOT, || net.fetch(na, &ip_b));
    assert_eq!(got, "b");

    // b's node dies: b is placed on the third node with the same address and answers there.
    net.kill9(nb);
    let moved = wait_for("b to run on another node", BOOT, || {
        net.json(na, &["vm", "status", "b"])
            .filter(|v| v["state"] == "running" && v["node_id"].as_u64() != Some(nb.into()))
    });
    assert_eq!(moved["ip"].as_str(), Some(ip_b.as_str()));
    let nc = u32::try_from(moved["node_id"].as_u64().unwrap()).unwrap();
    assert_ne!(nc, na, "anti-affinity keeps a and b apart");
    let got = wait_for("b's page from a's node after the move", BOOT, || {
        net.fetch(na, &ip_b)
    });
    assert_eq!(got, "b");
}
