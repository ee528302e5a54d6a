//! The replicated security records: join tokens and revoked node identities.
//!
//! - A join token is created by an admin (`cluster token create`). The state keeps only the
//!   SHA-256 of its secret, its expiry and what became of it; the secret itself travels only in
//!   the token string. Joining consumes the token through Raft, so a token admits exactly one
//!   node, whichever member the joiner reached; expired, used, revoked and unknown tokens are
//!   refused.
//! - A node removed from the cluster has its id revoked: no member accepts a peer message or a
//!   request from that node's certificate again (node ids are never reused, so revoking the id
//!   revokes every certificate ever issued for it). The record lives in the log, so it holds
//!   after every member restarts.
//!
//! Like everything in this crate: pure and deterministic; time comes from the request.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{ApplyError, Reply};
use crate::spec::NodeId;

/// Token records kept at most (finished ones are dropped first to make room).
pub const MAX_TOKENS: usize = 1_000;
/// Longest time a join token may live.
pub const MAX_TOKEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Length of a token id (hex).
pub const TOKEN_ID_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityCommand {
    /// Record a join token: its id, the SHA-256 (hex) of its secret, when it expires.
    CreateJoinToken {
        id: String,
        secret_sha256: String,
        expires_ms: u64,
    },
    /// Make a token unusable.
    RevokeJoinToken { id: String },
    /// A joiner presented token `id` with this secret: admit node `node_id` once.
    ConsumeJoinToken {
        id: String,
        secret_sha256: String,
        node_id: NodeId,
    },
    /// Node `id` was removed: its certificates are no longer accepted.
    RevokeNode { id: NodeId },
    /// Client credentials and bearer tokens (`crate::auth`).
    Auth(crate::auth::AuthCommand),
}

