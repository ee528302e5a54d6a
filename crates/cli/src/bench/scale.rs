//! `blixard bench scale`: clusters of many nodes on this machine (process driver, `--voters`
//! voters, the rest learners): time to form, idle cost of the members, time to place VMs,
//! the leader's CPU and memory, learners' memory, elections and nodes declared down.
//!
//! Per cluster size, in order:
//! 1. form: node 1 `--init`s, the others join `--parallel` at a time (each with its own join
//!    token); formed when `node list` (linearizable) shows every node `up`;
//! 2. idle: `--idle` seconds with nothing to do (Raft heartbeats to every member, liveness
//!    heartbeats to the leader): CPU of the leader and of all nodes;
//! 3. place: `--vms` creates through Raft (`--clients` closed-loop clients spread over the
//!    nodes, each VM created stopped: placed and reserved, nothing to boot); CPU of the leader
//!    and of all nodes over that phase, RSS afterwards.
//!
//! Throughout, a sampler reads the leader's term and `node list` every second: term changes
//! are elections, a node not `up` is one the failure detector declared down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use blixard_api::pb;
use serde_json::json;

use super::local::{connect_with, LocalCluster};
use super::suite::{capacity_args, create_range, loadavg, Created};

pub struct Params {
    pub sizes: Vec<usize>,
    pub voters: usize,
    pub vms: usize,
    pub clients: usize,
    pub parallel: usize,
    pub idle: Duration,
    /// The scheduler strategy set once formed ("spread" or "binpack").
    pub strategy: String,
    /// `TOKIO_WORKER_THREADS` for every node (None: tokio's default, one per core).
    pub node_threads: Option<usize>,
    pub node_args: Vec<String>,
    pub json: bool,
}

/// The kernel's clock ticks per second in /proc/PID/stat (`USER_HZ`: 100 on Linux, part of
/// the /proc ABI whatever the kernel's internal HZ).
const USER_HZ: f64 = 100.0;

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of /proc/PID/stat, counted after
/// the parenthesised command name, which may hold spaces).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let get = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {} in /proc/{pid}/stat", i + 3))
    };
    Ok(get(11)? + get(12)?)
}

/// A field of /proc/PID/status (the number before its unit).
fn status_field(pid: u32, name: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
}

/// CPU ticks of every live node, by index.
fn all_ticks(c: &LocalCluster) -> Vec<Option<u64>> {
    c.nodes
        .iter()
        .map(|n| n.pid().and_then(|p| cpu_ticks(p).ok()))
        .collect()
}

/// Percent of one core used between two tick readings over `wall`.
fn cpu_pct(before: u64, after: u64, wall: Duration) -> f64 {
    after.saturating_sub(before) as f64 / USER_HZ / wall.as_secs_f64().max(1e-9) * 100.0
}

/// (leader's %, all nodes' % summed) of one core over a phase.
fn phase_cpu(
    before: &[Option<u64>],
    after: &[Option<u64>],
    leader: usize,
    wall: Duration,
) -> (f64, f64) {
    let lead = match (before.get(leader), after.get(leader)) {
        (Some(Some(b)), Some(Some(a))) => cpu_pct(*b, *a, wall),
        _ => f64::NAN,
    };
    let total: u64 = before
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?)))
        .sum();
    (lead, cpu_pct(0, total, wall))
}

/// What the sampler saw: the highest term, how many distinct leaders, the most nodes not
/// `up` at once (and which states), failed samples.
#[derive(Default)]
struct Seen {
    max_term: AtomicU64,
    max_not_up: AtomicUsize,
    failed: AtomicUsize,
    not_up_note: std::sync::Mutex<String>,
}

