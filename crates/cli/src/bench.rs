//! `blixard bench writes` / `reads`: closed-loop load against a running cluster, to measure
//! how throughput grows with concurrent clients (many proposals share one log append and
//! fsync).
//!
//! Each client owns one VM record (`bench-<i>`, created stopped, so no executor acts on it)
//! and, in a loop, sends `SetVmDesired` with a fresh request id (one replicated write of one
//! row per request, comparable to a small key-value put), or reads it back (`GetVm`,
//! linearizable or stale).
//!
//! The benchmarks that need their own cluster (failover, memory, catchup, creates) are in
//! `suite`; `scale` (clusters of 25 to 100 nodes) in `scale`.

mod local;
pub mod scale;
pub mod suite;

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use blixard_api::{pb, BlixardClient};
use serde_json::json;

pub struct Params {
    pub addrs: Vec<String>,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub json: bool,
    /// Send every request to the current leader (found through the first address).
    pub leader_only: bool,
    pub op: Op,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Write,
    Read { stale: bool },
}

struct RunResult {
    clients: usize,
    writes: usize,
    errors: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn connect(addr: &str) -> anyhow::Result<BlixardClient<tonic::transport::Channel>> {
    Ok(BlixardClient::new(
        crate::client::channel(addr, None).await?,
    ))
}

/// The leader's address and the current term, as the node at `addr` sees them.
async fn leader_and_term(addr: &str) -> anyhow::Result<(String, u64)> {
    let s = connect(addr)
        .await?
        .cluster_status(pb::ReadOptions { stale: false })
        .await
        .map_err(|s| anyhow!("cluster status from {addr}: {}", s.message()))?
        .into_inner();
    let leader = s
        .leader_id
        .and_then(|l| s.members.iter().find(|m| m.id == l))
        .map(|m| m.addr.clone())
        .ok_or_else(|| anyhow!("{addr} knows no leader"))?;
    Ok((leader, s.term))
}

pub async fn writes(mut p: Params) -> anyhow::Result<()> {
    if p.clients.contains(&0) {
        return Err(anyhow!("--clients: every count must be at least 1"));
    }
    let max = p.clients.iter().copied().max().unwrap_or(1);
    let first = p
        .addrs
        .first()
        .ok_or_else(|| anyhow!("no address"))?
        .clone();
    let (leader, term0) = leader_and_term(&first).await?;
    if p.leader_only {
        p.addrs = vec![leader];
    }
    let mut admin = connect(&first).await?;
    for i in 0..max {
        let mut spec = pb::VmSpec::from(&blixard_core::VmSpec::new(format!("bench-{i}")));
        spec.memory_mb = 16;
        spec.start = false;
        let r = admin
            .create_vm(pb::CreateVmRequest {
                spec: Some(spec),
                // Fresh ids: a repeated id would return the remembered outcome of an earlier
                // run's create (since deleted) instead of creating.
                request_id: crate::client::request_id(),
            })
            .await;
        if let Err(s) = r {
            if s.code() != tonic::Code::AlreadyExists {
                return Err(anyhow!("creating bench VMs: {}", s.message()));
            }
        }
    }
    let mut results = Vec::new();
    for &n in &p.clients {
        let r = run(&p, n).await?;
        eprintln!(
            "bench: {n} clients: {:.0} ops/s, p99 {:.2} ms (load {})",
            r.writes as f64 / r.secs,
            r.p99_ms,
            suite::loadavg()
        );
        results.push(r);
    }
    // Elections during the run: on a healthy cluster, none.
    let term_changes = leader_and_term(&first)
        .await
        .map(|(_, t)| t.saturating_sub(term0))
        .ok();
    if p.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| json!({"clients": r.clients, "writes": r.writes, "errors": r.errors, "writes_per_sec": r.writes as f64 / r.secs, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "term_changes": term_changes, "loadavg": suite::loadavg()}))
            .collect();
        crate::output::print_json(&serde_json::Value::Array(rows));
    } else {
        let rows = results
            .iter()
            .map(|r| {
                vec![
                    r.clients.to_string(),
                    format!("{:.0}", r.writes as f64 / r.secs),
                    format!("{:.2}", r.p50_ms),
                    format!("{:.2}", r.p99_ms),
                    r.errors.to_string(),
                ]
            })
            .collect();
        println!(
            "{}",
            crate::output::table(
                &[
                    "clients",
                    if p.op == Op::Write {
                        "writes/s"
                    } else {
                        "reads/s"
                    },
                    "p50 ms",
                    "p99 ms",
                    "errors"
                ],
                rows
            )
        );
        if let Some(t) = term_changes {
            println!("elections during the run: {t} (load {})", suite::loadavg());
        }
    }
    for i in 0..max {
        let _ = admin
            .delete_vm(pb::VmRef {
                name: format!("bench-{i}"),
                request_id: String::new(),
                force: true,
            })
            .await;
    }
    Ok(())
}

