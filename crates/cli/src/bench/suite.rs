//! The benchmarks that need their own cluster (see `local`): `failover`, `memory`,
//! `catchup` and `creates`. Progress goes to stderr; the result to stdout (a table, or JSON
//! with `--json`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use blixard_api::pb;
use serde_json::json;

use super::local::LocalCluster;

/// Capacity every bench node offers, so that 100,000 small stopped VMs are all placed (an
/// unplaced VM would be retried by every later placement round and distort the figures).
pub(super) fn capacity_args() -> Vec<String> {
    [
        "--vcpus",
        "65536",
        "--memory-mb",
        "4194304",
        "--disk-gb",
        "1000000",
        // Room for an address per VM beyond the default /16's 65,534.
        "--network-cidr",
        "10.0.0.0/12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub(super) fn small_spec(name: String) -> pb::VmSpec {
    let mut spec = pb::VmSpec::from(&blixard_core::VmSpec::new(name));
    spec.memory_mb = 16;
    spec.start = false;
    spec
}

/// Runs a benchmark until it ends or the process is asked to stop (SIGINT/SIGTERM); either way
/// the bench cluster is dropped, which kills its nodes and removes its directory.
pub async fn interruptible(
    f: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = f => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; the bench nodes were stopped"),
        _ = term.recv() => bail!("terminated; the bench nodes were stopped"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median_max(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    (s[s.len() / 2], s[s.len() - 1])
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What a run of creates did: counts, elapsed time, per-request latencies, and the refusals
/// retried (with the first message of each kind).
pub(super) struct Created {
    pub created: usize,
    pub placed: usize,
    pub took: Duration,
    pub latencies: Vec<Duration>,
    pub retries: usize,
    pub retry_kinds: Vec<String>,
}

/// Creates VMs `{prefix}{from}..{prefix}{to}` with `clients` concurrent closed-loop clients,
/// client `i` on node `i mod n` (like users talking to any member). A refusal the node marks
/// retryable (gRPC `UNAVAILABLE`: "retry shortly", no leader or no quorum for a moment) is
/// retried with the same request id, which the cluster de-duplicates, every 50 ms for up to
/// 60 s, and counted; anything else ends the run.
pub(super) async fn create_range(
    c: &LocalCluster,
    prefix: &str,
    from: usize,
    to: usize,
    clients: usize,
    progress: &str,
) -> anyhow::Result<Created> {
    let next = Arc::new(AtomicUsize::new(from));
    let done = Arc::new(AtomicUsize::new(0));
    let mut conns = Vec::new();
    for i in 0..clients {
        conns.push(c.client(i % c.nodes.len()).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let next = next.clone();
        let done = done.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut placed = 0usize;
            let mut retries = 0usize;
            let mut kinds: Vec<String> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let name = format!("{prefix}{i}");
                let t = Instant::now();
                let r = loop {
                    let r = conn
                        .create_vm(pb::CreateVmRequest {
                            spec: Some(small_spec(name.clone())),
                            request_id: format!("{name}-create"),
                        })
                        .await;
                    match r {
                        Err(s)
                            if s.code() == tonic::Code::Unavailable
                                && t.elapsed() < Duration::from_secs(60) =>
                        {
                            retries += 1;
                            // The kind of refusal, without the node and counts.
                            let kind: String = s.message().split(':').next().unwrap_or("").into();
                            if !kinds.contains(&kind) {
                                kinds.push(kind);
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        r => break r.map_err(|s| anyhow!("creating {name}: {}", s.message()))?,
                    }
                };
                lat.push(t.elapsed());
                if r.into_inner().node_id.is_some() {
                    placed += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((lat, placed, retries, kinds))
        }));
    }
    let total = to - from;
    let reporter = {
        let done = done.clone();
        let progress = progress.to_string();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!(
                    "{progress}: {} / {total} created",
                    done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut out = Created {
        created: 0,
        placed: 0,
        took: Duration::ZERO,
        latencies: Vec::new(),
        retries: 0,
        retry_kinds: Vec::new(),
    };
    let mut err = None;
    for t in tasks {
        match t.await? {
            Ok((l, p, r, k)) => {
                out.latencies.extend(l);
                out.placed += p;
                out.retries += r;
                for k in k {
                    if !out.retry_kinds.contains(&k) {
                        out.retry_kinds.push(k);
                    }
                }
            }
            Err(e) => err = Some(e),
        }
    }
    reporter.abort();
    if let Some(e) = err {
        return Err(e);
    }
    out.took = start.elapsed();
    out.created = out.latencies.len();
    Ok(out)
}

/// `bench failover`: kill -9 the leader of a 3-node cluster, time until a write is accepted
/// through a survivor; restart the killed node and repeat.
pub async fn failover(trials: usize, node_args: Vec<String>, json_out: bool) -> anyhow::Result<()> {
    eprintln!("failover: starting a 3-node cluster");
    let mut c = LocalCluster::start(3, node_args).await?;
    {
        let mut a = c.client(0).await?;
        a.create_vm(pb::CreateVmRequest {
            spec: Some(small_spec("bench-failover".into())),
            request_id: "bench-failover-create".into(),
        })
        .await
        .map_err(|s| anyhow!("creating the bench VM: {}", s.message()))?;
    }
    let mut rows = Vec::new();
    for trial in 0..trials {
        let leader = c.wait_stable(Duration::from_secs(60)).await?;
        // Let the restarted node settle in as a follower before the next kill.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = c
            .wait_stable(Duration::from_secs(60))
            .await
            .unwrap_or(leader);
        let term0 = c.status(leader).await?.term;
        let survivors: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != leader).collect();
        let mut conns = Vec::new();
        for &i in &survivors {
            conns.push(
                super::local::connect_with(
                    &c.nodes[i].addr,
                    &c.creds,
                    Some(Duration::from_millis(500)),
                )
                .await?,
            );
        }
        let killed = c.nodes[leader].id;
        c.kill(leader);
        let t0 = Instant::now();
        let mut seq = 0u64;
        let took = 'outer: loop {
            for conn in conns.iter_mut() {
                seq += 1;
                let r = conn
                    .set_vm_desired(pb::SetVmDesiredRequest {
                        name: "bench-failover".into(),
                        desired: "stopped".into(),
                        request_id: format!("bench-failover-{trial}-{seq}"),
                    })
                    .await;
                if r.is_ok() {
                    break 'outer t0.elapsed();
                }
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("no write accepted within 60 s of killing the leader");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let new_leader = c.wait_stable(Duration::from_secs(30)).await?;
        let term1 = c.status(new_leader).await?.term;
        eprintln!(
            "failover: trial {}/{trials}: killed leader {killed}, write accepted after {:.0} ms, {} election(s) (load {})",
            trial + 1,
            ms(took),
            term1 - term0,
            loadavg()
        );
        rows.push((ms(took), term1 - term0));
        c.restart(leader).await?;
    }
    let times: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let (median, max) = median_max(&times);
    if json_out {
        crate::output::print_json(&json!({
            "trials": rows.iter().map(|r| json!({"ms": r.0, "elections": r.1})).collect::<Vec<_>>(),
            "median_ms": median,
            "max_ms": max,
            "loadavg": loadavg(),
        }));
    } else {
        for (i, r) in rows.iter().enumerate() {
            println!("trial {}: {:.0} ms, {} election(s)", i + 1, r.0, r.1);
        }
        println!(
            "failover median {median:.0} ms, max {max:.0} ms over {trials} trials (load {})",
            loadavg()
        );
    }
    Ok(())
}

/// `bench memory`: RSS of the nodes of a 3-node cluster as it fills with VM records, and the
/// time `vm list` takes at each step.
pub async fn memory(
    steps: Vec<usize>,
    clients: usize,
    node_args: Vec<String>,
    json_out: bool,
) -> anyhow::Result<()> {
    eprintln!("memory: starting a 3-node cluster");
    let mut args = capacity_args();
    args.extend(node_args);
    let c = LocalCluster::start(3, args).await?;
    let mut rows = Vec::new();
    let mut have = 0;
    let base: Vec<(u64, u64)> = (0..3)
        .map(|i| c.rss_kib(i))
        .collect::<anyhow::Result<_>>()?;
    for &target in &steps {
        if target > have {
            let took = create_range(&c, "mem-", have, target, clients, "memory")
                .await?
                .took;
            eprintln!(
                "memory: {target} records ({} created in {:.1} s)",
                target - have,
                took.as_secs_f64()
            );
            have = target;
        }
        c.wait_stable(Duration::from_secs(60)).await?;
        let rss: Vec<(u64, u64)> = (0..3)
            .map(|i| c.rss_kib(i))
            .collect::<anyhow::Result<_>>()?;
        let list = c.time_cli(0, &["--json", "vm", "list"])?;
        let list_stale = c.time_cli(0, &["--json", "vm", "list", "--stale"])?;
        rows.push((target, rss, list, list_stale));
    }
    if json_out {
        crate::output::print_json(&json!({
            "empty_rss_kib": base.iter().map(|r| r.0).collect::<Vec<_>>(),
            "steps": rows.iter().map(|(n, rss, l, ls)| json!({
                "records": n,
                "rss_kib": rss.iter().map(|r| r.0).collect::<Vec<_>>(),
                "peak_rss_kib": rss.iter().map(|r| r.1).collect::<Vec<_>>(),
                "vm_list_ms": ms(*l),
                "vm_list_stale_ms": ms(*ls),
            })).collect::<Vec<_>>(),
            "loadavg": loadavg(),
        }));
    } else {
        let mib = |k: u64| format!("{:.0}", k as f64 / 1024.0);
        let mut t = vec![vec![
            "0".into(),
            base.iter()
                .map(|r| mib(r.0))
                .collect::<Vec<_>>()
                .join(" / "),
            base.iter()
                .map(|r| mib(r.1))
                .collect::<Vec<_>>()
                .join(" / "),
            "-".into(),
            "-".into(),
        ]];
        for (n, rss, l, ls) in &rows {
            t.push(vec![
                n.to_string(),
                rss.iter().map(|r| mib(r.0)).collect::<Vec<_>>().join(" / "),
                rss.iter().map(|r| mib(r.1)).collect::<Vec<_>>().join(" / "),
                format!("{:.0}", ms(*l)),
                format!("{:.0}", ms(*ls)),
            ]);
        }
        println!(
            "{}",
            crate::output::table(
                &[
                    "records",
                    "RSS MiB (n1/n2/n3)",
                    "peak MiB",
                    "vm list ms",
                    "vm list --stale ms"
                ],
                t
            )
        );
        println!("load {}", loadavg());
    }
    Ok(())
}

/// `bench catchup`: fill a 3-node cluster with `records` VM records, then add a fourth node
/// and time until its applied index reaches the leader's (as of the join).
pub async fn catchup(
    records: usize,
    clients: usize,
    node_args: Vec<String>,
    json_out: bool,
) -> anyhow::Result<()> {
    eprintln!("catchup: starting a 3-node cluster");
    let mut args = capacity_args();
    args.extend(node_args);
    let mut c = LocalCluster::start(3, args).await?;
    create_range(&c, "cu-", 0, records, clients, "catchup").await?;
    let leader = c.wait_stable(Duration::from_secs(60)).await?;
    let target = c.status(leader).await?.applied_index;
    eprintln!("catchup: {records} records, leader applied index {target}; adding node 4");
    let t0 = Instant::now();
    let i = c.add_node().await?;
    let answered = t0.elapsed();
    let (took, snapshot) = loop {
        if let Ok(s) = c.status(i).await {
            if s.applied_index >= target {
                break (t0.elapsed(), s.snapshot_index);
            }
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("node 4 did not catch up within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss = c.rss_kib(i)?;
    if json_out {
        crate::output::print_json(&json!({
            "records": records,
            "leader_applied_index": target,
            "answered_ms": ms(answered),
            "caught_up_ms": ms(took),
            "new_node_snapshot_index": snapshot,
            "new_node_rss_kib": rss.0,
            "loadavg": loadavg(),
        }));
    } else {
        println!(
            "node 4 answered after {:.0} ms, applied index {target} after {:.0} ms (snapshot index {:?}, RSS {} MiB) with {records} records (load {})",
            ms(answered),
            ms(took),
            snapshot,
            rss.0 / 1024,
            loadavg()
        );
    }
    Ok(())
}

/// `bench creates`: `count` VM creates through Raft on a 3-node cluster, each placed in the
/// apply that records it (created stopped: placed and reserved, nothing to boot).
pub async fn creates(
    count: usize,
    clients: usize,
    node_args: Vec<String>,
    json_out: bool,
) -> anyhow::Result<()> {
    eprintln!("creates: starting a 3-node cluster");
    let mut args = capacity_args();
    args.extend(node_args);
    let c = LocalCluster::start(3, args).await?;
    let Created {
        created,
        placed,
        took,
        latencies: mut lat,
        ..
    } = create_range(&c, "cr-", 0, count, clients, "creates").await?;
    lat.sort();
    // A rank in 1..=len (q in 0..=1): the float never exceeds len, so nothing is truncated.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let p = |q: f64| ms(lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1]);
    let rate = created as f64 / took.as_secs_f64();
    if json_out {
        crate::output::print_json(&json!({
            "count": count, "clients": clients, "created": created, "placed": placed,
            "secs": took.as_secs_f64(), "creates_per_sec": rate,
            "p50_ms": p(0.5), "p99_ms": p(0.99), "loadavg": loadavg(),
        }));
    } else {
        println!(
            "{created} created ({placed} placed) in {:.2} s: {rate:.0} creates/s, p50 {:.2} ms, p99 {:.2} ms, {clients} clients (load {})",
            took.as_secs_f64(),
            p(0.5),
            p(0.99),
            loadavg()
        );
    }
    Ok(())
}
