//! `blixard-fault`: run the fault harness for one or more seeds and print a summary.
//!
//! ```text
//! blixard-fault [--seed S | --seeds N [--first-seed S]] [--duration SECS] [--nodes N]
//!               [--clients N] [--keys N] [--bin PATH] [--out DIR] [--keep] [--no-replace] [--schedule-only]
//! blixard-fault --check-history FOLDER/history.jsonl
//! ```
//! Exit status 1 when any seed found an anomaly, 2 on a harness error.

use std::path::PathBuf;
use std::time::Duration;

use blixard_harness::run::{run, Config};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut seeds: Vec<u64> = Vec::new();
    let (mut count, mut first) = (None::<u64>, None::<u64>);
    let mut schedule_only = false;
    let mut cfg = Config::new(0, Duration::from_secs(30), blixard_harness::default_bin());
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--seed" => seeds.push(val().parse().unwrap_or_else(|_| usage("bad --seed"))),
            "--seeds" => count = Some(val().parse().unwrap_or_else(|_| usage("bad --seeds"))),
            "--first-seed" => {
                first = Some(val().parse().unwrap_or_else(|_| usage("bad --first-seed")))
            }
            "--duration" => {
                cfg.duration =
                    Duration::from_secs(val().parse().unwrap_or_else(|_| usage("bad --duration")))
            }
            "--nodes" => cfg.nodes = val().parse().unwrap_or_else(|_| usage("bad --nodes")),
            "--clients" => cfg.clients = val().parse().unwrap_or_else(|_| usage("bad --clients")),
            "--keys" => cfg.keys = val().parse().unwrap_or_else(|_| usage("bad --keys")),
            "--bin" => cfg.bin = PathBuf::from(val()),
            "--out" => cfg.out = PathBuf::from(val()),
            "--keep" => cfg.keep = true,
            "--no-replace" => cfg.replace = false,
            "--schedule-only" => schedule_only = true,
            "--check-history" => {
                check_history(&PathBuf::from(val()));
                return;
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if let Some(n) = count {
        let base = first.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
        seeds.extend((0..n).map(|k| base + k));
    }
    if seeds.is_empty() {
        seeds.push(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| {
                    u64::try_from(d.as_nanos() % 1_000_000_007).unwrap_or(1)
                }),
        );
    }
    if cfg.nodes < 3 {
        usage("--nodes must be at least 3");
    }
    if schedule_only {
        for s in &seeds {
            let sch = blixard_harness::schedule::Schedule::generate_with(
                *s,
                cfg.nodes,
                u64::try_from(cfg.duration.as_millis()).unwrap_or(u64::MAX),
                cfg.replace,
            );
            println!("{}", serde_json::to_string(&sch).expect("json"));
        }
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let (mut ops, mut faults, mut anomalies, mut failed) = (0, 0, 0, Vec::new());
    let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
    let started = std::time::Instant::now();
    for s in &seeds {
        let c = Config {
            seed: *s,
            ..cfg.clone()
        };
        // Ctrl-C / SIGTERM: drop the run (and the runtime's tasks), whose Drop guards kill the
        // daemons and remove the namespaces, then exit.
        let r = rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            tokio::select! {
                r = run(&c) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
                _ = term.recv() => None,
            }
        });
        let Some(r) = r else {
            drop(rt);
            eprintln!("fault: interrupted; cleaned up");
            std::process::exit(130);
        };
        match r {
            Ok(r) => {
                ops += r.ops;
                faults += r.faults_injected;
                for (k, v) in &r.faults_by_kind {
                    *by_kind.entry(k.clone()).or_default() += v;
                }
                anomalies += r.anomalies.len();
                if !r.passed() {
                    failed.push(format!(
                        "seed {s}: {} anomalies, evidence {}; replay: {}",
                        r.anomalies.len(),
                        r.dir.display(),
                        r.replay
                    ));
                }
            }
            Err(e) => {
                eprintln!("fault: seed {s}: harness error: {e:#}");
                std::process::exit(2);
            }
        }
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "SUMMARY seeds={} operations={ops} faults_injected={faults} by_kind={} anomalies={anomalies} failed_seeds={} wall_s={:.0}",
        seeds.len(),
        kinds.join(","),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for f in &failed {
        println!("FAILED {f}");
    }
    std::process::exit(if failed.is_empty() { 0 } else { 1 });
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("blixard-fault: {msg}");
    }
    eprintln!("usage: blixard-fault [--seed S]... [--seeds N [--first-seed S]] [--duration SECS] [--nodes N] [--clients N] [--keys N] [--bin PATH] [--out DIR] [--keep] [--no-replace] [--schedule-only]");
    std::process::exit(if msg.is_empty() { 0 } else { 2 });
}

/// Re-runs the linearizability check on a saved `history.jsonl` and explains violations.
fn check_history(path: &std::path::Path) {
    use blixard_harness::history::Record;
    use blixard_harness::lin;
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| usage(&format!("{}: {e}", path.display())));
    let history: Vec<Record> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("history line"))
        .collect();
    let mut keys: Vec<String> = history.iter().filter_map(|r| r.key.clone()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let ops = lin::project(&history, &key);
        let v = lin::check(&ops, lin::ABSENT, 20_000_000);
        println!("{key}: {} ops, {v:?}", ops.len());
        if let Some(k) = lin::shortest_failing_prefix(&ops, 20_000_000) {
            let mut sorted = ops.clone();
            sorted.sort_by_key(|o| o.call);
            println!("  shortest failing prefix: {k} ops; its last operations:");
            for o in &sorted[k.saturating_sub(12)..k] {
                println!(
                    "    {}",
                    serde_json::to_string(&history[o.record]).unwrap_or_default()
                );
            }
        }
    }
}
