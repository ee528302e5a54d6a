//! Client identities and roles: who may do what, and the replicated records that let any
//! member check (and any admin revoke) a credential or a bearer token.
//!
//! - Roles are ordered: `viewer` < `operator` < `admin`. [`grpc_access`] and [`http_access`]
//!   are the one table saying which role each RPC and each HTTP route needs; the node that
//!   receives a request checks it there (see `blixard-node`'s `authz`).
//! - A client certificate (`auth issue`) is recorded by its serial with its name, role, expiry
//!   and who issued it. A bearer token (`auth token`, for HTTP) is recorded by its id with the
//!   SHA-256 of its secret, like join tokens: the secret itself is never stored.
//! - `auth revoke WHO` revokes every credential and token of that name (or the one with that
//!   serial or token id). Records are never deleted while they could still be presented, so a
//!   revocation holds on every member, after restarts and snapshots.
//!
//! Pure and deterministic like the rest of this crate: time comes from the request.
//!
//! # Where things are
//!
//! - this file: the limits and [`Role`];
//! - `access`: the role table of every RPC and HTTP route ([`grpc_access`], [`http_access`]);
//! - `records`: the replicated rows ([`Credential`], [`BearerToken`], [`AuthState`]), the
//!   commands that change them ([`AuthCommand`]) and their validation;
//! - `apply`: applying those commands, and the checks a member runs on a presented
//!   certificate or bearer token;
//! - `tests`: the role table against the proto contract, record rules, property tests.

use serde::{Deserialize, Serialize};

mod access;
mod apply;
mod records;

pub use access::{grpc_access, http_access, Access};
pub use records::{status, validate_name, AuthCommand, AuthState, BearerToken, Credential};

/// Records kept at most, of each kind (expired and revoked ones are dropped first).
pub const MAX_RECORDS: usize = 1_000;
/// Longest lifetime of a credential or a bearer token (10 years).
pub const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Longest client name.
pub const MAX_NAME_LEN: usize = 64;
/// Length of a bearer token id (hex).
pub const BEARER_ID_LEN: usize = 16;
/// Prefix of a bearer token string: `bxt_<id>_<secret>`.
pub const BEARER_PREFIX: &str = "bxt_";

/// What a caller may do. Ordered: each role may do everything the ones below it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: status, lists, logs, events.
    #[default]
    Viewer,
    /// Also VMs, tasks and networks.
    Operator,
    /// Everything: membership, settings, join tokens, credentials.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests;
