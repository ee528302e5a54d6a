//! The replicated auth rows and the commands that change them, with the validation every
//! command passes before it changes anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Role, MAX_NAME_LEN, MAX_RECORDS, MAX_TTL_MS};
use crate::command::ApplyError;

/// A recorded client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The certificate's serial number, lower-case hex.
    pub serial: String,
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
    /// The certificate's end of validity (`None`: the CA's default, effectively never).
    pub expires_ms: Option<u64>,
    /// Who issued it (a client name, or `bootstrap` for the `--init` admin).
    pub created_by: String,
    pub revoked: bool,
}

/// A recorded bearer token (HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BearerToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 (hex) of the secret.
    pub secret_sha256: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub created_by: String,
    pub revoked: bool,
}

/// "active", "revoked" or "expired" at `now`.
pub fn status(revoked: bool, expires_ms: Option<u64>, now: u64) -> &'static str {
    if revoked {
        "revoked"
    } else if expires_ms.is_some_and(|e| now >= e) {
        "expired"
    } else {
        "active"
    }
}

impl Credential {
    pub fn status(&self, now: u64) -> &'static str {
        status(self.revoked, self.expires_ms, now)
    }
}

impl BearerToken {
    pub fn status(&self, now: u64) -> &'static str {
        status(self.revoked, self.expires_ms, now)
    }
}

/// Changes to the records (inside [`crate::tokens::SecurityCommand::Auth`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Record a client certificate the proposer issued.
    RecordCredential {
        serial: String,
        name: String,
        role: Role,
        expires_ms: Option<u64>,
        created_by: String,
    },
    /// Record a bearer token: its id and the SHA-256 of its secret.
    CreateBearerToken {
        id: String,
        name: String,
        role: Role,
        secret_sha256: String,
        expires_ms: Option<u64>,
        created_by: String,
    },
    /// Revoke every credential and token named `who`, or the one whose serial or id is `who`.
    Revoke { who: String },
}

impl AuthCommand {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthCommand::RecordCredential { .. } => "record_credential",
            AuthCommand::CreateBearerToken { .. } => "create_bearer_token",
            AuthCommand::Revoke { .. } => "revoke_auth",
        }
    }
}

/// The records (inside [`crate::tokens::SecurityState`], one row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// By serial.
    #[serde(default)]
    pub credentials: BTreeMap<String, Credential>,
    /// By id.
    #[serde(default)]
    pub bearer: BTreeMap<String, BearerToken>,
}

pub(super) fn is_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a client name: 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn validate_name(name: &str) -> Result<(), ApplyError> {
    if !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(())
    } else {
        Err(ApplyError::invalid(format!(
            "a client name must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// An expiry at most 10 years ahead. One already past is recorded as it is (expired): a short
/// credential may reach `apply` after its end when the proposal took long, and it must still
/// be listed and refused rather than lost.
pub(super) fn validate_expiry(expires_ms: Option<u64>, now: u64) -> Result<(), ApplyError> {
    match expires_ms {
        Some(e) if e > now.saturating_add(MAX_TTL_MS) => Err(ApplyError::invalid(
            "a credential must expire within 10 years",
        )),
        _ => Ok(()),
    }
}

/// Makes room for one more record in `map` (dropping expired and revoked ones, oldest first);
/// refuses when every record is active.
pub(super) fn make_room<T>(
    map: &mut BTreeMap<String, T>,
    now: u64,
    live: impl Fn(&T, u64) -> bool,
    created: impl Fn(&T) -> u64,
    what: &str,
) -> Result<(), ApplyError> {
    if map.len() < MAX_RECORDS {
        return Ok(());
    }
    let mut done: Vec<(u64, String)> = map
        .iter()
        .filter(|(_, t)| !live(t, now))
        .map(|(k, t)| (created(t), k.clone()))
        .collect();
    done.sort();
    for (_, k) in done.into_iter().take(map.len() + 1 - MAX_RECORDS) {
        map.remove(&k);
    }
    if map.len() >= MAX_RECORDS {
        return Err(ApplyError::LimitReached(format!(
            "{MAX_RECORDS} {what} are active: revoke some first"
        )));
    }
    Ok(())
}
