//! The process cluster of the CLI tests: real `blixard` daemons as child processes on
//! 127.0.0.1 with ports chosen by the OS, driven through the real CLI ([`crate::cli`]). Every
//! process is killed when the cluster drops. Clusters run secure like any other: node 1's
//! `--init` writes the admin credential, which every CLI call for that cluster's addresses
//! uses, and joins use a fresh join token.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cli::{join_token, register_credentials, try_json, wait_for, DEADLINE};
use crate::process::{bin, node_command, NodeProcess};

pub struct TestNode {
    pub id: u64,
    pub dir: PathBuf,
    pub addr: String,
    pub child: Option<NodeProcess>,
    extra: Vec<String>,
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    /// Flags every node gets.
    pub flags: Vec<String>,
    /// The admin credential (written by node 1's `--init`).
    pub credentials: Option<PathBuf>,
}

fn read_addr(dir: &Path) -> Option<String> {
    let b = std::fs::read(dir.join("node.json")).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    Some(v["addr"].as_str()?.to_string())
}

impl Cluster {
    pub fn new(flags: &[&str]) -> Self {
        let c = Self {
            tmp: tempfile::tempdir().expect("tempdir"),
            nodes: Vec::new(),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            credentials: None,
        };
        // Empty, not absent: the never-ran-twice check refuses a missing record.
        std::fs::write(c.events_path(), "").expect("events file");
        c
    }

    /// Starts a cluster of `n` nodes: node 1 bootstraps, the others join through it.
    pub fn start(n: u64, flags: &[&str]) -> Self {
        let mut c = Self::new(flags);
        c.add_node(1, None, &[]);
        for id in 2..=n {
            let seed = c.nodes[0].addr.clone();
            c.add_node(id, Some(&seed), &[]);
        }
        c.wait_members(n.min(3) as usize);
        c.wait_workers(usize::try_from(n).expect("a small node count"));
        c
    }

    /// Waits until node 1 lists `n` registered workers.
    pub fn wait_workers(&self, n: usize) {
        let addr = self.nodes[0].addr.clone();
        wait_for(&format!("{n} registered workers"), DEADLINE, || {
            (try_json(&addr, &["node", "list"])?.as_array()?.len() == n).then_some(())
        });
    }

    fn spawn(
        &self,
        id: u64,
        dir: &Path,
        bootstrap: &[String],
        extra: &[String],
        listen: &str,
    ) -> NodeProcess {
        let mut cmd = node_command(&bin(), None, id, listen, dir, &self.events_path());
        cmd.args(if self.flags.iter().any(|f| f == "--driver") {
            &[][..]
        } else {
            &["--driver", "process"][..]
        })
        .args(bootstrap)
        .args(&self.flags)
        .args(extra)
        .env("BLIXARD_LOG", "info,openraft=warn");
        NodeProcess::spawn(cmd, &dir.with_extension("log")).expect("spawn blixard node")
    }

    /// Starts node `id`, bootstrapping (`seed == None`) or joining through `seed`.
    pub fn add_node(&mut self, id: u64, seed: Option<&str>, extra: &[&str]) -> usize {
        let token = seed.map(join_token);
        self.add_node_with_token(id, seed, token, extra)
    }

