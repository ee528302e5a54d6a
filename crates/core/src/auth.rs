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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{ApplyError, Reply};

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

/// Who may call an RPC or a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone reaching the port (join enrollment: the token is the credential; health).
    Public,
    /// Cluster members only (node certificates): Raft and node-to-node traffic.
    Peer,
    /// A client with at least this role (or a member forwarding for one).
    Role(Role),
}

/// The role table for gRPC: what each method (`/package.Service/Method`) needs. Methods not
/// listed are refused to every client (fail closed).
pub fn grpc_access(path: &str) -> Option<Access> {
    use Access::{Peer, Public, Role as R};
    use Role::{Admin, Operator, Viewer};
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("blixard.v1.Enroll", "Enroll") => Public,
        ("blixard.v1.RaftPeer", _) => Peer,
        (
            "blixard.v1.Blixard",
            "ClusterStatus" | "ListNodes" | "GetVm" | "ListVms" | "ListVmsPage"
            | "ExplainPlacement" | "VmLogs" | "GetTask" | "ListTasks" | "TaskLogs" | "Events",
        ) => R(Viewer),
        ("blixard.v1.Networks", "ListNetworks") => R(Viewer),
        (
            "blixard.v1.Blixard",
            // The console is a root shell in the guest: an operator's.
            "CreateVm" | "DeleteVm" | "SetVmDesired" | "SubmitTask" | "CancelTask" | "Console",
        ) => R(Operator),
        ("blixard.v1.Networks", "CreateNetwork" | "DeleteNetwork") => R(Operator),
        (
            "blixard.v1.Blixard",
            // Membership and node states (drain), settings, join tokens, credentials.
            "Join"
            | "RemoveMember"
            | "Leave"
            | "SetNodeState"
            | "SetSchedulerSettings"
            | "CreateJoinToken"
            | "ListJoinTokens"
            | "RevokeJoinToken",
        ) => R(Admin),
        ("blixard.v1.Auth", "IssueCredential" | "CreateBearerToken" | "ListAuth" | "Revoke") => {
            R(Admin)
        }
        // Who am I: any authenticated client.
        ("blixard.v1.Auth", "WhoAmI") => R(Viewer),
        _ => return None,
    })
}

/// The role table for HTTP: what each route (axum's matched path) needs for `method`.
/// Routes not listed need `admin` (fail closed).
pub fn http_access(method: &str, route: &str) -> Access {
    use Access::{Public, Role as R};
    use Role::{Admin, Operator, Viewer};
    let read = matches!(method, "GET" | "HEAD");
    match route {
        // Liveness probes, and the dashboard's static files (the page itself holds no data; its
        // API calls carry the token).
        "/healthz" | "/readyz" | "/" | "/ui" | "/ui/" | "/ui/:file" if read => Public,
        "/metrics" if read => R(Viewer),
        "/v1/cluster" | "/v1/nodes" | "/v1/vms" | "/v1/vms/:name" | "/v1/tasks"
        | "/v1/tasks/:id" | "/v1/events" | "/v1/networks" | "/v1/openapi.json"
            if read =>
        {
            R(Viewer)
        }
        "/v1/vms"
        | "/v1/vms/:name"
        | "/v1/vms/:name/start"
        | "/v1/vms/:name/stop"
        | "/v1/tasks"
        | "/v1/tasks/:id/cancel"
        | "/v1/networks"
        | "/v1/networks/:name"
            if matches!(method, "POST" | "DELETE") =>
        {
            R(Operator)
        }
        _ => R(Admin),
    }
}

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

