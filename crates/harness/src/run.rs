//! One run: cluster up, clients + nemesis for the duration, heal, check, report.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use blixard_api::pb;
use serde::Serialize;
use tokio::time::Instant;

use crate::check;
use crate::client::{self, History, Workload};
use crate::cluster::{Cluster, SHRUNK_VCPUS, VCPUS};
use crate::history::{OpKind, Outcome, Record};
use crate::lin::{self, Verdict};
use crate::schedule::{Fault, Schedule};

#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    /// VMs created (running) before the workload and never deleted. With binpack they fill one
    /// node ([`VCPUS`] of 1-vCPU VMs), the victims of preemption and shrinking.
    pub pinned: usize,
    pub op_timeout: Duration,
    pub bin: PathBuf,
    /// The run folder is created under it.
    pub out: PathBuf,
    /// Keep the run folder even when the run passes.
    pub keep: bool,
    /// Allow membership-change faults in the schedule.
    pub replace: bool,
}

impl Config {
    pub fn new(seed: u64, duration: Duration, bin: PathBuf) -> Config {
        Config {
            seed,
            nodes: 3,
            duration,
            clients: 6,
            keys: 4,
            pinned: 4,
            op_timeout: Duration::from_secs(2),
            bin,
            out: std::env::temp_dir().join("blixard-fault"),
            keep: false,
            replace: true,
        }
    }

    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p blixard-harness --bin blixard-fault -- --seed {} --duration {} --nodes {} --bin {}{}",
            self.seed,
            self.duration.as_secs(),
            self.nodes,
            self.bin.display(),
            if self.replace { "" } else { " --no-replace" }
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    pub ops: usize,
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub faults_injected: usize,
    pub faults_skipped: usize,
    /// Injected faults by kind (`freeze_leader`, `preempt`, ...).
    pub faults_by_kind: BTreeMap<String, usize>,
    pub vm_runs: usize,
    pub anomalies: Vec<String>,
    pub warnings: Vec<String>,
    pub dir: PathBuf,
    pub replay: String,
    pub elapsed_s: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} ops ({} ok/definite, {} unknown), {} faults injected {:?} ({} skipped), {} VM runs, {} anomalies, {} warnings, {:.0}s",
            self.seed,
            self.ops,
            self.ops_ok,
            self.ops_unknown,
            self.faults_injected,
            self.faults_by_kind,
            self.faults_skipped,
            self.vm_runs,
            self.anomalies.len(),
            self.warnings.len(),
            self.elapsed_s
        )
    }
}

#[derive(Serialize)]
struct NemesisLog {
    at_ms: u64,
    step: usize,
    action: String,
}

