//! Test harness: real `blixard` daemons as child processes on 127.0.0.1 with ports chosen by
//! the OS, driven through the real CLI. Every process is killed when the harness drops.
//! Clusters run secure like any other: node 1's `--init` writes the admin credential, which
//! every CLI call for that cluster's addresses uses, and joins use a fresh join token.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_blixard");

/// Generous: the CI machine has two cores shared by parallel tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct TestNode {
    pub id: u64,
    pub dir: PathBuf,
    pub addr: String,
    pub child: Option<Child>,
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

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Credentials by node address (addresses are unique while their node runs).
static CREDENTIALS: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<String, PathBuf>>,
> = std::sync::OnceLock::new();

pub fn register_credentials(addr: &str, path: &Path) {
    let m = CREDENTIALS.get_or_init(Default::default);
    m.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(addr.to_string(), path.to_path_buf());
}

/// The credential file of the cluster that node `addr` belongs to.
pub fn credentials_for(addr: &str) -> Option<PathBuf> {
    CREDENTIALS
        .get()?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(addr)
        .cloned()
}

/// Runs the CLI against `addr` with that cluster's admin credential (when known).
pub fn run_cli(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--addr").arg(addr);
    if let Some(c) = credentials_for(addr) {
        cmd.arg("--credentials").arg(c);
    }
    cmd.args(args)
        .env_remove("BLIXARD_ADDR")
        .env_remove("BLIXARD_CREDENTIALS")
        .output()
        .expect("run blixard cli")
}

/// Runs the CLI against `addr` with the given credentials file (or none).
pub fn run_cli_with(addr: &str, credentials: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--addr").arg(addr);
    if let Some(c) = credentials {
        cmd.arg("--credentials").arg(c);
    }
    cmd.args(args)
        .env_remove("BLIXARD_ADDR")
        .env_remove("BLIXARD_CREDENTIALS")
        .output()
        .expect("run blixard cli")
}

/// A fresh join token from the member at `seed` (retried while the cluster elects a leader).
pub fn join_token(seed: &str) -> String {
    wait_for("a join token", DEADLINE, || {
        try_json(seed, &["cluster", "token", "create", "--ttl", "600"])?["token"]
            .as_str()
            .map(String::from)
    })
}