fn is_hex(s: &str, min: usize, max: usize) -> bool {
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
fn validate_expiry(expires_ms: Option<u64>, now: u64) -> Result<(), ApplyError> {
    match expires_ms {
        Some(e) if e > now.saturating_add(MAX_TTL_MS) => Err(ApplyError::invalid(
            "a credential must expire within 10 years",
        )),
        _ => Ok(()),
    }
}

/// Makes room for one more record in `map` (dropping expired and revoked ones, oldest first);
/// refuses when every record is active.
fn make_room<T>(
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

impl AuthState {
    /// Applies `cmd` at time `now`.
    pub fn apply(&mut self, cmd: &AuthCommand, now: u64) -> Result<Reply, ApplyError> {
        match cmd {
            AuthCommand::RecordCredential {
                serial,
                name,
                role,
                expires_ms,
                created_by,
            } => {
                if !is_hex(serial, 2, 40) {
                    return Err(ApplyError::invalid(
                        "a certificate serial must be 2 to 40 lower-case hex digits",
                    ));
                }
                validate_name(name)?;
                validate_expiry(*expires_ms, now)?;
                if let Some(old) = self.credentials.get(serial) {
                    // The same record proposed again (a retried bootstrap): nothing to do.
                    if old.name == *name && old.role == *role && old.expires_ms == *expires_ms {
                        return Ok(Reply::Done);
                    }
                    return Err(ApplyError::AlreadyExists {
                        what: "credential serial".into(),
                        name: serial.clone(),
                    });
                }
                make_room(
                    &mut self.credentials,
                    now,
                    |c, now| c.status(now) == "active",
                    |c| c.created_ms,
                    "credentials",
                )?;
                self.credentials.insert(
                    serial.clone(),
                    Credential {
                        serial: serial.clone(),
                        name: name.clone(),
                        role: *role,
                        created_ms: now,
                        expires_ms: *expires_ms,
                        created_by: created_by.chars().take(MAX_NAME_LEN + 8).collect(),
                        revoked: false,
                    },
                );
                Ok(Reply::Done)
            }
            AuthCommand::CreateBearerToken {
                id,
                name,
                role,
                secret_sha256,
                expires_ms,
                created_by,
            } => {
                if !is_hex(id, BEARER_ID_LEN, BEARER_ID_LEN) {
                    return Err(ApplyError::invalid(format!(
                        "a bearer token id must be {BEARER_ID_LEN} lower-case hex digits"
                    )));
                }
                if !is_hex(secret_sha256, 64, 64) {
                    return Err(ApplyError::invalid(
                        "a bearer token hash must be 64 hex digits",
                    ));
                }
                validate_name(name)?;
                validate_expiry(*expires_ms, now)?;
                if self.bearer.contains_key(id) {
                    return Err(ApplyError::AlreadyExists {
                        what: "bearer token".into(),
                        name: id.clone(),
                    });
                }
                make_room(
                    &mut self.bearer,
                    now,
                    |t, now| t.status(now) == "active",
                    |t| t.created_ms,
                    "bearer tokens",
                )?;
                self.bearer.insert(
                    id.clone(),
                    BearerToken {
                        id: id.clone(),
                        name: name.clone(),
                        role: *role,
                        secret_sha256: secret_sha256.clone(),
                        created_ms: now,
                        expires_ms: *expires_ms,
                        created_by: created_by.chars().take(MAX_NAME_LEN + 8).collect(),
                        revoked: false,
                    },
                );
                Ok(Reply::Done)
            }
            AuthCommand::Revoke { who } => {
                for c in self.credentials.values_mut() {
                    if (c.name == *who || c.serial == *who) && !c.revoked {
                        c.revoked = true;
                    }
                }
                for t in self.bearer.values_mut() {
                    if (t.name == *who || t.id == *who) && !t.revoked {
                        t.revoked = true;
                    }
                }
                let known = self
                    .credentials
                    .values()
                    .any(|c| c.name == *who || c.serial == *who)
                    || self.bearer.values().any(|t| t.name == *who || t.id == *who);
                if !known {
                    return Err(ApplyError::not_found("credential or token", who));
                }
                Ok(Reply::Done)
            }
        }
    }

    /// Why a client certificate with `serial` must be refused at `now`, if it must.
    /// A serial with no record is accepted (the CA signed it; members hold the CA key); every
    /// credential `auth issue` hands out is recorded before it is returned.
    pub fn credential_refusal(&self, serial: &str, now: u64) -> Option<String> {
        let c = self.credentials.get(serial)?;
        match c.status(now) {
            "revoked" => Some(format!(
                "the credential of '{}' (serial {serial}) was revoked: ask an admin for a new one",
                c.name
            )),
            "expired" => Some(format!(
                "the credential of '{}' (serial {serial}) has expired: ask an admin for a new one",
                c.name
            )),
            _ => None,
        }
    }

    /// The name and role a bearer token string (`bxt_<id>_<secret>`) stands for at `now`,
    /// given a function hashing its secret; an error saying why it is refused otherwise.
    pub fn check_bearer(
        &self,
        token: &str,
        now: u64,
        hash: impl Fn(&str) -> String,
    ) -> Result<(String, Role), String> {
        let unknown = || "the bearer token is not a token of this cluster".to_string();
        let rest = token.strip_prefix(BEARER_PREFIX).ok_or_else(unknown)?;
        let (id, secret) = rest.split_once('_').ok_or_else(unknown)?;
        if !is_hex(id, BEARER_ID_LEN, BEARER_ID_LEN) || !is_hex(secret, 64, 64) {
            return Err(unknown());
        }
        let t = self.bearer.get(id).ok_or_else(unknown)?;
        if t.secret_sha256 != hash(secret) {
            return Err(unknown());
        }
        match t.status(now) {
            "active" => Ok((t.name.clone(), t.role)),
            "revoked" => Err(format!(
                "the bearer token of '{}' was revoked: create a new one with `blixard auth token`",
                t.name
            )),
            _ => Err(format!(
                "the bearer token of '{}' has expired: create a new one with `blixard auth token`",
                t.name
            )),
        }
    }
}

impl crate::state::ClusterState {
    /// Records who created a VM or submitted a task (the request's caller) on the new record
    /// and in the reply. Called by `apply` after the command succeeded; deterministic.
    pub(crate) fn stamp_creator(&mut self, req: &crate::Request, reply: &mut Reply) {
        let Some(caller) = &req.caller else {
            return;
        };
        let caller: String = caller.chars().take(MAX_NAME_LEN + 8).collect();
        match (&req.command, reply) {
            (crate::Command::CreateVm { spec }, Reply::Vm(r)) => {
                if let Some(vm) = self.vms.get_mut(&spec.name) {
                    vm.created_by = Some(caller.clone());
                    r.created_by = Some(caller);
                    self.touched.insert(crate::RowKey::Vm(spec.name.clone()));
                }
            }
            (crate::Command::SubmitTask { id, .. }, Reply::Task(r)) => {
                if let Some(t) = self.tasks.get_mut(id) {
                    t.created_by = Some(caller.clone());
                    r.created_by = Some(caller);
                    self.touched.insert(crate::RowKey::Task(id.clone()));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn rpcs_in_proto() -> Vec<String> {
        let proto = include_str!("../../api/proto/blixard.proto");
        let mut service = String::new();
        let mut out = Vec::new();
        for line in proto.lines() {
            let l = line.trim();
            if let Some(s) = l.strip_prefix("service ") {
                service = s.trim_end_matches('{').trim().to_string();
            } else if let Some(r) = l.strip_prefix("rpc ") {
                let m = r.split('(').next().unwrap_or("").trim();
                out.push(format!("/blixard.v1.{service}/{m}"));
            }
        }
        out
    }

    #[test]
    fn every_rpc_of_the_contract_is_in_the_role_table() {
        let rpcs = rpcs_in_proto();
        assert!(rpcs.len() > 30, "parsed {rpcs:?}");
        for r in rpcs {
            assert!(
                grpc_access(&r).is_some(),
                "{r} has no entry in the role table"
            );
        }
        assert_eq!(grpc_access("/blixard.v1.Blixard/Nope"), None);
        assert_eq!(grpc_access("garbage"), None);
    }

    #[test]
    fn the_role_table_follows_the_contract() {
        let g = |m: &str| grpc_access(&format!("/blixard.v1.Blixard/{m}")).unwrap();
        for read in [
            "ClusterStatus",
            "ListNodes",
            "GetVm",
            "ListVms",
            "Events",
            "TaskLogs",
        ] {
            assert_eq!(g(read), Access::Role(Role::Viewer), "{read}");
        }
        for op in [
            "CreateVm",
            "DeleteVm",
            "SetVmDesired",
            "SubmitTask",
            "CancelTask",
        ] {
            assert_eq!(g(op), Access::Role(Role::Operator), "{op}");
        }
        for admin in [
            "Join",
            "RemoveMember",
            "Leave",
            "SetNodeState",
            "SetSchedulerSettings",
            "CreateJoinToken",
            "RevokeJoinToken",
        ] {
            assert_eq!(g(admin), Access::Role(Role::Admin), "{admin}");
        }
        assert_eq!(
            grpc_access("/blixard.v1.Networks/CreateNetwork"),
            Some(Access::Role(Role::Operator))
        );
        assert_eq!(
            grpc_access("/blixard.v1.Auth/IssueCredential"),
            Some(Access::Role(Role::Admin))
        );
        assert_eq!(
            grpc_access("/blixard.v1.RaftPeer/Propose"),
            Some(Access::Peer)
        );
        assert_eq!(http_access("GET", "/v1/vms"), Access::Role(Role::Viewer));
        assert_eq!(http_access("POST", "/v1/vms"), Access::Role(Role::Operator));
        assert_eq!(
            http_access("DELETE", "/v1/vms/:name"),
            Access::Role(Role::Operator)
        );
        assert_eq!(http_access("GET", "/healthz"), Access::Public);
        assert_eq!(http_access("POST", "/healthz"), Access::Role(Role::Admin));
        assert_eq!(http_access("GET", "/v1/unknown"), Access::Role(Role::Admin));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator) && Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator) && !Role::Operator.allows(Role::Admin));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    fn record(serial: &str, name: &str, expires: Option<u64>) -> AuthCommand {
        AuthCommand::RecordCredential {
            serial: serial.into(),
            name: name.into(),
            role: Role::Operator,
            expires_ms: expires,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn revoked_and_expired_credentials_are_refused() {
        let mut s = AuthState::default();
        s.apply(&record("0a", "ci", Some(5000)), 1000).unwrap();
        s.apply(&record("0b", "ci", None), 1000).unwrap();
        s.apply(&record("0c", "ops", None), 1000).unwrap();
        assert_eq!(s.credential_refusal("0a", 2000), None);
        assert!(s
            .credential_refusal("0a", 5000)
            .unwrap()
            .contains("expired"));
        // Unknown serials are the CA's business.
        assert_eq!(s.credential_refusal("ff", 2000), None);
        s.apply(&AuthCommand::Revoke { who: "ci".into() }, 3000)
            .unwrap();
        assert!(s
            .credential_refusal("0b", 3000)
            .unwrap()
            .contains("revoked"));
        assert_eq!(s.credential_refusal("0c", 3000), None);
        // By serial, too; and an unknown name is an error that changes nothing.
        s.apply(&AuthCommand::Revoke { who: "0c".into() }, 3000)
            .unwrap();
        assert!(s.credential_refusal("0c", 3000).is_some());
        let before = s.clone();
        assert!(s
            .apply(
                &AuthCommand::Revoke {
                    who: "nobody".into()
                },
                3000
            )
            .is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn bad_records_are_refused_and_change_nothing() {
        let mut s = AuthState::default();
        for bad in [
            record("XYZ", "ci", None),
            record("0a", "bad name", None),
            record("0a", "ci", Some(1000 + MAX_TTL_MS + 1)),
        ] {
            assert!(s.apply(&bad, 1000).is_err(), "{bad:?}");
        }
        assert_eq!(s, AuthState::default());
        // Already past its end when applied: recorded, and refused.
        s.apply(&record("0e", "late", Some(500)), 1000).unwrap();
        assert!(s
            .credential_refusal("0e", 1000)
            .unwrap()
            .contains("expired"));
        s.apply(&record("0a", "ci", None), 1000).unwrap();
        // A retried identical record is fine; another one under the same serial is not.
        s.apply(&record("0a", "ci", None), 2000).unwrap();
        assert!(s.apply(&record("0a", "other", None), 2000).is_err());
    }

    fn bearer(id: &str, expires: Option<u64>) -> AuthCommand {
        AuthCommand::CreateBearerToken {
            id: id.into(),
            name: "dash".into(),
            role: Role::Viewer,
            secret_sha256: H.into(),
            expires_ms: expires,
            created_by: "admin".into(),
        }
    }

    #[test]
    fn bearer_tokens_are_checked_by_their_secret_hash() {
        let mut s = AuthState::default();
        let id = "0123456789abcdef";
        s.apply(&bearer(id, Some(10_000)), 1000).unwrap();
        let secret = "b".repeat(64);
        let tok = format!("{BEARER_PREFIX}{id}_{secret}");
        let hash = |x: &str| {
            if x == secret {
                H.to_string()
            } else {
                "0".repeat(64)
            }
        };
        assert_eq!(
            s.check_bearer(&tok, 2000, hash),
            Ok(("dash".into(), Role::Viewer))
        );
        assert!(s
            .check_bearer(&tok, 10_000, hash)
            .unwrap_err()
            .contains("expired"));
        let wrong = format!("{BEARER_PREFIX}{id}_{}", "c".repeat(64));
        assert!(s.check_bearer(&wrong, 2000, hash).is_err());
        assert!(s.check_bearer("", 2000, hash).is_err());
        s.apply(&AuthCommand::Revoke { who: "dash".into() }, 3000)
            .unwrap();
        assert!(s
            .check_bearer(&tok, 3000, hash)
            .unwrap_err()
            .contains("revoked"));
    }

    #[test]
    fn records_are_bounded() {
        let mut s = AuthState::default();
        for i in 0..MAX_RECORDS {
            s.apply(&record(&format!("{i:04x}"), "n", Some(2000)), 1000)
                .unwrap();
        }
        // All active: refused.
        assert!(matches!(
            s.apply(&record("ffff", "n", None), 1500),
            Err(ApplyError::LimitReached(_))
        ));
        // Once they expired, the oldest make room.
        s.apply(&record("ffff", "n", None), 3000).unwrap();
        assert_eq!(s.credentials.len(), MAX_RECORDS);
    }

    #[test]
    fn writes_record_who_asked_in_the_record_the_reply_and_the_events() {
        use crate::{Command, EventSource, Request, VmSpec};
        let mut st = crate::ClusterState::default();
        let base = st.clone();
        st.take_touched();
        let r = Request::new(
            Command::CreateVm {
                spec: VmSpec::new("web"),
            },
            1000,
        )
        .by(Some("alice".into()));
        let Ok(Reply::Vm(reply)) = st.apply(1, &r) else {
            panic!("create refused");
        };
        assert_eq!(reply.created_by.as_deref(), Some("alice"));
        assert_eq!(st.vms["web"].created_by.as_deref(), Some("alice"));
        let mut src = EventSource::new(&base, 0);
        let touched = st.take_touched();
        src.observe_by(1, 1000, r.caller.as_deref(), &st, &touched);
        let (events, _) = src.since(0, 100);
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| e.caller.as_deref() == Some("alice")));
        // The cluster's own proposals name nobody.
        let anon = Request::new(
            Command::CreateVm {
                spec: VmSpec::new("db"),
            },
            1000,
        );
        st.apply(2, &anon).unwrap();
        assert_eq!(st.vms["db"].created_by, None);
        // The log is bincode: a request (with or without a caller) must round-trip.
        for r in [&r, &anon] {
            let b = bincode_like_roundtrip(r);
            assert_eq!(&b, r);
        }
    }

    /// A non-self-describing round trip (what the Raft log's bincode does): every field is
    /// written, in order, and read back positionally.
    fn bincode_like_roundtrip(r: &crate::Request) -> crate::Request {
        // serde_json's array form of a struct is positional: no field may be skipped.
        let v = serde_json::to_value(r).unwrap();
        let obj = v.as_object().unwrap();
        assert!(obj.contains_key("caller"), "caller must always be written");
        serde_json::from_value(v).unwrap()
    }

    fn cmd() -> impl Strategy<Value = AuthCommand> {
        let serial = prop_oneof![
            Just("0a".to_string()),
            Just("0b".to_string()),
            "[0-9a-fA-Z]{0,4}"
        ];
        let name = prop_oneof![Just("ci".to_string()), Just("ops".to_string()), ".{0,3}"];
        let role = prop_oneof![Just(Role::Viewer), Just(Role::Operator), Just(Role::Admin)];
        let exp = proptest::option::of(0u64..20_000);
        prop_oneof![
            (serial.clone(), name.clone(), role.clone(), exp.clone()).prop_map(
                |(serial, name, role, expires_ms)| AuthCommand::RecordCredential {
                    serial,
                    name,
                    role,
                    expires_ms,
                    created_by: "p".into()
                }
            ),
            (name.clone(), role, exp).prop_map(|(name, role, expires_ms)| {
                AuthCommand::CreateBearerToken {
                    id: "0123456789abcdef".into(),
                    name,
                    role,
                    secret_sha256: H.into(),
                    expires_ms,
                    created_by: "p".into(),
                }
            }),
            prop_oneof![serial, name].prop_map(|who| AuthCommand::Revoke { who }),
        ]
    }

    proptest! {
        /// Whatever the commands: a refused one changes nothing, and a revoked credential or
        /// token never becomes usable again.
        #[test]
        fn refusals_change_nothing_and_revocation_is_final(
            cmds in proptest::collection::vec((cmd(), 0u64..20_000), 0..40)
        ) {
            let mut s = AuthState::default();
            let mut revoked = std::collections::BTreeSet::new();
            for (c, now) in cmds {
                let before = s.clone();
                if s.apply(&c, now).is_err() {
                    prop_assert_eq!(&s, &before);
                }
                for c in s.credentials.values() {
                    if c.revoked { revoked.insert(format!("c{}", c.serial)); }
                    let key = format!("c{}", c.serial);
                    prop_assert!(!revoked.contains(&key) || c.revoked);
                    prop_assert!(validate_name(&c.name).is_ok());
                }
                for t in s.bearer.values() {
                    if t.revoked { revoked.insert(format!("t{}", t.id)); }
                    let key = format!("t{}", t.id);
                    prop_assert!(!revoked.contains(&key) || t.revoked);
                }
            }
        }
    }
}
