//! `blixard bench writes`: closed-loop write load against a running cluster, to measure how
//! throughput grows with concurrent clients (many proposals share one log append and fsync).
//!
//! Each client owns one VM record (`bench-<i>`, created stopped, so no executor acts on it)
//! and, in a loop, sends `SetVmDesired` with a fresh request id: one replicated write of one
//! row per request, comparable to a small key-value put.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use blixard_api::{pb, BlixardClient};
use serde_json::json;

pub struct Params {
    pub addrs: Vec<String>,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub json: bool,
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
    BlixardClient::connect(format!("http://{addr}")).await.with_context(|| format!("cannot reach blixard at {addr}"))
}

pub async fn writes(p: Params) -> anyhow::Result<()> {
    let max = p.clients.iter().copied().max().unwrap_or(1);
    let first = p.addrs.first().ok_or_else(|| anyhow!("no address"))?;
    let mut admin = connect(first).await?;
    for i in 0..max {
        let mut spec = pb::VmSpec::from(&blixard_core::VmSpec::new(format!("bench-{i}")));
        spec.memory_mb = 16;
        spec.start = false;
        let r = admin.create_vm(pb::CreateVmRequest { spec: Some(spec), request_id: format!("bench-create-{i}") }).await;
        if let Err(s) = r {
            if s.code() != tonic::Code::AlreadyExists {
                return Err(anyhow!("creating bench VMs: {}", s.message()));
            }
        }
    }
    let mut results = Vec::new();
    for &n in &p.clients {
        results.push(run(&p, n).await?);
    }
    if p.json {
        let rows: Vec<_> = results
            .iter()
            .map(|r| json!({"clients": r.clients, "writes": r.writes, "errors": r.errors, "writes_per_sec": r.writes as f64 / r.secs, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}))
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
        println!("{}", crate::output::table(&["clients", "writes/s", "p50 ms", "p99 ms", "errors"], rows));
    }
    for i in 0..max {
        let _ = admin.delete_vm(pb::VmRef { name: format!("bench-{i}"), request_id: String::new() }).await;
    }
    Ok(())
}

async fn run(p: &Params, clients: usize) -> anyhow::Result<RunResult> {
    let start = Instant::now();
    let end = start + p.duration;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let addr = p.addrs[i % p.addrs.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&addr).await?;
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut seq = 0u64;
            while Instant::now() < end {
                seq += 1;
                let t = Instant::now();
                let req = pb::SetVmDesiredRequest {
                    name: format!("bench-{i}"),
                    desired: "stopped".into(),
                    request_id: format!("bench-{clients}-{i}-{seq}-{}", std::process::id()),
                };
                match c.set_vm_desired(req).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
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
        let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    Ok(RunResult { clients, writes: lat.len(), errors, secs, p50_ms: pct(0.50), p99_ms: pct(0.99) })
}
