//! VM commands.

use std::time::{Duration, Instant};

use blixard_api::{pb, BlixardClient};
use clap::Args;
use tonic::transport::Channel;

use super::{parse_pairs, request_id, status_err, Client};
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
    /// Root disk image: a file in the node's image directories (raw, or qcow2 by its .qcow2
    /// extension). Never written: the VM gets a copy-on-write overlay of it.
    #[arg(long)]
    disk_image: Option<String>,
    /// Attach the disk image read-only instead of through an overlay.
    #[arg(long, requires = "disk_image")]
    disk_readonly: bool,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    #[arg(long)]
    anti_affinity: Option<String>,
    /// Pin to this node.
    #[arg(long)]
    node: Option<u64>,
    #[arg(long, default_value = "on-failure")]
    restart: blixard_core::RestartPolicy,
    /// Record the VM without starting it.
    #[arg(long)]
    no_start: bool,
    /// Placement strategy for this VM (default: the cluster's).
    #[arg(long)]
    strategy: Option<blixard_core::Strategy>,
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

impl Client {
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
            restart: a.restart.as_str().to_string(),
            start: !a.no_start,
            strategy: a
                .strategy
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            constraints: parse_pairs(&a.constraints, "constraint")?
                .into_iter()
                .collect(),
            features: a.features,
            priority: a.priority,
            preempt: a.preempt,
            disk_image: a.disk_image,
            disk_readonly: a.disk_readonly,
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

    pub async fn vm_delete(&self, name: &str, force: bool) -> anyhow::Result<()> {
        self.connect()
            .await?
            .delete_vm(pb::VmRef {
                name: name.into(),
                request_id: request_id(),
                force,
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("VM {name} deleted"));
        Ok(())
    }

    pub(super) async fn get_vm(
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
                println!("placement: {}", output::clean(p));
            }
            for line in crate::extras::vm_details(&vm, crate::extras::now_ms()) {
                println!("{line}");
            }
            if let Some(by) = &vm.created_by {
                println!("created by: {}", output::clean(by));
            }
        }
        Ok(())
    }

    pub async fn vm_list(
        &self,
        stale: bool,
        filter: &crate::extras::VmFilter,
    ) -> anyhow::Result<()> {
        let labels = filter.parsed()?;
        // Page by page: any number of VMs can be listed. Only the first page waits for a
        // linearizable read: the later ones go to the same node, whose applied state only moves
        // forward, so each sees every write that completed before the listing began.
        let mut c = self.connect().await?;
        let mut vms = Vec::new();
        let mut after = String::new();
        loop {
            let r = c
                .list_vms_page(pb::PageRequest {
                    stale: stale || !after.is_empty(),
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
        vms.retain(|v| filter.matches(&labels, v));
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

    pub(super) async fn set_desired_quiet(&self, name: &str, desired: &str) -> anyhow::Result<()> {
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

    pub(super) async fn wait_state(
        &self,
        name: &str,
        states: &[&str],
        timeout: u64,
    ) -> anyhow::Result<pb::VmInfo> {
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut c = self.connect().await?;
        // On a terminal (stderr), one status line kept up to date while waiting.
        let mut progress = crate::extras::Progress::new(!self.json);
        loop {
            let vm = self.get_vm(&mut c, name, false).await?;
            if states.contains(&vm.state.as_str()) {
                progress.finish();
                return Ok(vm);
            }
            progress.show(&crate::extras::vm_progress_line(&vm));
            if Instant::now() >= deadline {
                progress.finish();
                anyhow::bail!(
                    "timed out after {timeout}s waiting for VM {name} to be {} (it is {}{})",
                    states.join(" or "),
                    vm.state,
                    vm.reason
                        .as_deref()
                        .map(|r| format!(": {}", output::clean(r)))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn vm_logs(
        &self,
        name: &str,
        follow: bool,
        previous: bool,
        tail: Option<usize>,
    ) -> anyhow::Result<()> {
        let stream = self
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
        // One JSON document: the console as text. With --follow, it is streamed as it comes.
        let whole = (self.json || tail.is_some()) && !follow;
        let json = self.json.then_some(("name", name, "console"));
        super::print_log_stream(&self.addr, stream, whole, json, tail).await
    }

    pub async fn vm_wait(
        &self,
        name: &str,
        state: blixard_core::VmState,
        timeout: u64,
    ) -> anyhow::Result<()> {
        let state = state.as_str();
        let vm = self.wait_state(name, &[state], timeout).await?;
        if self.json {
            output::print_json(&output::vm_json(&vm));
        } else {
            println!("VM {name} is {state}");
        }
        Ok(())
    }
}

pub(super) fn vm_table(vms: &[pb::VmInfo]) -> String {
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
