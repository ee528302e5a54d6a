//! How the CLI reaches a node: connect and request timeouts (`--timeout`), and one clear line
//! for each way that fails (refused, timed out, TLS or certificate problem), with the address.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::anyhow;
use tonic::transport::Channel;

/// `--timeout` when not given: above the node's own wait for a leader (10 s), so a request made
/// during an election gets the node's answer rather than a timeout.
pub const DEFAULT_TIMEOUT: &str = "15s";

static TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Sets the timeout (`--timeout`), once, from `main`.
pub fn set_timeout(t: Duration) {
    let _ = TIMEOUT.set(t);
}

/// The connect and request timeout.
pub fn timeout() -> Duration {
    TIMEOUT
        .get()
        .copied()
        .unwrap_or_else(|| parse_duration(DEFAULT_TIMEOUT).unwrap_or(Duration::from_secs(15)))
}

/// `500ms`, `10s`, `2m`, or a bare number of seconds; more than zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}': use e.g. 500ms, 10s or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration '{s}': use e.g. 500ms, 10s or 2m")),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "invalid duration '{s}': must be more than 0 and at most 24h"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Connects to `addr` over mutual TLS; the TCP connect, the TLS handshake and the HTTP/2
/// setup all within `connect_timeout`; each request then within `request_timeout`.
pub async fn connect(
    addr: &str,
    tls: std::sync::Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
) -> anyhow::Result<Channel> {
    let mut ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| anyhow!("invalid address '{addr}': expected HOST:PORT"))?
        .connect_timeout(connect_timeout);
    if let Some(t) = request_timeout {
        ep = ep.timeout(t);
    }
    let connecting = ep.connect_with_connector(blixard_pki::Connector::new(tls));
    match tokio::time::timeout(connect_timeout, connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(connect_error(
            addr,
            &blixard_pki::error_chain(&e),
            connect_timeout,
        )),
        Err(_) => Err(connect_error(addr, "deadline has elapsed", connect_timeout)),
    }
}

/// One line saying why connecting to `addr` failed, from the error's chain.
pub fn connect_error(addr: &str, chain: &str, t: Duration) -> anyhow::Error {
    let lower = chain.to_ascii_lowercase();
    if lower.contains("deadline has elapsed") || lower.contains("timed out") {
        anyhow!(
            "timed out after {} connecting to blixard at {addr}: nothing answered (is it the right address? a firewall? raise --timeout on a slow network)",
            show(t)
        )
    } else if lower.contains("connection refused") {
        anyhow!("connection refused by {addr}: is the blixard node running and listening there?")
    } else if lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("alert")
    {
        anyhow!(
            "TLS with {addr} failed: {chain} (are --credentials for this cluster, unexpired and not revoked?)"
        )
    } else {
        anyhow!("cannot reach blixard at {addr}: {chain}")
    }
}

/// One clear line for a failed request to `addr`.
pub fn status_error(addr: &str, s: &tonic::Status) -> anyhow::Error {
    let msg = s.message();
    let lower = msg.to_ascii_lowercase();
    match s.code() {
        tonic::Code::Cancelled if lower.contains("timeout expired") => anyhow!(
            "timed out after {} waiting for blixard at {addr} to answer (raise --timeout, or check the node)",
            show(timeout())
        ),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            if lower.contains("transport error")
                || lower.contains("connect")
                || lower.contains("broken pipe")
                || lower.contains("connection reset") =>
        {
            let chain = match std::error::Error::source(s) {
                Some(src) => format!("{msg}: {}", blixard_pki::error_chain(src)),
                None => msg.to_string(),
            };
            match connect_error(addr, &chain, timeout()) {
                e if e.to_string().starts_with("cannot reach") => anyhow!(
                    "cannot reach blixard at {addr}: is the node running? ({chain})"
                ),
                e => e,
            }
        }
        _ => anyhow!("{msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["", "0", "0s", "-1s", "10h", "s", "1.2.3s", "99999999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn connect_errors_say_what_failed_with_the_address() {
        let t = Duration::from_secs(2);
        let a = "10.0.0.1:7001";
        let e = connect_error(a, "transport error: deadline has elapsed", t).to_string();
        assert!(e.contains("timed out after 2s") && e.contains(a), "{e}");
        let e =
            connect_error(a, "tcp connect error: Connection refused (os error 111)", t).to_string();
        assert!(e.contains("connection refused") && e.contains(a), "{e}");
        let e = connect_error(a, "invalid peer certificate: UnknownIssuer", t).to_string();
        assert!(e.starts_with("TLS with") && e.contains(a), "{e}");
    }
}
