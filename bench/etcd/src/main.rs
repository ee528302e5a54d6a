//! `etcd-bench`: closed-loop puts against etcd, the same shape as `blixard bench writes`.
//!
//! Each client opens its own connection to its endpoint (clients are spread round-robin over
//! `--endpoints`), owns one key (`bench/<i>`) and puts a value of `--value-size` bytes in a
//! loop, one request outstanding at a time, for `--duration` seconds per client count.
//! With `--leader`, every client talks to the leader.
//! Output: one row per client count, as a table or (`--json`) the same JSON rows
//! `blixard --json bench writes` prints.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use etcd_client::Client;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// etcd client URLs, comma separated (clients are spread over them).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Client counts to run, one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Seconds per client count.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Send every request to the leader (found by asking each endpoint for its status).
    #[arg(long)]
    leader: bool,
    #[arg(long)]
    json: bool,
}

/// The endpoint whose member is the leader.
async fn find_leader(endpoints: &[String]) -> anyhow::Result<String> {
    for ep in endpoints {
        let Ok(mut c) = Client::connect([ep.as_str()], None).await else {
            continue;
        };
        if let Ok(s) = c.status().await {
            if s.header().map(|h| h.member_id()) == Some(s.leader()) {
                return Ok(ep.clone());
            }
        }
    }
    anyhow::bail!(
        "no endpoint reports itself the leader: {}",
        endpoints.join(",")
    )
}

struct Row {
    clients: usize,
    writes: usize,
    errors: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut a = Args::parse();
    if a.leader {
        a.endpoints = vec![find_leader(&a.endpoints).await?];
    }
    if a.clients.iter().any(|&c| c == 0) {
        anyhow::bail!("--clients: every count must be at least 1");
    }
    let mut rows = Vec::new();
    for &n in &a.clients {
        rows.push(run(&a, n).await?);
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"clients": r.clients, "writes": r.writes, "errors": r.errors,
                       "writes_per_sec": r.writes as f64 / r.secs,
                       "p50_ms": r.p50_ms, "p99_ms": r.p99_ms})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("clients  writes/s  p50 ms  p99 ms  errors");
        for r in &rows {
            println!(
                "{:<8} {:<9.0} {:<7.2} {:<7.2} {}",
                r.clients,
                r.writes as f64 / r.secs,
                r.p50_ms,
                r.p99_ms,
                r.errors
            );
        }
    }
    Ok(())
}

async fn run(a: &Args, clients: usize) -> anyhow::Result<Row> {
    let value = vec![b'x'; a.value_size];
    // Connect every client before the clock starts.
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let ep = a.endpoints[i % a.endpoints.len()].clone();
        let c = Client::connect([ep.as_str()], None)
            .await
            .with_context(|| format!("connecting to etcd at {ep}"))?;
        conns.push(c);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration);
    let mut tasks = Vec::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("bench/{i}");
            let mut lat = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < end {
                let t = Instant::now();
                match c.put(key.as_str(), value.clone(), None).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
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
    Ok(Row {
        clients,
        writes: lat.len(),
        errors,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}