async fn run(p: &Params, clients: usize) -> anyhow::Result<RunResult> {
    // Every client connects before the clock starts.
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        conns.push(connect(&p.addrs[i % p.addrs.len()]).await?);
    }
    let start = Instant::now();
    let end = start + p.duration;
    let op = p.op;
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut seq = 0u64;
            let name = format!("bench-{i}");
            while Instant::now() < end {
                seq += 1;
                let t = Instant::now();
                let ok = match op {
                    Op::Write => c
                        .set_vm_desired(pb::SetVmDesiredRequest {
                            name: name.clone(),
                            desired: "stopped".into(),
                            request_id: format!("bench-{clients}-{i}-{seq}-{}", std::process::id()),
                        })
                        .await
                        .is_ok(),
                    Op::Read { stale } => c
                        .get_vm(pb::GetVmRequest {
                            name: name.clone(),
                            stale,
                        })
                        .await
                        .is_ok(),
                };
                if ok {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |q: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        // A float-to-integer `as` saturates; the clamp keeps the rank inside the samples.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Ok(RunResult {
        clients,
        writes: lat.len(),
        errors,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

/// `blixard bench boot`: in the same run, time a raw QEMU boot of the default guest to its
/// readiness line, and `vm create` -> `running` for a blixard VM of the same kernel and
/// initramfs through the cluster at `addr`. The difference is the orchestration overhead.
pub async fn boot(addr: String, runs: usize, memory_mb: u64, json_out: bool) -> anyhow::Result<()> {
    use blixard_vmm::qemu::{build_argv, host_accel, QemuPaths};
    let (kernel, initrd) = blixard_vmm::guest::default_guest(&blixard_vmm::guest::guest_dir())?;
    let mut raw = Vec::new();
    let mut orchestrated = Vec::new();
    let mut c = connect(&addr).await?;
    for i in 0..runs {
        // Raw QEMU, same argv the driver builds.
        let dir =
            std::env::temp_dir().join(format!("blixard-bench-boot-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut cfg = blixard_vmm::VmConfig::new(format!("raw-{i}"));
        cfg.memory_mb = memory_mb;
        cfg.kernel = Some(kernel.clone());
        cfg.initrd = Some(initrd.clone());
        let paths = QemuPaths::in_dir(&dir);
        let argv = build_argv(&cfg, &paths, host_accel());
        let t = Instant::now();
        let mut child = tokio::process::Command::new("qemu-system-x86_64")
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("running qemu-system-x86_64 (run scripts/setup.sh)")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let text = std::fs::read_to_string(&paths.console).unwrap_or_default();
            if text.contains(blixard_vmm::READY_LINE) {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "raw QEMU boot did not reach {} within 120 s",
                    blixard_vmm::READY_LINE
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        raw.push(t.elapsed());
        let _ = child.kill().await;
        let _ = std::fs::remove_dir_all(&dir);

        // Through blixard.
        let name = format!("bench-boot-{}-{i}", std::process::id());
        let mut spec = pb::VmSpec::from(&blixard_core::VmSpec::new(name.clone()));
        spec.memory_mb = memory_mb;
        let t = Instant::now();
        c.create_vm(pb::CreateVmRequest {
            spec: Some(spec),
            request_id: format!("{name}-create"),
        })
        .await
        .map_err(|s| anyhow!("create: {}", s.message()))?;
        loop {
            let vm = c
                .get_vm(pb::GetVmRequest {
                    name: name.clone(),
                    stale: false,
                })
                .await
                .map_err(|s| anyhow!("status: {}", s.message()))?;
            let vm = vm.into_inner();
            if vm.state == "running" {
                break;
            }
            if vm.state == "failed" || Instant::now() > deadline + Duration::from_secs(60) {
                anyhow::bail!(
                    "blixard VM {name} did not reach running (state {}: {:?})",
                    vm.state,
                    vm.reason
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        orchestrated.push(t.elapsed());
        c.delete_vm(pb::VmRef {
            name: name.clone(),
            request_id: String::new(),
            force: true,
        })
        .await
        .map_err(|s| anyhow!("delete: {}", s.message()))?;
    }
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        (ms(v[0]), ms(v[v.len() / 2]), ms(v[v.len() - 1]))
    };
    let (rmin, rmed, rmax) = stats(&mut raw);
    let (bmin, bmed, bmax) = stats(&mut orchestrated);
    if json_out {
        crate::output::print_json(&json!({
            "runs": runs,
            "raw_qemu_ms": {"min": rmin, "median": rmed, "max": rmax},
            "blixard_create_to_running_ms": {"min": bmin, "median": bmed, "max": bmax},
            "overhead_median_ms": bmed - rmed,
        }));
    } else {
        let rows = vec![
            vec![
                "raw QEMU boot to ready".into(),
                format!("{rmin:.0}"),
                format!("{rmed:.0}"),
                format!("{rmax:.0}"),
            ],
            vec![
                "blixard create -> running".into(),
                format!("{bmin:.0}"),
                format!("{bmed:.0}"),
                format!("{bmax:.0}"),
            ],
        ];
        println!(
            "{}",
            crate::output::table(&["", "min ms", "median ms", "max ms"], rows)
        );
        println!(
            "orchestration overhead (median): {:.0} ms over {runs} runs",
            bmed - rmed
        );
    }
    Ok(())
}
