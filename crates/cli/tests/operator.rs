//! The operator's surface end to end: the event stream (gRPC via the CLI, and HTTP), the HTTP
//! JSON API, `/metrics` and the dashboard, on real daemons.

mod common;
mod https_client;

use common::{json, run_cli, try_json, wait_for, Cluster, DEADLINE};
use serde_json::Value;

fn events(addr: &str, since: Option<u64>) -> Vec<Value> {
    let mut args = vec!["events".to_string()];
    if let Some(s) = since {
        args.push("--since".into());
        args.push(s.to_string());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    json(addr, &a)
        .as_array()
        .expect("an array of events")
        .clone()
}

fn has(evs: &[Value], ty: &str, f: impl Fn(&Value) -> bool) -> bool {
    evs.iter().any(|e| e["type"] == ty && f(e))
}

#[test]
fn every_node_emits_the_same_events_and_resume_gives_each_once() {
    let c = Cluster::start(3, &[]);
    let vm = json(&c.addr(2), &["vm", "create", "ev1", "--memory", "64"]);
    let node = vm["node_id"].as_u64().expect("placed");
    c.wait_vm(1, "ev1", "running", DEADLINE, |v| v["state"] == "running");
    json(&c.addr(1), &["vm", "stop", "ev1"]);
    c.wait_vm(1, "ev1", "stopped", DEADLINE, |v| v["state"] == "stopped");
    json(&c.addr(3), &["vm", "delete", "ev1", "--force"]);

    let evs = wait_for("the deletion event", DEADLINE, || {
        let e = events(&c.addr(1), None);
        has(&e, "vm_deleted", |e| e["vm"] == "ev1").then_some(e)
    });
    assert!(has(&evs, "membership", |_| true), "{evs:?}");
    assert!(has(&evs, "node_registered", |e| e["node"] == 3), "{evs:?}");
    assert!(has(&evs, "vm_created", |e| e["vm"] == "ev1"));
    assert!(has(&evs, "vm_placed", |e| e["vm"] == "ev1"
        && e["node"] == node
        && e["placement"].is_string()));
    assert!(has(&evs, "vm_state", |e| e["vm"] == "ev1"
        && e["to"] == "running"));
    assert!(has(&evs, "vm_desired", |e| e["vm"] == "ev1"
        && e["desired"] == "stopped"));
    assert!(has(&evs, "vm_state", |e| e["vm"] == "ev1"
        && e["to"] == "stopped"));
    // Indexes never go down.
    let idx: Vec<u64> = evs
        .iter()
        .map(|e| e["index"].as_u64().expect("index"))
        .collect();
    assert!(idx.windows(2).all(|w| w[0] <= w[1]), "{idx:?}");
    let last = *idx.last().expect("events");

    // Every member, having applied the same log, reports the same events up to that index.
    for id in [2, 3] {
        let other = wait_for(
            &format!("node {id} to reach index {last}"),
            DEADLINE,
            || {
                let e = events(&c.addr(id), None);
                e.iter()
                    .any(|e| e["index"].as_u64() >= Some(last))
                    .then_some(e)
            },
        );
        let other: Vec<Value> = other
            .into_iter()
            .filter(|e| e["index"].as_u64() <= Some(last))
            .collect();
        assert_eq!(other, evs, "node {id} emits the same events");
    }

    // Resuming after any index gives exactly the events after it: none missing, none twice.
    for cut in [idx[0], idx[idx.len() / 2], last] {
        let tail: Vec<Value> = events(&c.addr(3), Some(cut))
            .into_iter()
            .filter(|e| e["index"].as_u64() <= Some(last))
            .collect();
        let expect: Vec<Value> = evs
            .iter()
            .filter(|e| e["index"].as_u64() > Some(cut))
            .cloned()
            .collect();
        assert_eq!(tail, expect, "resume after {cut}");
    }

    // The human form names the subject.
    let out = run_cli(&c.addr(1), &["events", "--since", &idx[0].to_string()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm ev1"));
}

/// The bearer token HTTP requests carry (one test per process: set by [`http_base`]).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The HTTPS client trusting the cluster CA (set by [`http_base`]).
static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();

/// `(status, body)` of an HTTPS request to a node's `--http` address, with the test's bearer
/// token.
fn http(method: &str, url: &str, body: Option<Value>) -> (u16, String) {
    let agent = AGENT.get().expect("http_base first");
    https_client::call(agent, method, url, TOKEN.get().map(String::as_str), body)
}

fn http_json(method: &str, url: &str, body: Option<Value>, want: u16) -> Value {
    let (code, text) = http(method, url, body);
    assert_eq!(code, want, "{method} {url}: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {url} is not JSON ({e}): {text}"))
}

/// The base URL of node `id`'s HTTP server; the first call also creates the admin bearer
/// token the test's requests carry.
fn http_base(c: &Cluster, id: u64) -> String {
    TOKEN.get_or_init(|| {
        wait_for("a bearer token", DEADLINE, || {
            try_json(
                &c.addr(1),
                &["auth", "token", "--name", "http-test", "--role", "admin"],
            )?["token"]
                .as_str()
                .map(String::from)
        })
    });
    AGENT.get_or_init(|| https_client::agent(&c.node(1).dir));
    wait_for("the HTTP address file", DEADLINE, || {
        https_client::base(&c.node(id).dir)
    })
}

/// The `data:` documents of a finished SSE body.
fn sse_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).expect("an event is JSON"))
        .collect()
}

