//! Client commands: each builds one request, sends it to `--addr` and prints the answer.
//! Followers forward writes to the leader, so any member may be addressed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use blixard_api::{pb, BlixardClient};
use clap::Args;
use tonic::transport::Channel;

use crate::output::{self, opt, table};

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Disk in GiB.
    #[arg(long, default_value_t = 0)]
    disk: u64,
    #[arg(long)]
    kernel: Option<String>,
    #[arg(long)]
    initrd: Option<String>,
    #[arg(long)]
    cmdline: Option<String>,
    /// Root disk image (raw, or qcow2 by its .qcow2 extension).
    #[arg(long)]
    disk_image: Option<String>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    #[arg(long)]
    anti_affinity: Option<String>,
    /// Pin to this node.
    #[arg(long)]
    node: Option<u64>,
    #[arg(long, default_value = "on-failure", value_parser = ["always", "on-failure", "never"])]
    restart: String,
    /// Record the VM without starting it.
    #[arg(long)]
    no_start: bool,
    /// Placement strategy for this VM: binpack or spread (default: the cluster's).
    #[arg(long, value_parser = ["binpack", "spread"])]
    strategy: Option<String>,
    /// Only nodes with this label, KEY=VALUE (repeatable).
    #[arg(long = "constraint", value_name = "K=V")]
    constraints: Vec<String>,
    /// Only nodes with this feature, e.g. kvm (repeatable).
    #[arg(long = "feature")]
    features: Vec<String>,
    /// Priority 0-100 (default 50).
    #[arg(long)]
    priority: Option<u32>,
    /// Allow evicting lower-priority VMs when nothing fits.
    #[arg(long)]
    preempt: bool,
    /// Show where the VM would go and why, changing nothing.
    #[arg(long)]
    dry_run: bool,
    /// Network to take the VM's address from (default: the network "default").
    #[arg(long)]
    network: Option<String>,
    /// A specific address on that network, A.B.C.D.
    #[arg(long)]
    ip: Option<std::net::Ipv4Addr>,
}

#[derive(Args)]
pub struct SubmitArgs {
    /// vCPUs the task holds while it runs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory in MiB the task holds while it runs.
    #[arg(long, default_value_t = 64)]
    memory: u64,
    /// Seconds before the task is killed and marked timed_out.
    #[arg(long, default_value_t = blixard_core::task::DEFAULT_TASK_TIMEOUT_SECS)]
    timeout: u64,
    /// Run it on this node only.
    #[arg(long)]
    node: Option<u64>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Attempts in all when nodes die under it (default 3).
    #[arg(long, default_value_t = blixard_core::task::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_pairs(raw: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{what} '{l}' must be KEY=VALUE"))
        })
        .collect()
}

pub struct Client {
    pub(crate) addr: String,
    pub(crate) json: bool,
}

/// The credentials file (`--credentials` / `$BLIXARD_CREDENTIALS`), set once by `main`.
static CREDENTIALS: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

pub fn set_credentials(path: Option<std::path::PathBuf>) {
    let _ = CREDENTIALS.set(path);
}

/// The TLS client configuration from the credentials file; one clear line when there is none.
pub fn tls() -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let path = CREDENTIALS.get().cloned().flatten().ok_or_else(|| {
        anyhow!(
            "no credentials: pass --credentials FILE or set BLIXARD_CREDENTIALS (the admin credential is DATA_DIR/admin.credentials on the node started with --init)"
        )
    })?;
    let creds = blixard_pki::Credentials::load(&path)?;
    Ok(creds.client_config()?)
}

/// Connects to `addr` over mutual TLS with the credentials.
pub async fn channel(addr: &str, request_timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let tls = tls()?;
    let mut ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("invalid address '{addr}'"))?
        .connect_timeout(Duration::from_secs(3));
    if let Some(t) = request_timeout {
        ep = ep.timeout(t);
    }
    ep.connect_with_connector(blixard_pki::Connector::new(tls))
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach blixard at {addr}: {}",
                blixard_pki::error_chain(&e)
            )
        })
}