/// Runs a `--json` command that must succeed and returns its document.
pub fn json(addr: &str, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = run_cli(addr, &a);
    assert!(
        out.status.success(),
        "blixard {args:?} via {addr} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout of {args:?} is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Like [`json`] but returns `None` on failure (for polling).
pub fn try_json(addr: &str, args: &[&str]) -> Option<Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = run_cli(addr, &a);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn read_addr(dir: &Path) -> Option<String> {
    let b = std::fs::read(dir.join("node.json")).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    Some(v["addr"].as_str()?.to_string())
}

impl Cluster {
    pub fn new(flags: &[&str]) -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
            nodes: Vec::new(),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            credentials: None,
        }
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
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .expect("log file");
        Command::new(BIN)
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--listen",
                listen,
                "--data-dir",
            ])
            .arg(dir)
            .args(if self.flags.iter().any(|f| f == "--driver") {
                &[][..]
            } else {
                &["--driver", "process"][..]
            })
            .args(bootstrap)
            .args(&self.flags)
            .args(extra)
            .env("BLIXARD_LOG", "info,openraft=warn")
            .env("BLIXARD_EVENTS_FILE", self.tmp.path().join("events.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn blixard node")
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
        let n = self.node_mut(id);
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                n.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
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
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
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

    /// Checks the workloads' own start/stop records: no VM ever ran twice at the same instant.
    /// Returns the number of runs seen.
    pub fn assert_never_ran_twice(&self) -> usize {
        let text = std::fs::read_to_string(self.events_path()).unwrap_or_default();
        // name -> list of (start, stop or open, epoch)
        let mut runs: std::collections::BTreeMap<String, Vec<(u64, Option<u64>, u64)>> =
            Default::default();
        let mut open: std::collections::BTreeMap<(String, u64), Vec<usize>> = Default::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 4 {
                continue;
            }
            let (kind, t, name, epoch) = (
                f[0],
                f[1].parse::<u64>().unwrap_or(0),
                f[2].to_string(),
                f[3].parse::<u64>().unwrap_or(0),
            );
            let list = runs.entry(name.clone()).or_default();
            match kind {
                "start" => {
                    list.push((t, None, epoch));
                    open.entry((name, epoch)).or_default().push(list.len() - 1);
                }
                "stop" => {
                    if let Some(i) = open.get_mut(&(name, epoch)).and_then(|v| {
                        if v.is_empty() {
                            None
                        } else {
                            Some(v.remove(0))
                        }
                    }) {
                        list[i].1 = Some(t);
                    }
                }
                _ => {}
            }
        }
        let mut total = 0;
        for (name, list) in &runs {
            total += list.len();
            for (i, a) in list.iter().enumerate() {
                for b in &list[i + 1..] {
                    let a_end = a.1.unwrap_or(u64::MAX);
                    let b_end = b.1.unwrap_or(u64::MAX);
                    assert!(
                        a_end <= b.0 || b_end <= a.0,
                        "VM {name} ran twice at once: epoch {} [{}, {:?}] and epoch {} [{}, {:?}]",
                        a.2,
                        a.0,
                        a.1,
                        b.2,
                        b.0,
                        b.1
                    );
                }
            }
        }
        total
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

/// A credentials file for a CA of its own (another cluster's, as far as any test cluster is
/// concerned); returns its path.
pub fn make_credentials(dir: &Path, name: &str, role: &str) -> PathBuf {
    let ca = blixard_pki::Ca::generate("elsewhere").expect("CA");
    let own = ca.issue_client(name, role).expect("client certificate");
    let path = dir.join(format!("{name}.credentials"));
    blixard_pki::Credentials::new(name, role, &ca.0.cert_pem, own)
        .store(&path)
        .expect("write credentials");
    path
}

/// Node `dir`'s key material (what a member holds in DATA_DIR/tls).
pub fn node_material(dir: &Path) -> blixard_pki::TlsMaterial {
    let read =
        |f: &str| std::fs::read_to_string(dir.join("tls").join(f)).expect("node key material");
    blixard_pki::TlsMaterial {
        ca_pem: read("ca.pem"),
        own: blixard_pki::CertKey {
            cert_pem: read("node.pem"),
            key_pem: read("node.key"),
        },
    }
}

/// The key material of a credentials file.
pub fn credentials_material(path: &Path) -> blixard_pki::TlsMaterial {
    blixard_pki::Credentials::load(path)
        .expect("credentials")
        .material()
}

/// A gRPC channel to `addr` over TLS with `m` (lazy: connects on first use).
pub fn tls_channel(addr: &str, m: &blixard_pki::TlsMaterial) -> tonic::transport::Channel {
    blixard_pki::channel(addr, m.client_config().expect("client config")).expect("channel")
}

/// A peer client speaking as whoever `m` is.
pub fn peer_client(
    addr: &str,
    m: &blixard_pki::TlsMaterial,
) -> blixard_api::RaftPeerClient<tonic::transport::Channel> {
    blixard_api::RaftPeerClient::new(tls_channel(addr, m))
}

/// A client-API client speaking as whoever `m` is.
pub fn api_client(
    addr: &str,
    m: &blixard_pki::TlsMaterial,
) -> blixard_api::BlixardClient<tonic::transport::Channel> {
    blixard_api::BlixardClient::new(tls_channel(addr, m))
}

impl Cluster {
    /// The admin credential's key material.
    pub fn admin(&self) -> blixard_pki::TlsMaterial {
        credentials_material(
            self.credentials
                .as_deref()
                .expect("cluster started with --init"),
        )
    }
}