impl SecurityCommand {
    pub fn kind(&self) -> &'static str {
        match self {
            SecurityCommand::CreateJoinToken { .. } => "create_join_token",
            SecurityCommand::RevokeJoinToken { .. } => "revoke_join_token",
            SecurityCommand::ConsumeJoinToken { .. } => "consume_join_token",
            SecurityCommand::RevokeNode { .. } => "revoke_node",
            SecurityCommand::Auth(c) => c.kind(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub secret_sha256: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The node it admitted.
    pub used_by: Option<NodeId>,
    pub revoked: bool,
}

impl JoinToken {
    /// "active", "used", "revoked" or "expired", at time `now`.
    pub fn status(&self, now: u64) -> &'static str {
        if self.revoked {
            "revoked"
        } else if self.used_by.is_some() {
            "used"
        } else if now >= self.expires_ms {
            "expired"
        } else {
            "active"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    pub tokens: BTreeMap<String, JoinToken>,
    /// Node ids whose certificates are refused (removed members).
    pub revoked_nodes: BTreeSet<NodeId>,
    /// Node ids a join token admitted (and so were issued a certificate).
    pub admitted_nodes: BTreeSet<NodeId>,
    /// Client credentials and bearer tokens (`crate::auth`).
    #[serde(default)]
    pub auth: crate::auth::AuthState,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a token id's shape (before it costs a log entry, and again in apply).
pub fn validate_token_id(id: &str) -> Result<(), ApplyError> {
    if is_hex(id, TOKEN_ID_LEN) {
        Ok(())
    } else {
        Err(ApplyError::invalid(format!(
            "token id must be {TOKEN_ID_LEN} lower-case hex digits"
        )))
    }
}

impl SecurityState {
    /// Whether a certificate for node `id` may still speak for that node.
    pub fn node_revoked(&self, id: NodeId) -> bool {
        self.revoked_nodes.contains(&id)
    }

    /// Applies `cmd` at time `now`; `used_ids` are the node ids that were ever members (never
    /// admitted again).
    pub fn apply(
        &mut self,
        cmd: &SecurityCommand,
        now: u64,
        used_ids: &BTreeSet<NodeId>,
    ) -> Result<Reply, ApplyError> {
        match cmd {
            SecurityCommand::CreateJoinToken {
                id,
                secret_sha256,
                expires_ms,
            } => {
                validate_token_id(id)?;
                if !is_hex(secret_sha256, 64) {
                    return Err(ApplyError::invalid(
                        "token secret hash must be 64 hex digits",
                    ));
                }
                if *expires_ms <= now || *expires_ms - now > MAX_TOKEN_TTL_MS {
                    return Err(ApplyError::invalid(
                        "a join token must expire in the future, within 30 days",
                    ));
                }
                if self.tokens.contains_key(id) {
                    return Err(ApplyError::AlreadyExists {
                        what: "join token".into(),
                        name: id.clone(),
                    });
                }
                if self.tokens.len() >= MAX_TOKENS {
                    // Drop finished tokens, oldest first.
                    let mut done: Vec<(u64, String)> = self
                        .tokens
                        .values()
                        .filter(|t| t.status(now) != "active")
                        .map(|t| (t.created_ms, t.id.clone()))
                        .collect();
                    done.sort();
                    for (_, old) in done.into_iter().take(self.tokens.len() + 1 - MAX_TOKENS) {
                        self.tokens.remove(&old);
                    }
                    if self.tokens.len() >= MAX_TOKENS {
                        return Err(ApplyError::LimitReached(format!(
                            "{MAX_TOKENS} join tokens are active: revoke some first"
                        )));
                    }
                }
                self.tokens.insert(
                    id.clone(),
                    JoinToken {
                        id: id.clone(),
                        secret_sha256: secret_sha256.clone(),
                        created_ms: now,
                        expires_ms: *expires_ms,
                        used_by: None,
                        revoked: false,
                    },
                );
                Ok(Reply::Done)
            }
            SecurityCommand::RevokeJoinToken { id } => {
                let t = self
                    .tokens
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::not_found("join token", id))?;
                t.revoked = true;
                Ok(Reply::Done)
            }
            SecurityCommand::ConsumeJoinToken {
                id,
                secret_sha256,
                node_id,
            } => {
                // One refusal for unknown tokens and wrong secrets: no oracle for valid ids.
                let unknown =
                    || ApplyError::invalid("join token refused: it is not a token of this cluster");
                let t = self.tokens.get(id).ok_or_else(unknown)?;
                if t.secret_sha256 != *secret_sha256 {
                    return Err(unknown());
                }
                // A joiner whose answer was lost retries with the same token and id: admitted
                // again, as long as that node has not become a member yet.
                if t.used_by == Some(*node_id) && !t.revoked && !used_ids.contains(node_id) {
                    return Ok(Reply::Done);
                }
                match t.status(now) {
                    "active" => {}
                    "used" => {
                        return Err(ApplyError::invalid(
                            "join token refused: it was already used",
                        ))
                    }
                    "revoked" => {
                        return Err(ApplyError::invalid("join token refused: it was revoked"))
                    }
                    _ => {
                        return Err(ApplyError::invalid(
                            "join token refused: it has expired; create a new one",
                        ))
                    }
                }
                if *node_id == 0 {
                    return Err(ApplyError::invalid("node ids start at 1"));
                }
                if used_ids.contains(node_id) {
                    return Err(ApplyError::IdUsed(*node_id));
                }
                if self.revoked_nodes.contains(node_id) || self.admitted_nodes.contains(node_id) {
                    return Err(ApplyError::invalid(format!(
                        "node id {node_id} was used before in this cluster; node ids are never reused: pick another"
                    )));
                }
                if let Some(t) = self.tokens.get_mut(id) {
                    t.used_by = Some(*node_id);
                }
                self.admitted_nodes.insert(*node_id);
                Ok(Reply::Done)
            }
            SecurityCommand::RevokeNode { id } => {
                self.revoked_nodes.insert(*id);
                Ok(Reply::Done)
            }
            SecurityCommand::Auth(c) => self.auth.apply(c, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Ap {
        fn ap(&mut self, c: &SecurityCommand, now: u64) -> Result<Reply, ApplyError>;
    }

    impl Ap for SecurityState {
        fn ap(&mut self, c: &SecurityCommand, now: u64) -> Result<Reply, ApplyError> {
            self.apply(c, now, &BTreeSet::new())
        }
    }

    const H: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const ID: &str = "0123456789abcdef";

    fn create(s: &mut SecurityState, now: u64, ttl: u64) -> Result<Reply, ApplyError> {
        s.ap(
            &SecurityCommand::CreateJoinToken {
                id: ID.into(),
                secret_sha256: H.into(),
                expires_ms: now + ttl,
            },
            now,
        )
    }

    fn consume(
        s: &mut SecurityState,
        now: u64,
        node: u64,
        hash: &str,
    ) -> Result<Reply, ApplyError> {
        s.ap(
            &SecurityCommand::ConsumeJoinToken {
                id: ID.into(),
                secret_sha256: hash.into(),
                node_id: node,
            },
            now,
        )
    }

    #[test]
    fn a_token_admits_one_node_once() {
        let mut s = SecurityState::default();
        create(&mut s, 1000, 60_000).unwrap();
        let wrong = "b".repeat(64);
        assert!(consume(&mut s, 2000, 2, &wrong)
            .unwrap_err()
            .to_string()
            .contains("not a token of this cluster"));
        consume(&mut s, 2000, 2, H).unwrap();
        assert!(consume(&mut s, 3000, 3, H)
            .unwrap_err()
            .to_string()
            .contains("already used"));
        assert_eq!(s.tokens[ID].used_by, Some(2));
        // The same joiner retrying (its answer was lost) is admitted again, until it is a member.
        consume(&mut s, 3000, 2, H).unwrap();
        let again = SecurityCommand::ConsumeJoinToken {
            id: ID.into(),
            secret_sha256: H.into(),
            node_id: 2,
        };
        assert!(s.apply(&again, 3000, &BTreeSet::from([2])).is_err());
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused() {
        let mut s = SecurityState::default();
        create(&mut s, 1000, 1000).unwrap();
        assert!(consume(&mut s, 2000, 2, H)
            .unwrap_err()
            .to_string()
            .contains("expired"));
        let mut s = SecurityState::default();
        create(&mut s, 1000, 60_000).unwrap();
        s.ap(&SecurityCommand::RevokeJoinToken { id: ID.into() }, 1500)
            .unwrap();
        assert!(consume(&mut s, 2000, 2, H)
            .unwrap_err()
            .to_string()
            .contains("revoked"));
        assert!(s.tokens[ID].used_by.is_none());
    }

    #[test]
    fn revoked_and_admitted_ids_are_not_admitted_again() {
        let mut s = SecurityState::default();
        s.ap(&SecurityCommand::RevokeNode { id: 4 }, 0).unwrap();
        create(&mut s, 1000, 60_000).unwrap();
        assert!(consume(&mut s, 2000, 4, H)
            .unwrap_err()
            .to_string()
            .contains("never reused"));
        assert!(s.node_revoked(4) && !s.node_revoked(5));
    }

    #[test]
    fn bad_tokens_are_refused_before_they_are_stored() {
        let mut s = SecurityState::default();
        assert!(create(&mut s, 1000, 0).is_err());
        assert!(create(&mut s, 1000, MAX_TOKEN_TTL_MS + 1).is_err());
        let bad = SecurityCommand::CreateJoinToken {
            id: "x".into(),
            secret_sha256: H.into(),
            expires_ms: 5000,
        };
        assert!(s.ap(&bad, 1000).is_err());
        assert!(s.tokens.is_empty());
    }
}