    /// Like [`Cluster::add_node`], joining with the given token.
    pub fn add_node_with_token(
        &mut self,
        id: u64,
        seed: Option<&str>,
        token: Option<String>,
        extra: &[&str],
    ) -> usize {
        let dir = self.tmp.path().join(format!("n{id}"));
        let bootstrap: Vec<String> = match (seed, token) {
            (Some(s), Some(t)) => vec!["--join".into(), s.into(), "--token".into(), t],
            (Some(s), None) => vec!["--join".into(), s.into()],
            (None, _) => vec!["--init".into()],
        };
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = self.spawn(id, &dir, &bootstrap, &extra, "127.0.0.1:0");
        let addr = wait_for(&format!("node {id} to bind"), DEADLINE, || read_addr(&dir));
        if seed.is_none() && self.credentials.is_none() {
            self.credentials = Some(dir.join("admin.credentials"));
        }
        if let Some(c) = &self.credentials {
            register_credentials(&addr, c);
        }
        self.nodes.push(TestNode {
            id,
            dir,
            addr,
            child: Some(child),
            extra,
        });
        self.nodes.len() - 1
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).expect("known node")
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("known node")
    }

    pub fn addr(&self, id: u64) -> String {
        self.node(id).addr.clone()
    }

    /// Ids of nodes whose process is running.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// `kill -9` a node.
    pub fn kill9(&mut self, id: u64) {
        if let Some(c) = self.node_mut(id).child.take() {
            c.kill9();
        }
    }

    /// Restarts a stopped node from its data directory (no --init/--join).
    pub fn restart(&mut self, id: u64) {
        let (dir, extra) = {
            let n = self.node(id);
            (n.dir.clone(), n.extra.clone())
        };
        let child = self.spawn(id, &dir, &[], &extra, "127.0.0.1:0");
        self.node_mut(id).child = Some(child);
    }

    /// Restarts a stopped node with other extra flags (kept for later restarts).
    pub fn restart_with(&mut self, id: u64, extra: &[&str]) {
        self.node_mut(id).extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart(id);
    }

    /// Stops a node's daemon gracefully (SIGTERM) and waits for it to exit; its workloads
    /// keep running and are adopted again on restart.
    pub fn stop(&mut self, id: u64) {
        self.signal(id, "-TERM");
        assert!(
            self.wait_exit(id, DEADLINE),
            "node {id} did not stop on SIGTERM"
        );
    }

    /// Waits for a node process to exit by itself; returns whether it did.
    pub fn wait_exit(&mut self, id: u64, deadline: Duration) -> bool {
        let n = self.node_mut(id);
        let Some(child) = n.child.as_mut() else {
            return true;
        };
        let exited = child.wait_exit(deadline);
        if exited {
            n.child = None;
        }
        exited
    }

    pub fn status(&self, id: u64) -> Option<Value> {
        try_json(&self.addr(id), &["cluster", "status", "--stale"])
    }

    /// Sorted (id, role) of the members node `id` reports.
    pub fn members_of(&self, id: u64) -> Option<Vec<(u64, String)>> {
        let s = self.status(id)?;
        let mut m: Vec<(u64, String)> = s["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["id"].as_u64().unwrap_or(0),
                    m["role"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        m.sort();
        Some(m)
    }

    /// Waits until every live node reports `n` voters and the same leader; returns the leader.
    pub fn wait_members(&self, n: usize) -> u64 {
        wait_for(
            &format!("{n} voters agreed by every live node"),
            DEADLINE,
            || {
                let mut leader = None;
                let mut members = None;
                for id in self.live() {
                    let s = self.status(id)?;
                    let l = s["leader_id"].as_u64()?;
                    let m = self.members_of(id)?;
                    if m.iter().filter(|(_, r)| r == "voter").count() != n {
                        return None;
                    }
                    // A departed leader can linger in a follower's view until the next election.
                    if !m.iter().any(|(mid, r)| *mid == l && r == "voter") {
                        return None;
                    }
                    if leader.is_some_and(|x| x != l) || members.as_ref().is_some_and(|x| x != &m) {
                        return None;
                    }
                    leader = Some(l);
                    members = Some(m);
                }
                leader
            },
        )
    }

    pub fn leader(&self) -> u64 {
        wait_for("a leader", DEADLINE, || {
            self.live()
                .into_iter()
                .find_map(|id| self.status(id).and_then(|s| s["leader_id"].as_u64()))
        })
    }

    /// Waits until every live node has applied the same index, then returns the digests.
    pub fn wait_converged(&self) -> (u64, String) {
        wait_for(
            "every live node to apply the same index with the same digest",
            DEADLINE,
            || {
                let mut seen: Option<(u64, String)> = None;
                for id in self.live() {
                    let s = self.status(id)?;
                    let cur = (
                        s["applied_index"].as_u64()?,
                        s["state_digest"].as_str()?.to_string(),
                    );
                    match &seen {
                        None => seen = Some(cur),
                        Some(prev) if prev.0 != cur.0 => return None,
                        Some(prev) => {
                            assert_eq!(prev.1, cur.1, "digests differ at applied index {}", cur.0)
                        }
                    }
                }
                seen
            },
        )
    }

    /// The pid of VM `name`'s process on node `id`, from its run directory.
    pub fn vm_pid(&self, id: u64, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.node(id).dir.join("vms").join(name).join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Names of the VM run directories on node `id`.
    pub fn vm_dirs(&self, id: u64) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.node(id).dir.join("vms"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until `vm status NAME` via node `via` satisfies `pred`; returns the VM object.
    pub fn wait_vm(
        &self,
        via: u64,
        name: &str,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(&format!("VM {name}: {what}"), deadline, || {
            let v = try_json(&self.addr(via), &["vm", "status", name])?;
            pred(&v).then_some(v)
        })
    }

    fn dump_logs(&self) {
        for n in &self.nodes {
            if let Ok(s) = std::fs::read_to_string(n.dir.with_extension("log")) {
                let tail: Vec<&str> = s.lines().rev().take(40).collect();
                eprintln!("----- node {} log (last 40 lines) -----", n.id);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// True while a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Daemons first, so that nothing starts another VM; then the VMs, which run
        // detached from their daemon.
        for n in &mut self.nodes {
            if let Some(c) = n.child.take() {
                c.kill9();
            }
        }
        for n in &self.nodes {
            for name in self.vm_dirs(n.id) {
                if let Some(pid) = self.vm_pid(n.id, &name) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
        // Then the bridges, VXLAN devices and taps the nodes made (qemu driver).
        for n in &self.nodes {
            for dev in self.net_devices(n.id) {
                let _ = Command::new("ip").args(["link", "del", &dev]).output();
            }
        }
    }
}

impl Cluster {
    /// The host network devices (bridges, VXLAN devices, taps) of node `id`.
    pub fn net_devices(&self, id: u64) -> Vec<String> {
        let Ok(prefix) = std::fs::read_to_string(self.node(id).dir.join("netdev-prefix")) else {
            return Vec::new();
        };
        let Ok(out) = Command::new("ip").args(["-j", "link", "show"]).output() else {
            return Vec::new();
        };
        let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| !prefix.is_empty() && n.starts_with(prefix.trim()))
            .map(str::to_string)
            .collect()
    }
}

/// Fast failure detection for tests: lease 2 s, grace 1 s, heartbeats every 250 ms.
pub const FAST_LIVENESS: &[&str] = &[
    "--lease-ms",
    "2000",
    "--grace-ms",
    "1000",
    "--liveness-heartbeat-ms",
    "250",
    "--replace-voter-after",
    "2",
];

impl Cluster {
    pub fn events_path(&self) -> PathBuf {
        self.tmp.path().join("events.log")
    }

    /// Checks the workloads' own start/stop records with [`crate::never_twice`]: no two runs
    /// of one VM or task name ever overlapped. Returns the number of runs seen.
    pub fn assert_never_ran_twice(&self) -> usize {
        crate::never_twice::assert_file(&self.events_path())
    }

    /// Sends a signal to a node's daemon.
    pub fn signal(&self, id: u64, sig: &str) {
        let pid = self.node(id).child.as_ref().expect("running node").id();
        assert!(Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }
}