/// Every second until `stop`: the term on `addr`'s view and `node list` through it.
fn sampler(
    addr: String,
    creds: std::path::PathBuf,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match connect_with(&addr, &creds, Some(Duration::from_secs(5))).await {
                Ok(mut c) => {
                    if let Ok(s) = c.cluster_status(pb::ReadOptions { stale: true }).await {
                        seen.max_term
                            .fetch_max(s.into_inner().term, Ordering::Relaxed);
                    } else {
                        seen.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    match c.list_nodes(pb::ReadOptions { stale: false }).await {
                        Ok(l) => {
                            let nodes = l.into_inner().nodes;
                            let not_up: Vec<String> = nodes
                                .iter()
                                .filter(|n| n.state != "up")
                                .map(|n| format!("{}:{}", n.id, n.state))
                                .collect();
                            if not_up.len() > seen.max_not_up.load(Ordering::Relaxed) {
                                seen.max_not_up.store(not_up.len(), Ordering::Relaxed);
                                if let Ok(mut note) = seen.not_up_note.lock() {
                                    *note = not_up.join(" ");
                                }
                            }
                        }
                        Err(_) => {
                            seen.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(_) => {
                    seen.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_secs(1).saturating_sub(t.elapsed())).await;
        }
    })
}

struct Row {
    nodes: usize,
    voters: usize,
    learners: usize,
    form: Duration,
    idle_leader_cpu: f64,
    idle_total_cpu: f64,
    placed: usize,
    created: usize,
    place: Duration,
    retries: usize,
    retry_kinds: Vec<String>,
    place_leader_cpu: f64,
    place_total_cpu: f64,
    leader_rss_kib: u64,
    leader_threads: u64,
    voter_rss_kib: Option<u64>,
    learner_rss_kib: Option<u64>,
    learner_rss_max_kib: Option<u64>,
    total_rss_kib: u64,
    vms_per_node: (u32, u32),
    elections: u64,
    leader_changed: bool,
    max_not_up: usize,
    not_up_note: String,
    sample_failures: usize,
    load_before: String,
    load_after: String,
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

async fn one_size(n: usize, p: &Params) -> anyhow::Result<Row> {
    let load_before = loadavg();
    let mut args = capacity_args();
    args.extend(["--target-voters".to_string(), p.voters.to_string()]);
    args.extend(p.node_args.iter().cloned());
    let mut c = LocalCluster::empty(args)?;
    if let Some(t) = p.node_threads {
        c.node_env
            .push(("TOKIO_WORKER_THREADS".into(), t.to_string()));
    }
    match measure(n, p, &mut c, load_before).await {
        Ok(row) => Ok(row),
        Err(e) => {
            // The cluster's directory goes with it: keep the node logs for the post-mortem.
            let keep =
                std::env::temp_dir().join(format!("blixard-scale-logs-{}-{n}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for node in &c.nodes {
                let log = format!("n{}.log", node.id);
                let _ = std::fs::copy(c.dir.join(&log), keep.join(&log));
            }
            Err(e.context(format!("node logs kept in {}", keep.display())))
        }
    }
}

async fn measure(
    n: usize,
    p: &Params,
    c: &mut LocalCluster,
    load_before: String,
) -> anyhow::Result<Row> {
    eprintln!(
        "scale {n}: forming ({} voters, {} at a time; load {load_before})",
        p.voters, p.parallel
    );
    let t0 = Instant::now();
    c.add_node().await?;
    let mut started = 1;
    while started < n {
        let wave = (n - started).min(p.parallel.max(1));
        c.add_nodes(wave, p.parallel).await?;
        started += wave;
        eprintln!(
            "scale {n}: {started} nodes answer after {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    // Formed: every node registered and `up` (linearizable `node list`).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut up = 0;
        if let Ok(mut cl) = c.client(0).await {
            if let Ok(r) = cl.list_nodes(pb::ReadOptions { stale: false }).await {
                up = r
                    .into_inner()
                    .nodes
                    .iter()
                    .filter(|x| x.state == "up")
                    .count();
            }
        }
        if up >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("{n} nodes were not all up within 300 s of starting ({up} up)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let form = t0.elapsed();
    let st = c.status(0).await?;
    let voters = st.members.iter().filter(|m| m.role == "voter").count();
    let learners = st.members.iter().filter(|m| m.role == "learner").count();
    let leader_id = st
        .leader_id
        .ok_or_else(|| anyhow!("node 1 knows no leader after forming"))?;
    let leader = c
        .index_of(leader_id)
        .ok_or_else(|| anyhow!("leader {leader_id} is not a bench node"))?;
    let term0 = st.term;
    eprintln!(
        "scale {n}: formed in {:.1} s ({voters} voters, {learners} learners, leader {leader_id}, term {term0}; load {})",
        form.as_secs_f64(),
        loadavg()
    );

    c.client(0)
        .await?
        .set_scheduler_settings(pb::SchedulerSettings {
            strategy: p.strategy.clone(),
            request_id: format!("bench-scale-{n}-strategy"),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("setting the scheduler strategy: {}", s.message()))?;

    let seen = Arc::new(Seen::default());
    seen.max_term.store(term0, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let sampling = sampler(
        c.nodes[0].addr.clone(),
        c.creds.clone(),
        seen.clone(),
        stop.clone(),
    );

    let (idle_leader_cpu, idle_total_cpu) = if p.idle.is_zero() {
        (f64::NAN, f64::NAN)
    } else {
        let b = all_ticks(c);
        let t = Instant::now();
        tokio::time::sleep(p.idle).await;
        let r = phase_cpu(&b, &all_ticks(c), leader, t.elapsed());
        eprintln!(
            "scale {n}: idle {:.0} s: leader {:.0}% of a core, all nodes {:.0}% (load {})",
            p.idle.as_secs_f64(),
            r.0,
            r.1,
            loadavg()
        );
        r
    };

    let b = all_ticks(c);
    let Created {
        created,
        placed,
        took: place,
        retries,
        retry_kinds,
        ..
    } = create_range(c, "scale-", 0, p.vms, p.clients, &format!("scale {n}")).await?;
    let (place_leader_cpu, place_total_cpu) = phase_cpu(&b, &all_ticks(c), leader, place);
    eprintln!(
        "scale {n}: {created} created ({placed} placed) in {:.1} s, {retries} retried refusals {retry_kinds:?}: leader {place_leader_cpu:.0}% of a core, all nodes {place_total_cpu:.0}% (load {})",
        place.as_secs_f64(),
        loadavg()
    );
    stop.store(true, Ordering::Relaxed);
    let _ = sampling.await;

    let st = c.status(leader).await?;
    let leader_changed = st.leader_id != Some(leader_id);
    let voter_ids: Vec<u64> = st
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect();
    let mut voter_rss = Vec::new();
    let mut learner_rss = Vec::new();
    let mut total_rss = 0;
    for (i, node) in c.nodes.iter().enumerate() {
        let Ok((rss, _)) = c.rss_kib(i) else { continue };
        total_rss += rss;
        if i == leader {
            continue;
        }
        if voter_ids.contains(&node.id) {
            voter_rss.push(rss);
        } else {
            learner_rss.push(rss);
        }
    }
    let leader_pid = c.nodes[leader]
        .pid()
        .ok_or_else(|| anyhow!("the leader is not running"))?;
    let nodes = c
        .client(leader)
        .await?
        .list_nodes(pb::ReadOptions { stale: false })
        .await
        .map_err(|s| anyhow!("node list: {}", s.message()))?
        .into_inner()
        .nodes;
    let vms_per_node = (
        nodes.iter().map(|x| x.vms).min().unwrap_or(0),
        nodes.iter().map(|x| x.vms).max().unwrap_or(0),
    );
    let max_term = seen.max_term.load(Ordering::Relaxed).max(st.term);
    let not_up_note = seen
        .not_up_note
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    Ok(Row {
        nodes: n,
        voters,
        learners,
        form,
        idle_leader_cpu,
        idle_total_cpu,
        placed,
        created,
        place,
        retries,
        retry_kinds,
        place_leader_cpu,
        place_total_cpu,
        leader_rss_kib: status_field(leader_pid, "VmRSS:")?,
        leader_threads: status_field(leader_pid, "Threads:")?,
        voter_rss_kib: median(voter_rss),
        learner_rss_max_kib: learner_rss.iter().max().copied(),
        learner_rss_kib: median(learner_rss),
        total_rss_kib: total_rss,
        vms_per_node,
        elections: max_term - term0,
        leader_changed,
        max_not_up: seen.max_not_up.load(Ordering::Relaxed),
        not_up_note,
        sample_failures: seen.failed.load(Ordering::Relaxed),
        load_before,
        load_after: loadavg(),
    })
}

pub async fn scale(p: Params) -> anyhow::Result<()> {
    if p.voters == 0 {
        bail!("--voters must be at least 1");
    }
    if let Some(&n) = p.sizes.iter().find(|&&n| n < p.voters) {
        bail!(
            "a cluster of {n} nodes cannot have {} voters: give --nodes of at least --voters",
            p.voters
        );
    }
    let mut rows = Vec::new();
    for &n in &p.sizes {
        let row = one_size(n, &p).await?;
        rows.push(row);
        // Let the killed cluster's processes go before the next size starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mib = |k: u64| k as f64 / 1024.0;
    if p.json {
        crate::output::print_json(&json!({
            "voters_target": p.voters,
            "vms": p.vms,
            "clients": p.clients,
            "strategy": p.strategy,
            "node_threads": p.node_threads,
            "sizes": rows.iter().map(|r| json!({
                "nodes": r.nodes,
                "voters": r.voters,
                "learners": r.learners,
                "form_secs": r.form.as_secs_f64(),
                "idle_leader_cpu_pct": finite(r.idle_leader_cpu),
                "idle_all_nodes_cpu_pct": finite(r.idle_total_cpu),
                "created": r.created,
                "placed": r.placed,
                "place_secs": r.place.as_secs_f64(),
                "creates_per_sec": r.created as f64 / r.place.as_secs_f64(),
                "retried_refusals": r.retries,
                "retried_refusal_kinds": r.retry_kinds,
                "place_leader_cpu_pct": finite(r.place_leader_cpu),
                "place_all_nodes_cpu_pct": finite(r.place_total_cpu),
                "leader_rss_kib": r.leader_rss_kib,
                "leader_threads": r.leader_threads,
                "voter_rss_kib": r.voter_rss_kib,
                "learner_rss_kib": r.learner_rss_kib,
                "learner_rss_max_kib": r.learner_rss_max_kib,
                "all_nodes_rss_kib": r.total_rss_kib,
                "vms_per_node_min": r.vms_per_node.0,
                "vms_per_node_max": r.vms_per_node.1,
                "elections": r.elections,
                "leader_changed": r.leader_changed,
                "max_nodes_not_up": r.max_not_up,
                "nodes_not_up": r.not_up_note,
                "failed_samples": r.sample_failures,
                "loadavg_before": r.load_before,
                "loadavg_after": r.load_after,
            })).collect::<Vec<_>>(),
        }));
    } else {
        let opt = |v: Option<u64>| v.map_or("-".into(), |k| format!("{:.0}", mib(k)));
        let t = rows
            .iter()
            .map(|r| {
                vec![
                    r.nodes.to_string(),
                    format!("{}/{}", r.voters, r.learners),
                    format!("{:.1}", r.form.as_secs_f64()),
                    format!("{:.0} / {:.0}", r.idle_leader_cpu, r.idle_total_cpu),
                    format!(
                        "{} in {:.1} s ({:.0}/s, {} retried)",
                        r.placed,
                        r.place.as_secs_f64(),
                        r.created as f64 / r.place.as_secs_f64(),
                        r.retries
                    ),
                    format!("{:.0} / {:.0}", r.place_leader_cpu, r.place_total_cpu),
                    format!(
                        "{:.0} / {} / {}",
                        mib(r.leader_rss_kib),
                        opt(r.voter_rss_kib),
                        opt(r.learner_rss_kib)
                    ),
                    format!("{:.0}", mib(r.total_rss_kib)),
                    format!("{}", r.elections),
                    if r.max_not_up == 0 {
                        "0".into()
                    } else {
                        format!("{} ({})", r.max_not_up, r.not_up_note)
                    },
                    format!("{} -> {}", r.load_before, r.load_after),
                ]
            })
            .collect();
        println!(
            "{}",
            crate::output::table(
                &[
                    "nodes",
                    "voters/learners",
                    "form s",
                    "idle CPU % leader / all",
                    "placed",
                    "place CPU % leader / all",
                    "RSS MiB leader / voter / learner",
                    "RSS MiB all",
                    "elections",
                    "not up (max)",
                    "load",
                ],
                t
            )
        );
    }
    Ok(())
}

/// JSON has no NaN: a phase that did not run is null.
fn finite(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}
