//! Applying [`AuthCommand`]s to [`AuthState`] (deterministic: time comes from the request),
//! and the checks a member runs when a certificate or bearer token is presented.

use super::records::{is_hex, make_room, validate_expiry};
use super::*;
use crate::command::{ApplyError, Reply};

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
