//! HTTPS for the tests, as a browser would do it: a client that trusts the cluster CA (a
//! member's `DATA_DIR/tls/ca.pem`) and nothing else, and checks the server's name.

// Shared by several test crates; each uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// The cluster CA certificate (PEM) of the node whose data directory is `dir`.
pub fn ca_pem(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("tls/ca.pem")).expect("the node's tls/ca.pem")
}

/// An HTTP agent trusting the cluster CA of the node whose data directory is `dir`.
pub fn agent(dir: &Path) -> ureq::Agent {
    let tls = blixard_pki::https_client_config(&ca_pem(dir)).expect("client TLS config");
    ureq::AgentBuilder::new()
        .tls_config(tls)
        .timeout(Duration::from_secs(30))
        .build()
}

/// `https://ADDR` of node `dir`'s HTTP server, from its `http.addr` file (once written).
pub fn base(dir: &Path) -> Option<String> {
    let addr = std::fs::read_to_string(dir.join("http.addr")).ok()?;
    Some(format!("https://{}", addr.trim()))
}

/// `(status, body)` of a request, with an optional bearer token.
pub fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let mut r = agent.request(method, url);
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => r.send_json(b),
        None => r.call(),
    };
    match res {
        Ok(resp) => (resp.status(), resp.into_string().expect("body")),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().expect("body")),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}
