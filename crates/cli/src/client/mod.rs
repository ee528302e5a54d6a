//! Client commands: each builds one request, sends it to `--addr` and prints the answer.
//! Followers forward writes to the leader, so any member may be addressed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::anyhow;
use blixard_api::BlixardClient;
use tonic::transport::Channel;

use crate::output;

mod cluster;
mod events;
mod task;
mod vm;

pub use task::SubmitArgs;
pub use vm::CreateArgs;

fn parse_pairs(raw: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{what} '{l}' must be KEY=VALUE"))
        })
        .collect()
}

pub struct Client {
    pub(crate) addr: String,
    pub(crate) json: bool,
}

/// The credentials file (`--credentials` / `$BLIXARD_CREDENTIALS`), set once by `main`.
static CREDENTIALS: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();

pub fn set_credentials(path: Option<std::path::PathBuf>) {
    let _ = CREDENTIALS.set(path);
}

/// The TLS client configuration from the credentials file; one clear line when there is none.
pub fn tls() -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    let path = CREDENTIALS.get().cloned().flatten().ok_or_else(|| {
        anyhow!(
            "no credentials: pass --credentials FILE or set BLIXARD_CREDENTIALS (the admin credential is DATA_DIR/admin.credentials on the node started with --init)"
        )
    })?;
    let creds = blixard_pki::Credentials::load(&path)?;
    // Every member refuses an expired certificate during the handshake, which a client sees
    // only as a TLS failure: say it plainly first.
    if let Ok(until) = blixard_pki::not_after_secs(&creds.cert) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if until <= now {
            anyhow::bail!(
                "the credential in {} ('{}', {}) has expired: ask an admin for a new one (blixard auth issue)",
                path.display(),
                creds.name,
                creds.role
            );
        }
    }
    Ok(creds.client_config()?)
}

/// Connects to `addr` over mutual TLS with the credentials, within `--timeout`.
pub async fn channel(addr: &str, request_timeout: Option<Duration>) -> anyhow::Result<Channel> {
    let tls = tls()?;
    crate::transport::connect(addr, tls, crate::transport::timeout(), request_timeout).await
}

pub(crate) fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Turns a gRPC status into one clear line.
pub(crate) fn status_err(addr: &str, s: tonic::Status) -> anyhow::Error {
    crate::transport::status_error(addr, &s)
}

/// Prints a log stream (a VM's console, a task's output). Collected into one piece when
/// `whole` (JSON, `--tail`): `--json` prints `{key_name: key, text_name: text}` (invalid UTF-8
/// replaced), otherwise the (tailed) bytes. Else streamed as it comes, flushed per chunk.
pub(crate) async fn print_log_stream(
    addr: &str,
    mut stream: tonic::Streaming<blixard_api::pb::LogChunk>,
    whole: bool,
    json: Option<(&str, &str, &str)>,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    use std::io::Write;
    if whole {
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| status_err(addr, e))? {
            data.extend_from_slice(&chunk.data);
        }
        let data = match tail {
            Some(n) => crate::extras::tail_lines(&data, n),
            None => &data[..],
        };
        match json {
            Some((key_name, key, text_name)) => output::print_json(&serde_json::json!({
                key_name: key,
                text_name: String::from_utf8_lossy(data),
            })),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(data)?;
                out.flush()?;
            }
        }
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.message().await.map_err(|e| status_err(addr, e))? {
        out.write_all(&chunk.data)?;
        out.flush()?;
    }
    Ok(())
}

impl Client {
    pub fn new(addr: String, json: bool) -> Self {
        Self { addr, json }
    }

    async fn connect(&self) -> anyhow::Result<BlixardClient<Channel>> {
        Ok(BlixardClient::new(self.channel().await?))
    }

    /// A connection to `--addr` over mutual TLS (shared by the services' clients).
    pub(crate) async fn channel(&self) -> anyhow::Result<Channel> {
        channel(&self.addr, Some(crate::transport::timeout())).await
    }

    pub(crate) fn done(&self, msg: &str) {
        if self.json {
            output::print_json(&serde_json::json!({"ok": true, "message": msg}));
        } else {
            println!("{msg}");
        }
    }
}
