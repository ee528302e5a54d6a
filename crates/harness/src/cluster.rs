//! Real `blixard` daemons, one per network namespace. Dropping the cluster kills them all (and
//! the namespaces go with the [`Net`] it owns). The cluster runs secure like any other: the
//! harness speaks mutual TLS with node 1's admin credential and joins nodes with join tokens.
//! The daemons themselves are the test kit's [`NodeProcess`]es (the process layer the CLI
//! tests' cluster uses too); this module adds the namespaces, the gRPC view and the nemesis's
//! operations.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blixard_api::pb;
use blixard_api::BlixardClient;
use blixard_testkit::process::{node_command, NodeProcess};
use nix::sys::signal::Signal;
use tonic::transport::{Channel, Endpoint};

use crate::net::Net;

pub const PORT: u16 = 7000;
/// vCPUs each node offers (`--vcpus`): small, so the pinned VMs fill a node (binpack) and a
/// preempting VM as large as a node must evict every VM running there.
pub const VCPUS: u32 = 4;
/// vCPUs a node re-registers with during a [`crate::schedule::Fault::Shrink`].
pub const SHRUNK_VCPUS: u32 = 1;

pub struct Daemon {
    /// Slot (namespace number), from 1.
    pub id: usize,
    /// Raft node id: the slot at first, a new id after a membership change replaced it.
    pub node_id: u64,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<NodeProcess>,
    /// vCPUs the daemon was (or will next be) started with.
    pub vcpus: u32,
}

impl Daemon {
    /// Frozen by the nemesis (SIGSTOP)?
    pub fn paused(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.paused())
    }
}

pub struct Cluster {
    pub bin: PathBuf,
    pub events: PathBuf,
    pub daemons: Vec<Daemon>,
    pub clients: Vec<BlixardClient<Channel>>,
    /// The preempting VM of the current [`crate::schedule::Fault::Preempt`], deleted at heal.
    pub preempting: Option<String>,
    /// Preempting VMs created so far (for unique names).
    pub preempt_seq: usize,
    /// The slot frozen by the current [`crate::schedule::Fault::FreezeLeader`].
    pub frozen_leader: Option<usize>,
    /// The admin credential (node 1's `--init` wrote it).
    pub tls: Tls,
    /// Declared last: dropped after the daemons are killed.
    pub net: Net,
}

pub fn client(addr: &str, timeout: Duration, tls: &Tls) -> Result<BlixardClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_with_connector_lazy(blixard_pki::Connector::new(tls.clone()));
    Ok(BlixardClient::new(ch))
}

/// The admin's TLS client configuration.
pub type Tls = std::sync::Arc<rustls::ClientConfig>;

