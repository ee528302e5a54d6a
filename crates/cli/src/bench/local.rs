//! A throw-away local cluster for the benchmarks that must kill, restart or add nodes, or read
//! a node's memory: `blixard node` processes started from this binary (process driver,
//! loopback, free ports, a temporary directory), secured like any cluster (node 1 `--init`s,
//! the others join with join tokens). Every process is killed and the directory removed when
//! the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use blixard_api::{pb, BlixardClient};
use tonic::transport::Channel;

pub struct LocalNode {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

impl LocalNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct LocalCluster {
    exe: PathBuf,
    pub dir: PathBuf,
    pub creds: PathBuf,
    pub nodes: Vec<LocalNode>,
    /// Extra `blixard node` arguments for every node (capacity overrides, timeouts).
    node_args: Vec<String>,
    /// Extra environment for every node process (e.g. `TOKIO_WORKER_THREADS`).
    pub node_env: Vec<(String, String)>,
}

/// A free loopback port (bound and released; the node binds it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A client for `addr` with the credentials in `creds`, each request bounded by `timeout`.
pub async fn connect_with(
    addr: &str,
    creds: &Path,
    timeout: Option<Duration>,
) -> anyhow::Result<BlixardClient<Channel>> {
    let tls = blixard_pki::Credentials::load(creds)?.client_config()?;
    let mut ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2));
    if let Some(t) = timeout {
        ep = ep.timeout(t);
    }
    let ch = ep
        .connect_with_connector(blixard_pki::Connector::new(tls))
        .await
        .map_err(|e| anyhow!("cannot reach {addr}: {}", blixard_pki::error_chain(&e)))?;
    Ok(BlixardClient::new(ch)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

/// Waits until `addr` answers a cluster status (credentials exist by then); `dir` holds the
/// node logs, named in the error.
async fn wait_answers_at(addr: &str, creds: &Path, dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if creds.exists() {
            if let Ok(mut c) = connect_with(addr, creds, Some(Duration::from_secs(2))).await {
                if c.cluster_status(pb::ReadOptions { stale: true })
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "node at {addr} did not answer within 120 s (log in {})",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl LocalCluster {
    /// Starts `n` nodes and waits until all are registered workers.
    pub async fn start(n: usize, node_args: Vec<String>) -> anyhow::Result<Self> {
        let mut c = Self::empty(node_args)?;
        for _ in 0..n {
            c.add_node().await?;
        }
        c.wait_workers(n).await?;
        Ok(c)
    }

    /// A cluster with no node yet (its directory created): `add_node` starts the first.
    pub fn empty(node_args: Vec<String>) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "blixard-bench-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(LocalCluster {
            exe: std::env::current_exe().context("finding the blixard binary")?,
            creds: dir.join("n1").join("admin.credentials"),
            dir,
            nodes: Vec::new(),
            node_args,
            node_env: Vec::new(),
        })
    }

    fn spawn(
        &self,
        id: u64,
        addr: &str,
        data_dir: &Path,
        boot: &[String],
    ) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.dir.join(format!("n{id}.log")))?;
        Command::new(&self.exe)
            .args([
                "node",
                "--id",
                &id.to_string(),
                "--listen",
                addr,
                "--driver",
                "process",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(boot)
            .args(&self.node_args)
            .env("BLIXARD_LOG", "warn")
            .envs(self.node_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting a blixard node")
    }

    /// Adds one node (the first `--init`s, the others join through the first live node) and
    /// waits until it answers; returns its index in `nodes`.
    pub async fn add_node(&mut self) -> anyhow::Result<usize> {
        let addr = if self.nodes.is_empty() {
            self.start_node(vec!["--init".to_string()])?
        } else {
            let seed = self.live_addr()?;
            let token = self.join_tokens(&seed, 1).await?.remove(0);
            self.start_node(vec!["--join".into(), seed, "--token".into(), token])?
        };
        self.wait_answers(&addr).await?;
        Ok(self.nodes.len() - 1)
    }

    /// Adds `count` joining nodes (the cluster has its first node), `parallel` at a time: a
    /// join token each (created through the first live node), the processes started together,
    /// then waits until each answers. The leader serializes the joins themselves.
    pub async fn add_nodes(&mut self, count: usize, parallel: usize) -> anyhow::Result<()> {
        let seed = self.live_addr()?;
        let mut left = count;
        while left > 0 {
            let wave = left.min(parallel.max(1));
            let tokens = self.join_tokens(&seed, wave).await?;
            let mut waits = tokio::task::JoinSet::new();
            for token in tokens {
                let addr =
                    self.start_node(vec!["--join".into(), seed.clone(), "--token".into(), token])?;
                let (creds, dir) = (self.creds.clone(), self.dir.clone());
                waits.spawn(async move { wait_answers_at(&addr, &creds, &dir).await });
            }
            while let Some(r) = waits.join_next().await {
                r??;
            }
            left -= wave;
        }
        Ok(())
    }

    /// Starts the next node (id, free port, data directory) with `boot` and records it;
    /// returns its address.
    fn start_node(&mut self, boot: Vec<String>) -> anyhow::Result<String> {
        let id = self.nodes.len() as u64 + 1;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let data_dir = self.dir.join(format!("n{id}"));
        let child = self.spawn(id, &addr, &data_dir, &boot)?;
        self.nodes.push(LocalNode {
            id,
            addr: addr.clone(),
            data_dir,
            child: Some(child),
        });
        Ok(addr)
    }

    /// `count` join tokens created through `seed`. The first node answers before its bootstrap
    /// entry is applied and refuses until then ("not part of a cluster yet", whatever the
    /// code): retried every 200 ms for up to 60 s.
    async fn join_tokens(&self, seed: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let mut c = connect_with(seed, &self.creds, Some(Duration::from_secs(30))).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tokens = Vec::with_capacity(count);
        while tokens.len() < count {
            match c
                .create_join_token(pb::CreateJoinTokenRequest { ttl_secs: 600 })
                .await
            {
                Ok(t) => tokens.push(t.into_inner().token),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => bail!("creating a join token: {}", s.message()),
            }
        }
        Ok(tokens)
    }

    fn live_addr(&self) -> anyhow::Result<String> {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .map(|n| n.addr.clone())
            .ok_or_else(|| anyhow!("no live node"))
    }

    /// Waits until `addr` answers a cluster status (credentials exist by then).
    async fn wait_answers(&self, addr: &str) -> anyhow::Result<()> {
        wait_answers_at(addr, &self.creds, &self.dir).await
    }

    pub async fn client(&self, i: usize) -> anyhow::Result<BlixardClient<Channel>> {
        connect_with(
            &self.nodes[i].addr,
            &self.creds,
            Some(Duration::from_secs(30)),
        )
        .await
    }

    /// Waits until `n` workers are registered (linearizable read through a live node).
    pub async fn wait_workers(&self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let addr = self.live_addr()?;
            if let Ok(mut c) = connect_with(&addr, &self.creds, Some(Duration::from_secs(2))).await
            {
                if let Ok(r) = c.list_nodes(pb::ReadOptions { stale: false }).await {
                    if r.into_inner().nodes.len() >= n {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("{n} workers did not register within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// This node's view of the cluster (stale: no leader round trip).
    pub async fn status(&self, i: usize) -> anyhow::Result<pb::ClusterStatusReply> {
        let mut c = connect_with(
            &self.nodes[i].addr,
            &self.creds,
            Some(Duration::from_secs(2)),
        )
        .await?;
        Ok(c.cluster_status(pb::ReadOptions { stale: true })
            .await?
            .into_inner())
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Waits until every live node names the same live leader and has applied what it
    /// committed; returns the leader's index in `nodes`.
    pub async fn wait_stable(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            let mut applied = Vec::new();
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() {
                    continue;
                }
                match self.status(i).await {
                    Ok(s) => {
                        leaders.push(s.leader_id);
                        applied.push(s.applied_index);
                    }
                    Err(_) => leaders.push(None),
                }
            }
            if let Some(Some(l)) = leaders.first().copied() {
                let same = leaders.iter().all(|x| *x == Some(l));
                let caught_up = applied.iter().min() == applied.iter().max();
                if let Some(i) = self.index_of(l) {
                    if same && caught_up && self.nodes[i].child.is_some() {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the cluster did not settle on one leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut ch) = self.nodes[i].child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    /// Restarts a killed node from its data directory and waits until it answers.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        let (id, addr, dir) = {
            let n = &self.nodes[i];
            (n.id, n.addr.clone(), n.data_dir.clone())
        };
        let child = self.spawn(id, &addr, &dir, &[])?;
        self.nodes[i].child = Some(child);
        self.wait_answers(&addr).await
    }

    /// Resident set size and its peak, in KiB, from /proc/PID/status.
    pub fn rss_kib(&self, i: usize) -> anyhow::Result<(u64, u64)> {
        let pid = self.nodes[i]
            .pid()
            .ok_or_else(|| anyhow!("node {} is not running", self.nodes[i].id))?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Runs this binary as a CLI client against node `i` and returns how long it took.
    pub fn time_cli(&self, i: usize, args: &[&str]) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let out = Command::new(&self.exe)
            .args(["--addr", &self.nodes[i].addr, "--credentials"])
            .arg(&self.creds)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        let took = t.elapsed();
        if !out.status.success() {
            bail!(
                "blixard {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut ch) = n.child.take() {
                let _ = ch.kill();
                let _ = ch.wait();
            }
        }
        // The benchmarks create only stopped VMs, so no node started a workload.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
