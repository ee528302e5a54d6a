//! Serving the HTTP surface over HTTPS: the node issues itself a certificate of the cluster CA
//! for the names it is reached by ([`https_hosts`]; every member holds the CA key), accepts TLS
//! 1.3 connections with `blixard_pki::incoming` (handshakes concurrent, bounded in time) and
//! serves each with hyper's HTTP/1.1. Clients trust the cluster CA (`DATA_DIR/tls/ca.pem`, or
//! the `ca_pem` of a credential file). There is no cleartext listener: the cluster is always
//! secure, and bearer tokens must not cross the network in the clear.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use crate::node::Node;

/// How long requests in flight (an event stream, a slow read) may take to finish once the node
/// stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The names the HTTPS certificate is valid for, besides `node.blixard` and the node's URI:
/// the loopback names, the address HTTP is bound to (unless it is a wildcard), the host of the
/// node's advertised address and the machine's host name.
pub fn https_hosts(bound: SocketAddr, advertise: &str) -> Vec<String> {
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !bound.ip().is_unspecified() {
        hosts.push(bound.ip().to_string());
    }
    if let Ok(a) = advertise.parse::<SocketAddr>() {
        hosts.push(a.ip().to_string());
    } else if let Some((host, _)) = advertise.rsplit_once(':') {
        hosts.push(host.trim_matches(['[', ']']).to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            hosts.push(h.to_string());
        }
    }
    // Only names a certificate can carry (a host name with '_' would make issuing fail).
    hosts.retain(|h| {
        h.parse::<std::net::IpAddr>().is_ok()
            || rustls::pki_types::DnsName::try_from(h.as_str()).is_ok()
    });
    hosts.dedup();
    hosts
}

fn server_config(node: &Node, bound: SocketAddr) -> Result<Arc<rustls::ServerConfig>, String> {
    let hosts = https_hosts(bound, &node.addr);
    let cert = node
        .tls
        .ca
        .issue_https(node.id, &hosts)
        .map_err(|e| e.to_string())?;
    tracing::info!(?hosts, "HTTPS certificate issued by the cluster CA");
    blixard_pki::https_server_config(&cert, &node.tls.ca.0.cert_pem).map_err(|e| e.to_string())
}

/// Serves the HTTP surface over HTTPS on `listener` until the node stops.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let bound = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "HTTP listener has no address; not serving HTTP");
            return;
        }
    };
    let tls = match server_config(&node, bound) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the HTTPS certificate; not serving HTTP");
            return;
        }
    };
    let app = super::router(node.clone());
    let mut incoming = Box::pin(blixard_pki::incoming(listener, tls));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stopped = node.stopped();
    tokio::pin!(stopped);
    loop {
        let conn = tokio::select! {
            c = incoming.next() => match c {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTPS accept failed");
                    continue;
                }
                None => break,
            },
            _ = &mut stopped => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(conn), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTPS connection ended with an error");
            }
        });
    }
    drop(incoming);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTPS requests still in flight at shutdown were dropped");
    }
}