impl Cluster {
    /// Starts `n` nodes: node 1 bootstraps, the others join through it; returns once every node
    /// reports all `n` members as voters.
    pub async fn start(bin: &Path, dir: &Path, n: usize, op_timeout: Duration) -> Result<Cluster> {
        if !bin.is_file() {
            bail!("blixard binary not found at {}", bin.display());
        }
        let net = Net::create(n)?;
        let events = dir.join("events.log");
        std::fs::write(&events, "")?;
        let mut daemons = Vec::new();
        for i in 1..=n {
            let d = dir.join("nodes").join(format!("n{i}"));
            std::fs::create_dir_all(&d)?;
            daemons.push(Daemon {
                id: i,
                node_id: i as u64,
                log: dir.join("nodes").join(format!("n{i}.log")),
                dir: d.join("data"),
                child: None,
                vcpus: VCPUS,
            });
        }
        let mut c = Cluster {
            bin: bin.to_path_buf(),
            events,
            daemons,
            preempting: None,
            preempt_seq: 0,
            frozen_leader: None,
            clients: Vec::new(),
            tls: blixard_pki::pinned_client_config(&"0".repeat(64))?,
            net,
        };
        c.spawn(1, &["--init".into()])?;
        let creds = c.daemons[0].dir.join("admin.credentials");
        let end = Instant::now() + Duration::from_secs(30);
        while !creds.is_file() {
            if Instant::now() > end {
                bail!("node 1 wrote no admin credential at {}", creds.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c.tls = blixard_pki::Credentials::load(&creds)?.client_config()?;
        for i in 1..=n {
            let cl = client(&format!("{}:{PORT}", c.net.ip(i)), op_timeout, &c.tls)?;
            c.clients.push(cl);
        }
        c.wait("node 1 to lead", Duration::from_secs(30), |s| {
            s.iter().flatten().any(|s| s.leader_id == Some(1))
        })
        .await?;
        for i in 2..=n {
            let join = c.join_args(1).await?;
            c.spawn(i, &join)?;
        }
        c.wait("all nodes to be voters", Duration::from_secs(60), |s| {
            s.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.members.len() == n && s.members.iter().all(|m| m.role == "voter")
                })
            })
        })
        .await?;
        Ok(c)
    }

    /// Arguments that join a new node through slot `via`, with a fresh join token.
    pub async fn join_args(&self, via: usize) -> Result<Vec<String>> {
        let mut c = self.clients[via - 1].clone();
        let end = Instant::now() + Duration::from_secs(30);
        let token = loop {
            match c
                .create_join_token(pb::CreateJoinTokenRequest { ttl_secs: 600 })
                .await
            {
                Ok(t) => break t.into_inner().token,
                Err(e) if Instant::now() > end => {
                    bail!("creating a join token through node {via}: {}", e.message())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(vec![
            format!("--join={}:{PORT}", self.net.ip(via)),
            format!("--token={token}"),
        ])
    }

    /// Spawns node `i` (`extra`: `--init`, `--join=...` and its token, or nothing to resume).
    pub fn spawn(&mut self, i: usize, extra: &[String]) -> Result<()> {
        let ns = self.net.ns(i);
        let listen = format!("{}:{PORT}", self.net.ip(i));
        let d = &mut self.daemons[i - 1];
        let mut cmd = node_command(
            &self.bin,
            Some(&ns),
            d.node_id,
            &listen,
            &d.dir,
            &self.events,
        );
        cmd.args([
            "--driver",
            "process",
            "--heartbeat-ms",
            "100",
            "--election-ms",
            "500",
        ])
        .args(["--vcpus", &d.vcpus.to_string(), "--memory-mb", "262144"])
        // The daemon reads its filter from BLIXARD_LOG (not RUST_LOG).
        .env(
            "BLIXARD_LOG",
            std::env::var("BLIXARD_FAULT_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        );
        if extra.iter().any(|e| e == "--init") {
            use crate::schedule::{GRACE_MS, HEARTBEAT_MS, LEASE_MS};
            cmd.args(["--lease-ms", &LEASE_MS.to_string()])
                .args(["--grace-ms", &GRACE_MS.to_string()])
                .args(["--liveness-heartbeat-ms", &HEARTBEAT_MS.to_string()]);
        }
        cmd.args(extra);
        d.child =
            Some(NodeProcess::spawn(cmd, &d.log).with_context(|| format!("spawning node {i}"))?);
        Ok(())
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(c) = self.daemons[i - 1].child.take() {
            c.kill9();
        }
    }

    /// SIGTERM (after SIGCONT if paused), waits up to `deadline` for the daemon to exit, then
    /// `kill -9`s it. Returns whether it exited by itself.
    pub async fn terminate(&mut self, i: usize, deadline: Duration) -> bool {
        let Some(p) = self.daemons[i - 1].child.as_mut() else {
            return true;
        };
        if p.paused() {
            p.resume();
        }
        p.signal(Signal::SIGTERM);
        let end = Instant::now() + deadline;
        let mut graceful = false;
        while Instant::now() < end {
            let exited = self.daemons[i - 1]
                .child
                .as_mut()
                .is_none_or(|c| c.exited());
            if exited {
                graceful = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill9(i);
        graceful
    }

    /// Restarts node `i` from its data dir with `vcpus` (a re-registration with that capacity).
    pub async fn restart_with_vcpus(&mut self, i: usize, vcpus: u32) -> Result<String> {
        let graceful = self.terminate(i, Duration::from_secs(10)).await;
        self.daemons[i - 1].vcpus = vcpus;
        self.spawn(i, &[])?;
        Ok(format!(
            "restarted slot {i} (node {}) with {vcpus} vCPUs{}",
            self.daemons[i - 1].node_id,
            if graceful {
                ""
            } else {
                " (it ignored SIGTERM for 10 s: killed)"
            }
        ))
    }

    /// VMs running per slot, from one node's `--stale` list; `None` when no node answers.
    pub async fn running_per_slot(&self) -> Option<Vec<(usize, Vec<String>)>> {
        for i in (1..=self.daemons.len())
            .filter(|&i| self.is_running(i) && !self.daemons[i - 1].paused())
        {
            let mut c = self.clients[i - 1].clone();
            let f = c.list_vms(pb::ReadOptions { stale: true });
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), f).await {
                let vms = r.into_inner().vms;
                return Some(
                    self.daemons
                        .iter()
                        .map(|d| {
                            let names = vms
                                .iter()
                                .filter(|v| v.node_id == Some(d.node_id) && v.state == "running")
                                .map(|v| v.name.clone())
                                .collect();
                            (d.id, names)
                        })
                        .collect(),
                );
            }
        }
        None
    }

    /// The state (`up`, `down`, `draining`) the live, unpaused nodes other than slot `i` report
    /// for the node in slot `i` (`--stale` reads: any node's view counts).
    pub async fn state_seen_by_others(&self, i: usize) -> Option<String> {
        let id = self.daemons[i - 1].node_id;
        for j in (1..=self.daemons.len())
            .filter(|&j| j != i && self.is_running(j) && !self.daemons[j - 1].paused())
        {
            let mut c = self.clients[j - 1].clone();
            let f = c.list_nodes(pb::ReadOptions { stale: true });
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), f).await {
                if let Some(n) = r.into_inner().nodes.iter().find(|n| n.id == id) {
                    if n.state == "down" {
                        return Some(n.state.clone());
                    }
                }
            }
        }
        None
    }

    /// The live, unpaused slot running the most VMs (ties: the lowest slot), with their names.
    pub async fn busiest(&self) -> Option<(usize, Vec<String>)> {
        let per = self.running_per_slot().await?;
        per.into_iter()
            .filter(|(i, _)| self.is_running(*i) && !self.daemons[*i - 1].paused())
            .max_by_key(|(i, v)| (v.len(), std::cmp::Reverse(*i)))
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.daemons[i - 1].child.is_some()
    }

    /// Forgets daemons that exited on their own (reaps them); returns the slots affected.
    pub fn reap(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        for d in &mut self.daemons {
            if d.child.as_mut().is_some_and(|c| c.exited()) {
                d.child = None;
                out.push(d.id);
            }
        }
        out
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(p) = self.daemons[i - 1].child.as_mut() {
            p.pause();
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(p) = self.daemons[i - 1].child.as_mut() {
            p.resume();
        }
    }

    /// `cluster status --stale` of node `i`, or `None` when it does not answer in time.
    pub async fn status(&self, i: usize) -> Option<pb::ClusterStatusReply> {
        let mut c = self.clients[i - 1].clone();
        let f = c.cluster_status(pb::ReadOptions { stale: true });
        match tokio::time::timeout(Duration::from_secs(1), f).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    pub async fn statuses(&self) -> Vec<Option<pb::ClusterStatusReply>> {
        let mut out = Vec::new();
        for i in 1..=self.daemons.len() {
            out.push(if self.is_running(i) {
                self.status(i).await
            } else {
                None
            });
        }
        out
    }

    /// The leader most nodes agree on.
    pub async fn leader(&self) -> Option<usize> {
        let s = self.statuses().await;
        let mut votes = std::collections::BTreeMap::new();
        for l in s.iter().flatten().filter_map(|s| s.leader_id) {
            *votes.entry(l).or_insert(0) += 1;
        }
        let l = votes.into_iter().max_by_key(|&(_, v)| v).map(|(l, _)| l)?;
        self.daemons.iter().find(|d| d.node_id == l).map(|d| d.id)
    }

    /// Removes the node in slot `i` through another member, waits for it to stop, then starts
    /// a fresh node (new id, empty data dir) in the same namespace that joins the cluster.
    pub async fn replace(&mut self, i: usize) -> Result<String> {
        let old = self.daemons[i - 1].node_id;
        let via = (1..=self.daemons.len())
            .find(|&j| j != i && self.is_running(j))
            .context("no other live node")?;
        // Membership changes take longer than data operations: a client with its own timeout.
        // If the answer is lost (timeout), the log decides: wait until `old` left the members.
        let mut c = client(
            &format!("{}:{PORT}", self.net.ip(via)),
            Duration::from_secs(15),
            &self.tls,
        )?;
        let answer = tokio::time::timeout(
            Duration::from_secs(15),
            c.remove_member(pb::RemoveMemberRequest {
                node_id: old,
                force: true,
            }),
        )
        .await;
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let gone = self
                .status(via)
                .await
                .is_some_and(|s| !s.members.iter().any(|m| m.id == old));
            if gone {
                break;
            }
            if Instant::now() > end {
                bail!("node {old} still a member after RemoveMember ({answer:?})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A removed node is told to stop; make sure.
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let exited = self.daemons[i - 1]
                .child
                .as_mut()
                .is_none_or(|ch| ch.exited());
            if exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill9(i);
        let new = self.daemons.iter().map(|d| d.node_id).max().unwrap_or(0) + 1;
        let d = &mut self.daemons[i - 1];
        let _ = std::fs::rename(&d.dir, d.dir.with_file_name(format!("data.removed-{old}")));
        d.node_id = new;
        let join = self.join_args(via).await?;
        self.spawn(i, &join)?;
        Ok(format!(
            "removed node {old} (slot {i}) and started node {new} in its place"
        ))
    }

    pub async fn wait(
        &self,
        what: &str,
        deadline: Duration,
        mut f: impl FnMut(&[Option<pb::ClusterStatusReply>]) -> bool,
    ) -> Result<Vec<Option<pb::ClusterStatusReply>>> {
        let end = Instant::now() + deadline;
        loop {
            let s = self.statuses().await;
            if f(&s) {
                return Ok(s);
            }
            if Instant::now() > end {
                bail!("timed out after {deadline:?} waiting for {what}; last statuses: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 1..=self.daemons.len() {
            self.kill9(i);
        }
    }
}