fn scrape(base: &str) -> prometheus_parse::Scrape {
    let (code, text) = http("GET", &format!("{base}/metrics"), None);
    assert_eq!(code, 200);
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("/metrics parses as Prometheus text")
}

fn sample(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[test]
fn http_api_answers_like_the_cli_and_serves_metrics_events_and_dashboard() {
    let c = Cluster::start(3, &["--http", "127.0.0.1:0"]);
    let b1 = http_base(&c, 1);
    let b3 = http_base(&c, 3);
    assert_eq!(
        http("GET", &format!("{b1}/healthz"), None),
        (200, "ok\n".to_string())
    );
    wait_for("node 3 ready", DEADLINE, || {
        (http("GET", &format!("{b3}/readyz"), None).0 == 200).then_some(())
    });

    // Writes through node 3's HTTP API, the same rules as gRPC.
    let vm = http_json(
        "POST",
        &format!("{b3}/v1/vms"),
        Some(serde_json::json!({"name": "h1", "memory_mb": 64})),
        201,
    );
    assert_eq!(vm["name"], "h1");
    let err = http_json(
        "POST",
        &format!("{b1}/v1/vms"),
        Some(serde_json::json!({"name": "h1", "memory_mb": 64})),
        409,
    );
    assert!(err["error"].as_str().unwrap().contains("h1"), "{err}");
    let err = http_json(
        "POST",
        &format!("{b1}/v1/vms"),
        Some(serde_json::json!({"name": "h2", "memry": 1})),
        400,
    );
    assert!(err["error"].as_str().unwrap().contains("memry"), "{err}");
    let err = http_json(
        "POST",
        &format!("{b1}/v1/vms"),
        Some(serde_json::json!({"name": "Bad Name!"})),
        400,
    );
    assert!(err["error"].is_string());
    http_json("GET", &format!("{b1}/v1/vms/nope"), None, 404);
    c.wait_vm(1, "h1", "running", DEADLINE, |v| v["state"] == "running");

    // Reads equal the CLI's --json documents.
    let a1 = c.addr(1);
    assert_eq!(
        http_json("GET", &format!("{b1}/v1/vms"), None, 200),
        json(&a1, &["vm", "list"])
    );
    assert_eq!(
        http_json("GET", &format!("{b1}/v1/vms/h1"), None, 200),
        json(&a1, &["vm", "status", "h1"])
    );
    // The heartbeat age and its observer are the leader's live observation (null until it has
    // heard a node): they may differ between two reads.
    let without_age = |mut v: serde_json::Value| {
        for n in v.as_array_mut().expect("a node list") {
            let n = n.as_object_mut().expect("a node");
            for live in ["last_heartbeat_ms_ago", "heartbeat_observer"] {
                assert!(n.remove(live).is_some(), "{live} missing");
            }
        }
        v
    };
    assert_eq!(
        without_age(http_json("GET", &format!("{b1}/v1/nodes"), None, 200)),
        without_age(json(&a1, &["node", "list"]))
    );
    let cl = http_json("GET", &format!("{b1}/v1/cluster"), None, 200);
    assert_eq!(cl["members"], json(&a1, &["cluster", "status"])["members"]);

    // Metrics parse and follow the VMs.
    let s = scrape(&b1);
    assert_eq!(
        sample(&s, "blixard_vms", Some(("state", "running"))),
        Some(1.0)
    );
    assert!(sample(&s, "blixard_raft_term", None).unwrap_or(0.0) >= 1.0);
    assert!(sample(&s, "blixard_raft_applied_index", None).unwrap_or(0.0) >= 1.0);
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric.starts_with("blixard_http_requests")),
        "HTTP requests are counted"
    );

    let stopped = http_json("POST", &format!("{b1}/v1/vms/h1/stop"), None, 200);
    assert_eq!(stopped["desired"], "stopped");
    c.wait_vm(1, "h1", "stopped", DEADLINE, |v| v["state"] == "stopped");
    wait_for("metrics to show the stopped VM", DEADLINE, || {
        (sample(&scrape(&b1), "blixard_vms", Some(("state", "stopped"))) == Some(1.0)).then_some(())
    });

    // Tasks.
    let t = http_json(
        "POST",
        &format!("{b1}/v1/tasks"),
        Some(serde_json::json!({"command": ["echo", "hello-http"]})),
        201,
    );
    let id = t["id"].as_str().unwrap().to_string();
    wait_for("the task to succeed", DEADLINE, || {
        (http_json("GET", &format!("{b1}/v1/tasks/{id}"), None, 200)["state"] == "succeeded")
            .then_some(())
    });
    assert_eq!(
        http_json("GET", &format!("{b1}/v1/tasks"), None, 200),
        json(&a1, &["task", "list"])
    );
    // `logs --json` prints one JSON document.
    let logs = json(&a1, &["task", "logs", &id]);
    assert_eq!(logs["id"], id.as_str());
    assert!(
        logs["output"].as_str().unwrap().contains("hello-http"),
        "{logs}"
    );
    assert!(json(&a1, &["vm", "logs", "h1"])["console"].is_string());

    let del = http_json("DELETE", &format!("{b1}/v1/vms/h1"), None, 200);
    assert_eq!(del["ok"], true);

    // The SSE stream carries the same events as the CLI, and resumes without gaps or repeats.
    let cli = wait_for("the deletion in the CLI's events", DEADLINE, || {
        let e = events(&a1, None);
        has(&e, "vm_deleted", |e| e["vm"] == "h1").then_some(e)
    });
    let last = cli.last().unwrap()["index"].as_u64().unwrap();
    let (code, body) = http("GET", &format!("{b3}/v1/events?follow=false"), None);
    assert_eq!(code, 200);
    let sse: Vec<Value> = sse_events(&body)
        .into_iter()
        .filter(|e| e["index"].as_u64() <= Some(last))
        .collect();
    assert_eq!(
        sse, cli,
        "SSE from node 3 equals the CLI's events from node 1"
    );
    assert!(has(&sse, "task_result", |e| e["task"] == id.as_str()
        && e["state"] == "succeeded"));
    let mid = cli[cli.len() / 2]["index"].as_u64().unwrap();
    let (_, body) = http(
        "GET",
        &format!("{b1}/v1/events?since={mid}&follow=false"),
        None,
    );
    let tail: Vec<Value> = sse_events(&body)
        .into_iter()
        .filter(|e| e["index"].as_u64() <= Some(last))
        .collect();
    let expect: Vec<Value> = cli
        .iter()
        .filter(|e| e["index"].as_u64() > Some(mid))
        .cloned()
        .collect();
    assert_eq!(tail, expect);

    // The dashboard is served from the binary.
    let (code, page) = http("GET", &format!("{b1}/ui/"), None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>blixard</title>") && page.contains("/ui/app.js"));
    let (code, js) = http("GET", &format!("{b1}/ui/app.js"), None);
    assert_eq!(code, 200);
    assert!(js.contains("EventSource"));
    assert_eq!(http("GET", &format!("{b1}/ui/nope.js"), None).0, 404);
    let url = json(&a1, &["dashboard"])["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with(&format!("{b1}/ui/#token=bxt_")), "{url}");
}

/// The DOM of `url` after headless Chromium ran its scripts for `ms` (Debian's `chromium`,
/// installed by scripts/setup.sh). `None` if Chromium did not finish in time.
fn chromium_dom(url: &str, ms: u64, ca_pem: &str) -> Option<String> {
    use std::process::{Command, Stdio};
    let profile = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--timeout={ms}"))
        // Trust the cluster CA (the server sends it in its chain), and nothing else: Chromium
        // pins it by its public key (honoured with --user-data-dir).
        .arg(format!(
            "--ignore-certificate-errors-spki-list={}",
            blixard_pki::https::spki_sha256_base64(ca_pem).expect("CA SPKI")
        ))
        .args(["--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium not found: install Debian's chromium (scripts/setup.sh does)");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match child.try_wait().expect("wait for chromium") {
            Some(_) => break,
            None if std::time::Instant::now() > end => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    Some(out)
}

#[test]
fn dashboard_renders_the_cluster_and_live_events_in_headless_chromium() {
    let c = Cluster::start(3, &["--http", "127.0.0.1:0"]);
    let a1 = c.addr(1);
    json(&a1, &["vm", "create", "ui1", "--memory", "64"]);
    c.wait_vm(1, "ui1", "running", DEADLINE, |v| v["state"] == "running");
    let url = json(&c.addr(2), &["dashboard"])["url"]
        .as_str()
        .expect("url")
        .to_string();
    assert!(url.starts_with("https://"), "{url}");
    let ca = https_client::ca_pem(&c.node(2).dir);
    // The page reads /v1/ and the node's kept events before it finishes loading, so the DOM
    // Chromium dumps holds the tables and the timeline (`li` per event). A loaded machine may
    // need another attempt.
    let mut attempt = 0u64;
    let dom = wait_for(
        "the dashboard to render in Chromium",
        std::time::Duration::from_secs(180),
        || {
            attempt += 1;
            let dom = chromium_dom(&url, 2500 + 500 * (attempt % 3), &ca)?;
            let ok = dom.contains(r#"data-vm="ui1""#)
                && dom.contains(r#"class="vm_created""#)
                && dom.contains("vm=ui1")
                && (1..=3).all(|id| dom.contains(&format!(r#"data-id="{id}""#)));
            ok.then_some(dom)
        },
    );
    assert!(
        dom.contains("3 nodes, 1 VMs (1 running)"),
        "the summary counts the cluster"
    );
}