pub(crate) fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Turns a gRPC status into one clear line.
pub(crate) fn status_err(addr: &str, s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable
            if s.message().contains("transport error") || s.message().contains("connect") =>
        {
            anyhow!(
                "cannot reach blixard at {addr}: is the node running? ({})",
                s.message()
            )
        }
        _ => anyhow!("{}", s.message()),
    }
}

impl Client {
    pub fn new(addr: String, json: bool) -> Self {
        Self { addr, json }
    }

    async fn connect(&self) -> anyhow::Result<BlixardClient<Channel>> {
        Ok(BlixardClient::new(self.channel().await?))
    }

    /// A connection to `--addr` over mutual TLS (shared by the services' clients).
    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        channel(&self.addr, Some(Duration::from_secs(70))).await
    }

    pub async fn token_create(&self, ttl: u64) -> anyhow::Result<()> {
        let t = self
            .connect()
            .await?
            .create_join_token(pb::CreateJoinTokenRequest { ttl_secs: ttl })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json {
            output::print_json(
                &serde_json::json!({"token": t.token, "id": t.id, "expires_at_ms": t.expires_at_ms}),
            );
        } else {
            println!("{}", t.token);
        }
        Ok(())
    }

    pub async fn token_list(&self) -> anyhow::Result<()> {
        let list = self
            .connect()
            .await?
            .list_join_tokens(pb::Empty {})
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let tokens = list.into_inner().tokens;
        if self.json {
            let rows = tokens
                .iter()
                .map(|t| {
                    serde_json::json!({"id": t.id, "status": t.status, "created_ms": t.created_ms,
                        "expires_at_ms": t.expires_at_ms, "used_by": t.used_by})
                })
                .collect();
            output::print_json(&serde_json::Value::Array(rows));
        } else {
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.status.clone(),
                        t.expires_at_ms.to_string(),
                        opt(t.used_by),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(&["id", "status", "expires at (ms)", "used by"], rows)
            );
        }
        Ok(())
    }

    pub async fn token_revoke(&self, id: &str) -> anyhow::Result<()> {
        self.connect()
            .await?
            .revoke_join_token(pb::JoinTokenRef { id: id.into() })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("join token {id} revoked"));
        Ok(())
    }

    pub async fn cluster_status(&self, stale: bool) -> anyhow::Result<()> {
        let s = self
            .connect()
            .await?
            .cluster_status(pb::ReadOptions { stale })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let s = s.into_inner();
        if self.json {
            output::print_json(&output::status_json(&s));
        } else {
            println!(
                "node {}  leader {}  term {}  applied {}",
                s.node_id,
                opt(s.leader_id),
                s.term,
                s.applied_index
            );
            let rows = s
                .members
                .iter()
                .map(|m| vec![m.id.to_string(), m.addr.clone(), m.role.clone()])
                .collect();
            println!("{}", table(&["id", "addr", "role"], rows));
        }
        Ok(())
    }

    pub async fn cluster_remove(&self, id: u64) -> anyhow::Result<()> {
        self.connect()
            .await?
            .remove_member(pb::RemoveMemberRequest { node_id: id })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("node {id} removed"));
        Ok(())
    }

    pub async fn cluster_leave(&self) -> anyhow::Result<()> {
        self.connect()
            .await?
            .leave(pb::Empty {})
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("node at {} left the cluster", self.addr));
        Ok(())
    }

    pub(crate) fn done(&self, msg: &str) {
        if self.json {
            output::print_json(&serde_json::json!({"ok": true, "message": msg}));
        } else {
            println!("{msg}");
        }
    }

    pub async fn node_list(&self, stale: bool) -> anyhow::Result<()> {
        let r = self
            .connect()
            .await?
            .list_nodes(pb::ReadOptions { stale })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let nodes = r.into_inner().nodes;
        if self.json {
            output::print_json(&serde_json::Value::Array(
                nodes.iter().map(output::node_json).collect(),
            ));
            return Ok(());
        }
        let rows = nodes
            .iter()
            .map(|n| {
                let c = n.capacity.clone().unwrap_or_default();
                let a = n.allocated.clone().unwrap_or_default();
                vec![
                    n.id.to_string(),
                    n.addr.clone(),
                    n.state.clone(),
                    format!("{}/{}", a.vcpus, c.vcpus),
                    format!("{}/{}", a.memory_mb, c.memory_mb),
                    format!("{}/{}", a.disk_gb, c.disk_gb),
                    n.vms.to_string(),
                    if n.kvm { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "id",
                    "addr",
                    "state",
                    "vcpus",
                    "memory mib",
                    "disk gib",
                    "vms",
                    "kvm"
                ],
                rows
            )
        );
        Ok(())
    }

    pub async fn node_set_state(&self, id: u64, state: &str) -> anyhow::Result<()> {
        let r = self
            .connect()
            .await?
            .set_node_state(pb::SetNodeStateRequest {
                node_id: id,
                state: state.into(),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let n = r.into_inner();
        if self.json {
            output::print_json(&output::node_json(&n));
        } else {
            println!("node {} is {}", n.id, n.state);
        }
        Ok(())
    }

    pub async fn node_drain(&self, id: u64, timeout: u64, no_wait: bool) -> anyhow::Result<()> {
        if no_wait {
            return self.node_set_state(id, "draining").await;
        }
        let mut c = self.connect().await?;
        c.set_node_state(pb::SetNodeStateRequest {
            node_id: id,
            state: "draining".into(),
            request_id: request_id(),
        })
        .await
        .map_err(|e| status_err(&self.addr, e))?;
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut last = String::new();
        loop {
            let vms = c
                .list_vms(pb::ReadOptions { stale: false })
                .await
                .map_err(|e| status_err(&self.addr, e))?
                .into_inner()
                .vms;
            let left: Vec<&pb::VmInfo> = vms.iter().filter(|v| v.node_id == Some(id)).collect();
            let line = format!("node {id}: {} VMs left", left.len());
            if line != last && !self.json {
                println!("{line}");
                last = line;
            }
            if left.is_empty() {
                if self.json {
                    output::print_json(
                        &serde_json::json!({"node_id": id, "state": "draining", "vms_left": 0}),
                    );
                } else {
                    println!("node {id} is drained");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = left
                    .iter()
                    .map(|v| {
                        format!(
                            "{} ({})",
                            v.name,
                            v.reason.clone().unwrap_or_else(|| v.state.clone())
                        )
                    })
                    .collect();
                anyhow::bail!(
                    "node {id} still has {} VMs after {timeout}s: {}",
                    left.len(),
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn vm_create(&self, a: CreateArgs) -> anyhow::Result<()> {
        let labels = parse_pairs(&a.labels, "label")?;
        let spec = pb::VmSpec {
            name: a.name,
            vcpus: a.vcpus,
            memory_mb: a.memory,
            disk_gb: a.disk,
            kernel: a.kernel,
            initrd: a.initrd,
            cmdline: a.cmdline,
            labels: labels.into_iter().collect(),
            anti_affinity: a.anti_affinity,
            node: a.node,
            restart: a.restart,
            start: !a.no_start,
            strategy: a.strategy.unwrap_or_default(),
            constraints: parse_pairs(&a.constraints, "constraint")?
                .into_iter()
                .collect(),
            features: a.features,
            priority: a.priority,
            preempt: a.preempt,
            disk_image: a.disk_image,
            network: a.network,
            ip: a.ip.map(|ip| ip.to_string()),
        };
        if a.dry_run {
            let r = self
                .connect()
                .await?
                .explain_placement(pb::CreateVmRequest {
                    spec: Some(spec),
                    request_id: String::new(),
                })
                .await
                .map_err(|e| status_err(&self.addr, e))?;
            let p = r.into_inner();
            if self.json {
                output::print_json(&output::explain_json(&p));
            } else {
                match p.node {
                    Some(n) => println!("would place on node {n}: {}", p.summary),
                    None => println!("would stay pending: {}", p.summary),
                }
                if !p.preempted.is_empty() {
                    println!("would evict: {}", p.preempted.join(", "));
                }
                let rows = p
                    .verdicts
                    .iter()
                    .map(|v| {
                        vec![
                            v.node.to_string(),
                            if v.eligible { "yes" } else { "no" }.into(),
                            v.reason.clone(),
                        ]
                    })
                    .collect();
                println!("{}", table(&["node", "eligible", "verdict"], rows));
            }
            return Ok(());
        }
        let r = self
            .connect()
            .await?
            .create_vm(pb::CreateVmRequest {
                spec: Some(spec),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let vm = r.into_inner();
        if self.json {
            output::print_json(&output::vm_json(&vm));
        } else {
            match vm.node_id {
                Some(n) => println!("VM {} placed on node {} (epoch {})", vm.name, n, vm.epoch),
                None => println!("VM {} is pending: {}", vm.name, opt(vm.reason)),
            }
        }
        Ok(())
    }

    pub async fn vm_set_desired(&self, name: &str, desired: &str) -> anyhow::Result<()> {
        let r = self
            .connect()
            .await?
            .set_vm_desired(pb::SetVmDesiredRequest {
                name: name.into(),
                desired: desired.into(),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let vm = r.into_inner();
        if self.json {
            output::print_json(&output::vm_json(&vm));
        } else {
            println!("VM {} desired {}", vm.name, vm.desired);
        }
        Ok(())
    }

    pub async fn vm_delete(&self, name: &str) -> anyhow::Result<()> {
        self.connect()
            .await?
            .delete_vm(pb::VmRef {
                name: name.into(),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("VM {name} deleted"));
        Ok(())
    }

    async fn get_vm(
        &self,
        c: &mut BlixardClient<Channel>,
        name: &str,
        stale: bool,
    ) -> anyhow::Result<pb::VmInfo> {
        let r = c
            .get_vm(pb::GetVmRequest {
                name: name.into(),
                stale,
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        Ok(r.into_inner())
    }

    pub async fn vm_status(&self, name: &str, stale: bool) -> anyhow::Result<()> {
        let mut c = self.connect().await?;
        let vm = self.get_vm(&mut c, name, stale).await?;
        if self.json {
            output::print_json(&output::vm_json(&vm));
        } else {
            println!("{}", vm_table(std::slice::from_ref(&vm)));
            if let Some(p) = &vm.placement {
                println!("placement: {p}");
            }
            if vm.restarts > 0 {
                println!("restarts: {}", vm.restarts);
            }
        }
        Ok(())
    }

    /// Shows the cluster settings, or changes some (`lease`: lease, grace and heartbeat ms).
    pub async fn cluster_settings(
        &self,
        strategy: Option<String>,
        vcpu_overcommit: Option<u32>,
        lease: [Option<u64>; 3],
    ) -> anyhow::Result<()> {
        if lease.iter().any(|v| *v == Some(0)) {
            anyhow::bail!("lease, grace and heartbeat must be positive numbers of milliseconds");
        }
        let s =
            if strategy.is_none() && vcpu_overcommit.is_none() && lease.iter().all(Option::is_none)
            {
                let r = self
                    .connect()
                    .await?
                    .cluster_status(pb::ReadOptions { stale: false })
                    .await
                    .map_err(|e| status_err(&self.addr, e))?;
                r.into_inner().scheduler.unwrap_or_default()
            } else {
                let req = pb::SchedulerSettings {
                    strategy: strategy.unwrap_or_default(),
                    vcpu_overcommit_pct: vcpu_overcommit.unwrap_or(0),
                    request_id: request_id(),
                    lease_ms: lease[0].unwrap_or(0),
                    grace_ms: lease[1].unwrap_or(0),
                    heartbeat_ms: lease[2].unwrap_or(0),
                };
                self.connect()
                    .await?
                    .set_scheduler_settings(req)
                    .await
                    .map_err(|e| status_err(&self.addr, e))?
                    .into_inner()
            };
        if self.json {
            output::print_json(&output::settings_json(&s));
        } else {
            println!(
                "strategy {}  vcpu overcommit {}%  lease {} ms  grace {} ms  heartbeat {} ms",
                s.strategy, s.vcpu_overcommit_pct, s.lease_ms, s.grace_ms, s.heartbeat_ms
            );
        }
        Ok(())
    }

    pub async fn vm_list(&self, stale: bool) -> anyhow::Result<()> {
        // Page by page: any number of VMs can be listed.
        let mut c = self.connect().await?;
        let mut vms = Vec::new();
        let mut after = String::new();
        loop {
            let r = c
                .list_vms_page(pb::PageRequest {
                    stale,
                    limit: 0,
                    after: after.clone(),
                })
                .await
                .map_err(|e| status_err(&self.addr, e))?
                .into_inner();
            vms.extend(r.vms);
            if r.next.is_empty() {
                break;
            }
            after = r.next;
        }
        if self.json {
            output::print_json(&serde_json::Value::Array(
                vms.iter().map(output::vm_json).collect(),
            ));
        } else {
            println!("{}", vm_table(&vms));
        }
        Ok(())
    }

    pub async fn vm_restart(&self, name: &str, timeout: u64) -> anyhow::Result<()> {
        let quiet = Client {
            addr: self.addr.clone(),
            json: false,
        };
        quiet.set_desired_quiet(name, "stopped").await?;
        quiet
            .wait_state(name, &["stopped", "failed"], timeout)
            .await?;
        self.vm_set_desired(name, "running").await
    }

    async fn set_desired_quiet(&self, name: &str, desired: &str) -> anyhow::Result<()> {
        self.connect()
            .await?
            .set_vm_desired(pb::SetVmDesiredRequest {
                name: name.into(),
                desired: desired.into(),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        Ok(())
    }

    async fn wait_state(
        &self,
        name: &str,
        states: &[&str],
        timeout: u64,
    ) -> anyhow::Result<pb::VmInfo> {
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut c = self.connect().await?;
        loop {
            let vm = self.get_vm(&mut c, name, false).await?;
            if states.contains(&vm.state.as_str()) {
                return Ok(vm);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "timed out after {timeout}s waiting for VM {name} to be {} (it is {})",
                    states.join(" or "),
                    vm.state
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn vm_logs(&self, name: &str, follow: bool, previous: bool) -> anyhow::Result<()> {
        use std::io::Write;
        let mut stream = self
            .connect()
            .await?
            .vm_logs(pb::VmLogsRequest {
                name: name.into(),
                follow,
                previous,
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json && !follow {
            // One JSON document: the console as text (invalid UTF-8 replaced). With --follow,
            // the console is streamed as it comes.
            let mut data = Vec::new();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| status_err(&self.addr, e))?
            {
                data.extend_from_slice(&chunk.data);
            }
            output::print_json(
                &serde_json::json!({"name": name, "console": String::from_utf8_lossy(&data)}),
            );
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| status_err(&self.addr, e))?
        {
            out.write_all(&chunk.data)?;
            out.flush()?;
        }
        Ok(())
    }

    pub async fn vm_wait(&self, name: &str, state: &str, timeout: u64) -> anyhow::Result<()> {
        if blixard_core::VmState::parse(state).is_none() {
            anyhow::bail!("unknown state '{state}': use pending, starting, running, stopping, stopped or failed");
        }
        let vm = self.wait_state(name, &[state], timeout).await?;
        if self.json {
            output::print_json(&output::vm_json(&vm));
        } else {
            println!("VM {name} is {state}");
        }
        Ok(())
    }
}

impl Client {
    async fn get_task(
        &self,
        c: &mut BlixardClient<Channel>,
        id: &str,
        stale: bool,
    ) -> anyhow::Result<pb::TaskInfo> {
        let r = c
            .get_task(pb::GetTaskRequest {
                id: id.into(),
                stale,
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        Ok(r.into_inner())
    }

    pub async fn task_submit(&self, a: SubmitArgs) -> anyhow::Result<()> {
        if a.command.is_empty() || a.command[0].is_empty() {
            anyhow::bail!("empty command: give the program to run after --, e.g. blixard task submit -- echo hi");
        }
        let env = parse_pairs(&a.env, "environment variable")?;
        let spec = blixard_core::TaskSpec {
            command: a.command,
            env,
            cpus: a.cpus,
            memory_mb: a.memory,
            timeout_secs: a.timeout,
            node: a.node,
            max_attempts: a.max_attempts,
        };
        spec.validate()?;
        let req = pb::SubmitTaskRequest {
            spec: Some(pb::TaskSpec::from(&spec)),
            request_id: request_id(),
        };
        let t = self
            .connect()
            .await?
            .submit_task(req)
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json {
            output::print_json(&output::task_json(&t));
        } else {
            println!("{}", t.id);
        }
        Ok(())
    }

    pub async fn task_status(&self, id: &str, stale: bool) -> anyhow::Result<()> {
        let mut c = self.connect().await?;
        let t = self.get_task(&mut c, id, stale).await?;
        if self.json {
            output::print_json(&output::task_json(&t));
        } else {
            println!("{}", task_table(std::slice::from_ref(&t)));
            println!("command: {}", t.command.join(" "));
            if let Some(r) = &t.reason {
                println!("reason: {r}");
            }
        }
        Ok(())
    }

    pub async fn task_list(
        &self,
        stale: bool,
        state: Option<String>,
        node: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut c = self.connect().await?;
        let mut tasks = Vec::new();
        let mut after = String::new();
        loop {
            let req = pb::ListTasksRequest {
                stale,
                state: state.clone().unwrap_or_default(),
                node,
                limit: 0,
                after: after.clone(),
            };
            let r = c
                .list_tasks(req)
                .await
                .map_err(|e| status_err(&self.addr, e))?
                .into_inner();
            tasks.extend(r.tasks);
            if r.next.is_empty() {
                break;
            }
            after = r.next;
        }
        if self.json {
            output::print_json(&serde_json::Value::Array(
                tasks.iter().map(output::task_json).collect(),
            ));
        } else {
            println!("{}", task_table(&tasks));
        }
        Ok(())
    }

    pub async fn task_wait(&self, id: &str, timeout: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut c = self.connect().await?;
        let t = loop {
            let t = self.get_task(&mut c, id, false).await?;
            if !matches!(t.state.as_str(), "pending" | "running") {
                break t;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "timed out after {timeout}s waiting for task {id} to end (it is {})",
                    t.state
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if self.json {
            output::print_json(&output::task_json(&t));
        }
        if t.state == "succeeded" {
            if !self.json {
                println!("task {id} succeeded in {} ms", t.duration_ms.unwrap_or(0));
            }
            return Ok(());
        }
        let mut msg = format!("task {id} {}", t.state);
        if let Some(c) = t.exit_code {
            msg.push_str(&format!(" with exit code {c}"));
        }
        if let Some(r) = &t.reason {
            msg.push_str(&format!(": {r}"));
        }
        Err(anyhow!(msg))
    }

    pub async fn task_logs(&self, id: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut stream = self
            .connect()
            .await?
            .task_logs(pb::TaskRef {
                id: id.into(),
                request_id: String::new(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json {
            // One JSON document: the output as text (invalid UTF-8 replaced).
            let mut data = Vec::new();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| status_err(&self.addr, e))?
            {
                data.extend_from_slice(&chunk.data);
            }
            output::print_json(
                &serde_json::json!({"id": id, "output": String::from_utf8_lossy(&data)}),
            );
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|e| status_err(&self.addr, e))?
        {
            out.write_all(&chunk.data)?;
        }
        out.flush()?;
        Ok(())
    }

    pub async fn task_cancel(&self, id: &str) -> anyhow::Result<()> {
        let t = self
            .connect()
            .await?
            .cancel_task(pb::TaskRef {
                id: id.into(),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json {
            output::print_json(&output::task_json(&t));
        } else if t.state == "cancelled" {
            println!("task {id} cancelled");
        } else {
            println!("task {id}: cancel requested (its node stops it)");
        }
        Ok(())
    }
}

fn task_table(tasks: &[pb::TaskInfo]) -> String {
    let rows = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                opt(t.node_id),
                t.state.clone(),
                opt(t.exit_code),
                opt(t.duration_ms),
                format!("{}/{}", t.attempt, t.max_attempts),
                t.command.join(" ").chars().take(40).collect(),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "node",
            "state",
            "exit",
            "duration ms",
            "attempt",
            "command",
        ],
        rows,
    )
}

fn vm_table(vms: &[pb::VmInfo]) -> String {
    let rows = vms
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                opt(v.node_id),
                v.desired.clone(),
                v.state.clone(),
                v.vcpus.to_string(),
                v.memory_mb.to_string(),
                v.epoch.to_string(),
                opt(v.ip.clone()),
                v.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "name",
            "node",
            "desired",
            "state",
            "vcpus",
            "memory mib",
            "epoch",
            "ip",
            "reason",
        ],
        rows,
    )
}

impl Client {
    /// Prints the dashboard URL of the node at `--addr` (`{"url": ...}` with `--json`).
    pub async fn dashboard(&self) -> anyhow::Result<()> {
        let s = self
            .connect()
            .await?
            .cluster_status(pb::ReadOptions { stale: true })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if s.http_addr.is_empty() {
            anyhow::bail!(
                "node {} at {} serves no HTTP: start it with --http HOST:PORT",
                s.node_id,
                self.addr
            );
        }
        let mut http: std::net::SocketAddr = s
            .http_addr
            .parse()
            .with_context(|| format!("node reported a bad HTTP address '{}'", s.http_addr))?;
        if http.ip().is_unspecified() {
            // Bound to every interface: reach it the way --addr reaches the node.
            if let Some(ip) = self
                .addr
                .rsplit_once(':')
                .and_then(|(h, _)| h.parse::<std::net::IpAddr>().ok())
            {
                http.set_ip(ip);
            }
        }
        let url = format!("http://{http}/ui/");
        if self.json {
            output::print_json(&serde_json::json!({"url": url}));
        } else {
            println!("{url}");
        }
        Ok(())
    }

    /// Prints the cluster's events after `since`; with `follow`, keeps printing. `--json`:
    /// one JSON array (or, with `--follow`, one JSON document per line).
    pub async fn events(&self, since: Option<u64>, follow: bool) -> anyhow::Result<()> {
        use std::io::Write;
        let mut stream = self
            .connect()
            .await?
            .events(pb::EventsRequest { since, follow })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        let mut all = Vec::new();
        let mut out = std::io::stdout().lock();
        while let Some(m) = stream
            .message()
            .await
            .map_err(|e| status_err(&self.addr, e))?
        {
            let v: serde_json::Value = serde_json::from_str(&m.json)
                .with_context(|| format!("malformed event from {}", self.addr))?;
            if self.json && !follow {
                all.push(v);
                continue;
            }
            if self.json {
                writeln!(out, "{v}")?;
            } else {
                let line = match serde_json::from_value::<blixard_core::Event>(v) {
                    Ok(e) => e.summary(),
                    Err(_) => m.json.clone(),
                };
                writeln!(
                    out,
                    "{:>8}  {:<16} {}",
                    m.index,
                    m.r#type,
                    output::clean(&line)
                )?;
            }
            out.flush()?;
        }
        if self.json && !follow {
            output::print_json(&serde_json::Value::Array(all));
        }
        Ok(())
    }
}