/// A duration in whole milliseconds, saturating.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Applies one fault; returns a description, or `None` when skipped.
async fn inject(c: &Arc<tokio::sync::Mutex<Cluster>>, fault: &Fault) -> Result<Option<String>> {
    let mut c = c.lock().await;
    let n = c.daemons.len();
    let all: Vec<usize> = (1..=n).collect();
    let rest = |i: usize| all.iter().copied().filter(|&j| j != i).collect::<Vec<_>>();
    Ok(match fault {
        Fault::Isolate { node } => {
            c.net.cut(*node, &rest(*node))?;
            Some(format!("isolated node {node}"))
        }
        Fault::IsolateLeader => match c.leader().await {
            Some(l) => {
                c.net.cut(l, &rest(l))?;
                Some(format!("isolated leader {l}"))
            }
            None => None,
        },
        Fault::Partition { side } => {
            let other: Vec<usize> = all.iter().copied().filter(|j| !side.contains(j)).collect();
            for &i in side {
                c.net.cut(i, &other)?;
            }
            Some(format!("partitioned {side:?} | {other:?}"))
        }
        Fault::Kill { node } => {
            c.kill9(*node);
            Some(format!("kill -9 node {node}"))
        }
        Fault::Pause { node } => {
            c.pause(*node);
            Some(format!("SIGSTOP node {node}"))
        }
        Fault::Replace { node } => Some(c.replace(*node).await?),
        Fault::FreezeLeader => match c.leader().await {
            Some(l) => {
                c.pause(l);
                c.frozen_leader = Some(l);
                Some(format!("SIGSTOP leader {l} (past lease + grace)"))
            }
            None => None,
        },
        Fault::Preempt => {
            let Some((slot, victims)) = c.busiest().await else {
                return Ok(None);
            };
            let node = c.daemons[slot - 1].node_id;
            c.preempt_seq += 1;
            let name = format!("vip-{}", c.preempt_seq);
            // Set first: if the create's answer is lost, heal still deletes it.
            c.preempting = Some(name.clone());
            let mut spec = client::spec(&name, true);
            spec.vcpus = VCPUS;
            spec.priority = Some(90);
            spec.preempt = true;
            spec.node = Some(node);
            let rid = uuid::Uuid::new_v4().to_string();
            let end = Instant::now() + Duration::from_secs(5);
            let mut k = slot;
            loop {
                let req = pb::CreateVmRequest {
                    spec: Some(spec.clone()),
                    request_id: rid.clone(),
                };
                // any node but the target, which may be slow to answer while it stops VMs
                k = k % n + 1;
                let r = c.clients[k - 1].clone().create_vm(req).await;
                match r {
                    Ok(_) => break,
                    Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                    Err(s) if Instant::now() > end => {
                        anyhow::bail!("creating {name} failed: {s}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            Some(format!(
                "preempt: {name} (priority 90, {VCPUS} vCPUs, pinned) on node {node} (slot {slot}) running {victims:?}"
            ))
        }
        Fault::Shrink => {
            let Some((slot, vms)) = c.busiest().await else {
                return Ok(None);
            };
            let what = c.restart_with_vcpus(slot, SHRUNK_VCPUS).await?;
            Some(format!("shrink: {what}; it was running {vms:?}"))
        }
        Fault::Netem {
            node,
            delay_ms,
            loss_pct,
        } => {
            if c.net.netem_supported() {
                c.net.netem(*node, *delay_ms, *loss_pct)?;
                Some(format!(
                    "netem node {node}: delay {delay_ms}ms loss {loss_pct}%"
                ))
            } else {
                None
            }
        }
    })
}

/// At the end of a leader freeze: waits (at most `extra`) until another node reports the frozen
/// one down, so the new leader's verdict (and its re-placements) happen before the old leader
/// wakes. On a loaded machine electing the new leader can take seconds. Returns what happened.
async fn settle_freeze(c: &Arc<tokio::sync::Mutex<Cluster>>, extra: Duration) -> Option<String> {
    let mut c = c.lock().await;
    let slot = c.frozen_leader.take()?;
    let started = Instant::now();
    let end = started + extra;
    loop {
        if c.state_seen_by_others(slot).await.as_deref() == Some("down") {
            return Some(format!(
                "slot {slot} declared down (after {} ms more)",
                started.elapsed().as_millis()
            ));
        }
        if Instant::now() > end {
            return Some(format!(
                "slot {slot} not declared down within {} ms more",
                extra.as_millis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Heals everything: network rules, paused and killed daemons, shrunk nodes (restarted with
/// their full capacity), the preempting VM (deleted).
async fn heal_all(c: &Arc<tokio::sync::Mutex<Cluster>>) -> Result<Vec<usize>> {
    let mut c = c.lock().await;
    c.net.heal();
    for i in 1..=c.daemons.len() {
        if c.daemons[i - 1].vcpus != VCPUS {
            if c.is_running(i) {
                c.restart_with_vcpus(i, VCPUS).await?;
            } else {
                c.daemons[i - 1].vcpus = VCPUS;
            }
        }
    }
    // A daemon that exited by itself (it should not) is restarted like a killed one; its log
    // tells why it stopped.
    let exited = c.reap();
    for i in &exited {
        eprintln!("fault: node in slot {i} exited on its own; restarting it");
    }
    for i in 1..=c.daemons.len() {
        if !c.is_running(i) {
            c.spawn(i, &[])?;
        } else if c.daemons[i - 1].paused() {
            c.resume(i);
        }
    }
    if let Some(name) = c.preempting.take() {
        let end = Instant::now() + Duration::from_secs(15);
        let n = c.clients.len();
        let mut k = 0;
        loop {
            k = k % n + 1;
            let req = pb::VmRef {
                name: name.clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
                force: true,
            };
            match c.clients[k - 1].clone().delete_vm(req).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::NotFound => break,
                Err(s) if Instant::now() > end => {
                    c.preempting = Some(name.clone());
                    anyhow::bail!("deleting the preempting VM {name} failed: {s}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(exited)
}

fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in items {
        serde_json::to_writer(&mut f, i)?;
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// Runs one seed end to end. Errors are harness failures (setup); anomalies are in the report.
pub async fn run(cfg: &Config) -> Result<Report> {
    let started = std::time::Instant::now();
    let dir = cfg.out.join(format!("seed-{}-{}", cfg.seed, now_unix_ms()));
    std::fs::create_dir_all(&dir)?;
    let schedule = Schedule::generate_with(
        cfg.seed,
        cfg.nodes,
        u64::try_from(cfg.duration.as_millis()).unwrap_or(u64::MAX),
        cfg.replace,
    );
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_string_pretty(&schedule)?,
    )?;
    std::fs::write(
        dir.join("replay.sh"),
        format!("#!/bin/sh\n{}\n", cfg.replay_command()),
    )?;
    eprintln!(
        "fault: seed {} ({} faults scheduled over {:?}), folder {}",
        cfg.seed,
        schedule.steps.len(),
        cfg.duration,
        dir.display()
    );

    let result = run_in(cfg, &dir, &schedule, started).await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "fault: seed {} harness error, folder kept: {}\nfault: replay: {}",
                cfg.seed,
                dir.display(),
                cfg.replay_command()
            );
            return Err(e.context(format!("run folder {}", dir.display())));
        }
    };
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if report.passed() && !cfg.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("fault: {}", report.summary());
    if !report.passed() {
        for a in report.anomalies.iter().take(10) {
            eprintln!("fault: ANOMALY {a}");
        }
        eprintln!(
            "fault: evidence in {}\nfault: replay: {}",
            dir.display(),
            cfg.replay_command()
        );
    }
    Ok(report)
}

async fn run_in(
    cfg: &Config,
    dir: &Path,
    schedule: &Schedule,
    started: std::time::Instant,
) -> Result<Report> {
    let mut anomalies = Vec::new();
    let mut warnings = Vec::new();
    let cluster = Cluster::start(&cfg.bin, dir, cfg.nodes, cfg.op_timeout)
        .await
        .context("starting the cluster")?;
    let events_path = cluster.events.clone();
    let clients = cluster.clients.clone();
    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));

    // VMs that are never deleted: any overlap of two of their runs is an anomaly.
    let pinned: Vec<String> = (0..cfg.pinned).map(|i| format!("pin-{i}")).collect();
    for p in &pinned {
        let rid = uuid::Uuid::new_v4().to_string();
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let req = pb::CreateVmRequest {
                spec: Some(client::spec(p, true)),
                request_id: rid.clone(),
            };
            let r = tokio::time::timeout(cfg.op_timeout, clients[0].clone().create_vm(req)).await;
            if matches!(r, Ok(Ok(_))) {
                break;
            }
            anyhow::ensure!(Instant::now() < end, "could not create {p}: {r:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let keys: Vec<String> = (0..cfg.keys).map(|i| format!("k{i}")).collect();
    let epoch = Instant::now();
    let until = epoch + cfg.duration;
    let workload = Arc::new(Workload {
        seed: cfg.seed,
        keys: keys.clone(),
        clients: clients.clone(),
        op_timeout: cfg.op_timeout,
        epoch,
    });
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..cfg.clients {
        tasks.push(tokio::spawn(workload.clone().client(
            i,
            until,
            history.clone(),
        )));
    }

    // The nemesis, on its own task, following the schedule.
    let nem_cluster = cluster.clone();
    let steps = schedule.steps.clone();
    let duration_ms = schedule.duration_ms;
    let nemesis = tokio::spawn(async move {
        let mut log = Vec::new();
        let (mut injected, mut skipped) = (0, 0);
        let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
        let mut exited: Vec<usize> = Vec::new();
        // A step that overran (waiting for a verdict, a slow restart) shifts the rest of the
        // schedule, so later faults keep their length; a step that no longer fits in the
        // workload is skipped.
        let mut shift = 0u64;
        for (k, s) in steps.iter().enumerate() {
            let s = &crate::schedule::Step {
                at_ms: s.at_ms + shift,
                ..s.clone()
            };
            if s.at_ms + s.dur_ms > duration_ms {
                skipped += 1;
                log.push(NemesisLog {
                    at_ms: ms(epoch.elapsed()),
                    step: k,
                    action: format!(
                        "skipped {:?}: the schedule ran {shift} ms late, no time left",
                        s.fault
                    ),
                });
                continue;
            }
            tokio::time::sleep_until(epoch + Duration::from_millis(s.at_ms)).await;
            let at = ms(epoch.elapsed());
            match inject(&nem_cluster, &s.fault).await {
                Ok(Some(what)) => {
                    injected += 1;
                    *by_kind.entry(s.fault.kind().to_string()).or_default() += 1;
                    log.push(NemesisLog {
                        at_ms: at,
                        step: k,
                        action: what,
                    });
                }
                Ok(None) => {
                    skipped += 1;
                    log.push(NemesisLog {
                        at_ms: at,
                        step: k,
                        action: format!("skipped {:?}", s.fault),
                    });
                }
                Err(e) => {
                    skipped += 1;
                    log.push(NemesisLog {
                        at_ms: at,
                        step: k,
                        action: format!("failed {:?}: {e:#}", s.fault),
                    });
                }
            }
            tokio::time::sleep_until(epoch + Duration::from_millis(s.at_ms + s.dur_ms)).await;
            if let Some(what) = settle_freeze(&nem_cluster, Duration::from_secs(10)).await {
                log.push(NemesisLog {
                    at_ms: ms(epoch.elapsed()),
                    step: k,
                    action: what,
                });
            }
            let at = ms(epoch.elapsed());
            let healed = heal_all(&nem_cluster).await;
            shift += ms(epoch.elapsed()).saturating_sub(s.at_ms + s.dur_ms);
            log.push(NemesisLog {
                at_ms: at,
                step: k,
                action: match healed {
                    Ok(ex) if ex.is_empty() => "heal ok".into(),
                    Ok(ex) => {
                        exited.extend(ex.iter().copied());
                        format!("heal ok; restarted slots {ex:?}, which had exited on their own")
                    }
                    Err(e) => format!("heal failed: {e:#}"),
                },
            });
        }
        (log, injected, skipped, by_kind, exited)
    });
    for t in tasks {
        t.await?;
    }
    let (nem_log, faults_injected, faults_skipped, faults_by_kind, mut exited) = nemesis.await?;
    write_jsonl(&dir.join("nemesis.jsonl"), &nem_log)?;
    exited.extend(heal_all(&cluster).await?);
    for i in exited {
        warnings.push(format!(
            "the daemon in slot {i} exited on its own during the run (see nodes/n{i}.log)"
        ));
    }

    // After healing: every node converges to the same applied index, digest and membership.
    let c = cluster.lock().await;
    let n = cfg.nodes;
    let converged = c
        .wait("convergence after healing", Duration::from_secs(40), |s| {
            let Some(first) = s.first().and_then(|s| s.as_ref()) else {
                return false;
            };
            let members = |r: &pb::ClusterStatusReply| {
                let mut m: Vec<(u64, String)> =
                    r.members.iter().map(|m| (m.id, m.role.clone())).collect();
                m.sort();
                m
            };
            first.leader_id.is_some()
                && s.iter().all(|r| {
                    r.as_ref().is_some_and(|r| {
                        r.applied_index == first.applied_index
                            && r.state_digest == first.state_digest
                            && members(r) == members(first)
                            && r.leader_id == first.leader_id
                    })
                })
                && first.members.len() == n
        })
        .await;
    if let Err(e) = &converged {
        anomalies.push(format!(
            "nodes did not converge (applied index, digest, membership): {e:#}"
        ));
    }

    // Final linearizable reads from every node join the history.
    let keyset: BTreeSet<String> = keys.iter().cloned().collect();
    let mut final_state = None;
    for i in 1..=n {
        let mut cl = clients[i - 1].clone();
        let invoke_us = workload.us();
        let outcome = client::perform(
            &mut cl,
            None,
            &OpKind::List,
            &keyset,
            Duration::from_secs(10),
        )
        .await;
        let complete_us = workload.us();
        if let Outcome::List { values } = &outcome {
            final_state.get_or_insert_with(|| values.clone());
        }
        history.lock().unwrap().push(Record {
            id: 0,
            client: usize::MAX,
            node: i,
            key: None,
            op: OpKind::List,
            invoke_us,
            complete_us,
            outcome,
        });
    }
    let vm_events = match blixard_vmm::read_events(&events_path) {
        Ok(e) => e,
        Err(e) => {
            anomalies.push(format!(
                "the VM events file cannot be read, so no-VM-runs-twice cannot be judged: {e}"
            ));
            Vec::new()
        }
    };
    drop(c);

    let mut history = std::mem::take(&mut *history.lock().unwrap());
    history.sort_by_key(|r| (r.invoke_us, r.client));
    for (i, r) in history.iter_mut().enumerate() {
        r.id = i;
    }
    write_jsonl(&dir.join("history.jsonl"), &history)?;

    // Linearizability per key.
    for (key, verdict) in lin::check_history(&history, &keys, 20_000_000) {
        match verdict {
            Verdict::Ok => {}
            Verdict::Violation { stuck_record, linearized } => anomalies.push(format!(
                "key {key}: history not linearizable (deepest search placed {linearized} ops; stuck at record {stuck_record}: {})",
                serde_json::to_string(&history[stuck_record]).unwrap_or_default()
            )),
            Verdict::Inconclusive => warnings.push(format!("key {key}: linearizability search budget exhausted")),
        }
    }
    match &final_state {
        Some(fs) => anomalies.extend(check::acknowledged_survive(&history, fs)),
        None => anomalies.push("no node answered the final linearizable read after healing".into()),
    }
    anomalies.extend(check::runs_twice(&vm_events));
    let strict: BTreeSet<String> = pinned.iter().cloned().collect();
    let started_pins: BTreeSet<&str> = vm_events
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| strict.contains(*n))
        .collect();
    if started_pins.len() < pinned.len() {
        warnings.push(format!(
            "only {} of {} pinned VMs ever started",
            started_pins.len(),
            pinned.len()
        ));
    }

    let unknown = history
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Unknown { .. }))
        .count();
    let by_outcome: BTreeMap<String, usize> = history.iter().fold(BTreeMap::new(), |mut m, r| {
        let k = match &r.outcome {
            Outcome::Unknown { error } => {
                format!("unknown: {}", error.chars().take(60).collect::<String>())
            }
            o => format!("{o:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or("")
                .to_string(),
        };
        *m.entry(k).or_insert(0) += 1;
        m
    });
    std::fs::write(
        dir.join("outcomes.json"),
        serde_json::to_string_pretty(&by_outcome)?,
    )?;
    // The cluster (processes, namespaces) is torn down when the last Arc drops, here.
    drop(cluster);
    Ok(Report {
        seed: cfg.seed,
        ops: history.len(),
        ops_ok: history.len() - unknown,
        ops_unknown: unknown,
        faults_injected,
        faults_skipped,
        faults_by_kind,
        vm_runs: check::intervals(&vm_events).len(),
        anomalies,
        warnings,
        dir: dir.to_path_buf(),
        replay: cfg.replay_command(),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
