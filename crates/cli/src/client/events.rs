//! The event stream and the dashboard address.

use anyhow::Context;
use blixard_api::pb;

use super::{status_err, Client};
use crate::output;

impl Client {
    /// Prints the dashboard URL of the node at `--addr` (`{"url": ...}` with `--json`).
    pub async fn dashboard(&self) -> anyhow::Result<()> {
        let s = self
            .connect()
            .await?
            .cluster_status(pb::ReadOptions { stale: true })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if s.http_addr.is_empty() {
            anyhow::bail!(
                "node {} at {} serves no HTTP: start it with --http HOST:PORT",
                s.node_id,
                self.addr
            );
        }
        let mut http: std::net::SocketAddr = s
            .http_addr
            .parse()
            .with_context(|| format!("node reported a bad HTTP address '{}'", s.http_addr))?;
        if http.ip().is_unspecified() {
            // Bound to every interface: reach it the way --addr reaches the node.
            if let Some(ip) = self
                .addr
                .rsplit_once(':')
                .and_then(|(h, _)| h.parse::<std::net::IpAddr>().ok())
            {
                http.set_ip(ip);
            }
        }
        let url = match crate::auth::dashboard_token(self).await? {
            Some(t) => format!("https://{http}/ui/#token={t}"),
            None => format!("https://{http}/ui/"),
        };
        if self.json {
            output::print_json(&serde_json::json!({"url": url}));
        } else {
            println!("{url}");
            eprintln!(
                "note: HTTPS with a certificate of the cluster CA: have your browser trust the CA \
                 (`ca_cert` in your credential file, or DATA_DIR/tls/ca.pem on a member)"
            );
        }
        Ok(())
    }

    /// Prints the cluster's events after `since`; with `follow`, keeps printing. `--json`:
    /// one JSON array (or, with `--follow`, one JSON document per line).
    pub async fn events(&self, since: Option<u64>, follow: bool) -> anyhow::Result<()> {
        use std::io::Write;
        let mut stream = self
            .connect()
            .await?
            .events(pb::EventsRequest { since, follow })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        let mut all = Vec::new();
        let mut out = std::io::stdout().lock();
        while let Some(m) = stream
            .message()
            .await
            .map_err(|e| status_err(&self.addr, e))?
        {
            let v: serde_json::Value = serde_json::from_str(&m.json)
                .with_context(|| format!("malformed event from {}", self.addr))?;
            if self.json && !follow {
                all.push(v);
                continue;
            }
            if self.json {
                writeln!(out, "{v}")?;
            } else {
                let line = match serde_json::from_value::<blixard_core::Event>(v) {
                    Ok(e) => e.summary(),
                    Err(_) => m.json.clone(),
                };
                writeln!(
                    out,
                    "{:>8}  {:<16} {}",
                    m.index,
                    m.r#type,
                    output::clean(&line)
                )?;
            }
            out.flush()?;
        }
        if self.json && !follow {
            output::print_json(&serde_json::Value::Array(all));
        }
        Ok(())
    }
}
