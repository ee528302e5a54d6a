//! `blixard auth ...`: client credentials (certificates) and bearer tokens (HTTP), with roles.

use std::path::PathBuf;

use anyhow::Context;
use blixard_api::{pb, AuthClient};
use clap::Subcommand;

use crate::client::{status_err, Client};
use crate::output::{self, table};

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Issue a credential file (client certificate) for WHO with a role: viewer reads;
    /// operator also manages VMs, tasks and networks; admin everything.
    Issue {
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        /// Where to write the credential file (mode 0600; refused if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime in seconds (default 365 days).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Create a bearer token for HTTP (`Authorization: Bearer TOKEN`, the dashboard's
    /// `#token=`). Printed once, on the last line of stdout.
    Token {
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        /// Lifetime in seconds (default 30 days).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// List credentials and bearer tokens (never their secrets).
    List,
    /// Revoke every credential and token of WHO (or the one with that serial or token id).
    Revoke { who: String },
}

/// A time in ms since the Unix epoch, as UTC `YYYY-MM-DD HH:MM`.
fn ms(v: Option<u64>) -> String {
    let Some(ms) = v else {
        return "never".into();
    };
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

pub async fn run(c: &Client, cmd: AuthCmd) -> anyhow::Result<()> {
    let mut a = AuthClient::new(c.channel().await?);
    match cmd {
        AuthCmd::Issue {
            name,
            role,
            out,
            ttl,
        } => {
            if out.exists() {
                anyhow::bail!(
                    "{} exists: choose another --out (a credential file is never overwritten)",
                    out.display()
                );
            }
            let r = a
                .issue_credential(pb::IssueCredentialRequest {
                    name,
                    role,
                    ttl_secs: ttl,
                })
                .await
                .map_err(|e| status_err(&c.addr, e))?
                .into_inner();
            let creds = blixard_pki::Credentials::new(
                &r.name,
                &r.role,
                &r.ca_cert,
                blixard_pki::CertKey {
                    cert_pem: r.cert,
                    key_pem: r.key,
                },
            );
            creds
                .store(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            if c.json {
                output::print_json(&serde_json::json!({
                    "name": r.name, "role": r.role, "serial": r.serial,
                    "expires_at_ms": r.expires_at_ms, "file": out.display().to_string(),
                }));
            } else {
                println!(
                    "credential for '{}' ({}) written to {} (serial {}, expires {})",
                    r.name,
                    r.role,
                    out.display(),
                    r.serial,
                    ms(r.expires_at_ms)
                );
            }
        }
        AuthCmd::Token { name, role, ttl } => {
            let t = a
                .create_bearer_token(pb::IssueCredentialRequest {
                    name,
                    role,
                    ttl_secs: ttl,
                })
                .await
                .map_err(|e| status_err(&c.addr, e))?
                .into_inner();
            if c.json {
                output::print_json(&serde_json::json!({
                    "token": t.token, "id": t.id, "name": t.name, "role": t.role,
                    "expires_at_ms": t.expires_at_ms,
                }));
            } else {
                println!("{}", t.token);
            }
        }
        AuthCmd::List => {
            let entries = a
                .list_auth(pb::Empty {})
                .await
                .map_err(|e| status_err(&c.addr, e))?
                .into_inner()
                .entries;
            if c.json {
                output::print_json(&serde_json::Value::Array(
                    entries
                        .iter()
                        .map(blixard_api::json::auth_entry_json)
                        .collect(),
                ));
            } else {
                let rows = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.role.clone(),
                            e.kind.clone(),
                            e.id.clone(),
                            e.status.clone(),
                            ms(e.expires_at_ms),
                            e.created_by.clone(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(
                        &[
                            "name",
                            "role",
                            "kind",
                            "serial/id",
                            "status",
                            "expires",
                            "created by"
                        ],
                        rows
                    )
                );
            }
        }
        AuthCmd::Revoke { who } => {
            a.revoke(pb::AuthRevokeRequest { who: who.clone() })
                .await
                .map_err(|e| status_err(&c.addr, e))?;
            if c.json {
                output::print_json(&serde_json::json!({"revoked": who}));
            } else {
                println!("credentials and tokens of '{who}' revoked");
            }
        }
    }
    Ok(())
}

/// A bearer token for the dashboard of the cluster at `c`, made with the caller's credential:
/// role operator (the page starts, stops and deletes VMs), 12 hours. `None` (with a note on
/// stderr) when the credential may not create tokens.
pub async fn dashboard_token(c: &Client) -> anyhow::Result<Option<String>> {
    let mut a = AuthClient::new(c.channel().await?);
    let req = pb::IssueCredentialRequest {
        name: "dashboard".into(),
        role: "operator".into(),
        ttl_secs: 12 * 3600,
    };
    match a.create_bearer_token(req).await {
        Ok(t) => Ok(Some(t.into_inner().token)),
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            eprintln!(
                "note: your credential may not create tokens ({}); ask an admin for one \
                 (`blixard auth token --name NAME --role viewer`) and add #token=TOKEN to the URL",
                s.message()
            );
            Ok(None)
        }
        Err(s) => Err(status_err(&c.addr, s)),
    }
}
