//! The node's side of the trust model (see ARCHITECTURE.md, "Trust model").
//!
//! - Key material in the data directory (`tls/`: the cluster CA, this node's certificate; all
//!   0600): created by `--init`, received from the cluster when joining with a token, loaded on
//!   restart. `--init` also writes the admin credential (`admin.credentials`).
//! - Who may call what: [`authenticate_client`] (the `Blixard` service: any certificate of the
//!   cluster CA except a revoked node's) and [`authenticate_peer`] (`RaftPeer`: a node
//!   certificate whose id is not revoked) run before a handler, and put the caller's
//!   [`Caller`] identity into the request's extensions for the handlers (roles plug in there).
//! - What a peer may claim: the `check_*` functions refuse a peer message whose claimed
//!   identity (candidate, leader, heartbeat sender, proposer) is not the certificate's, and
//!   terms or indexes no real cluster reaches, before openraft sees the message.
//! - Joining: [`enroll`] (joiner side) verifies the cluster by the token's CA fingerprint and
//!   trades the token for its certificate; [`serve_enroll`] (member side) consumes the token
//!   through Raft and issues the certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb;
use blixard_core::tokens::SecurityCommand;
use blixard_core::{Command, Request};
use blixard_pki::{Ca, CertKey, ConnInfo, Credentials, Identity, JoinTokenString, TlsMaterial};
use blixard_raft::TypeConfig;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tonic::Status;

use crate::error::NodeError;
use crate::node::Node;

/// Where a node keeps its key material, under the data directory.
pub const TLS_DIR: &str = "tls";
/// The admin credential `--init` writes, under the data directory.
pub const ADMIN_CREDENTIALS: &str = "admin.credentials";
/// Terms and log indexes above this are refused from peers: a cluster electing a leader every
/// millisecond would need 146,000 years to get there, and openraft must never see a value
/// that overflows when incremented.
pub const MAX_LEGIT: u64 = 1 << 62;
/// Default lifetime of a join token.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

/// The verified identity of whoever sent a request (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

/// This node's key material and the TLS configurations made from it.
pub struct NodeTls {
    pub ca: Ca,
    pub node: CertKey,
    pub fingerprint: String,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

fn pki_err(e: blixard_pki::PkiError) -> NodeError {
    NodeError::Config(e.to_string())
}

impl NodeTls {
    fn new(ca: Ca, node: CertKey, id: u64) -> Result<Self, NodeError> {
        let material = TlsMaterial {
            ca_pem: ca.0.cert_pem.clone(),
            own: node.clone(),
        };
        match material.identity().map_err(pki_err)? {
            Identity::Node(n) if n == id => {}
            other => {
                return Err(NodeError::Config(format!(
                    "the certificate in the data directory is {other}, not node {id}"
                )))
            }
        }
        Ok(Self {
            fingerprint: ca.fingerprint().map_err(pki_err)?,
            server: material.server_config().map_err(pki_err)?,
            client: material.client_config().map_err(pki_err)?,
            ca,
            node,
        })
    }

    /// Bootstrap: a new CA, this node's certificate and the admin credential, written to
    /// `data_dir`.
    pub fn init(data_dir: &Path, cluster_id: &str, id: u64) -> Result<Self, NodeError> {
        let ca = Ca::generate(cluster_id).map_err(pki_err)?;
        let node = ca.issue_node(id).map_err(pki_err)?;
        let tls = Self::new(ca, node, id)?;
        tls.store(data_dir)?;
        let admin = tls.ca.issue_client("admin", "admin").map_err(pki_err)?;
        Credentials::new("admin", "admin", &tls.ca.0.cert_pem, admin)
            .store(&data_dir.join(ADMIN_CREDENTIALS))
            .map_err(pki_err)?;
        Ok(tls)
    }

    /// Writes the key material (every file 0600).
    pub fn store(&self, data_dir: &Path) -> Result<(), NodeError> {
        let dir = tls_dir(data_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| NodeError::io(format!("creating {}", dir.display()), e))?;
        for (name, pem) in [
            ("ca.pem", &self.ca.0.cert_pem),
            ("ca.key", &self.ca.0.key_pem),
            ("node.pem", &self.node.cert_pem),
            ("node.key", &self.node.key_pem),
        ] {
            blixard_pki::credentials::write_private(&dir.join(name), pem.as_bytes())
                .map_err(pki_err)?;
        }
        Ok(())
    }

    pub fn load(data_dir: &Path, id: u64) -> Result<Self, NodeError> {
        let dir = tls_dir(data_dir);
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                NodeError::Config(format!(
                    "cannot read {}: {e} (every node holds its certificate in DATA_DIR/{TLS_DIR}; a data directory without one cannot be resumed)",
                    dir.join(name).display()
                ))
            })
        };
        let ca = Ca(CertKey {
            cert_pem: read("ca.pem")?,
            key_pem: read("ca.key")?,
        });
        let node = CertKey {
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        };
        Self::new(ca, node, id)
    }
}

/// The identity of the connection a request came on.
fn conn_identity<T>(r: &tonic::Request<T>) -> Option<Identity> {
    r.extensions().get::<ConnInfo>()?.identity.clone()
}

/// The verified caller of a request that passed authentication.
pub fn caller<T>(r: &tonic::Request<T>) -> Option<&Identity> {
    r.extensions().get::<Caller>().map(|c| &c.0)
}

/// Whether node `id`'s certificates are revoked in this node's applied state.
fn revoked(node: &Node, id: u64) -> bool {
    node.state.read().state.security.node_revoked(id)
}

/// The `Blixard` service: any client certificate of the cluster CA, or a node certificate
/// that was not revoked.
pub fn authenticate_client(
    node: &Node,
    mut r: tonic::Request<()>,
) -> Result<tonic::Request<()>, Status> {
    match conn_identity(&r) {
        None => Err(Status::unauthenticated(
            "no client certificate: pass --credentials FILE or set BLIXARD_CREDENTIALS \
             (the admin credential is DATA_DIR/admin.credentials on the node started with --init)",
        )),
        Some(Identity::Node(id)) if revoked(node, id) => Err(Status::permission_denied(format!(
            "node {id} was removed from the cluster: its certificate is revoked"
        ))),
        Some(id) => {
            r.extensions_mut().insert(Caller(id));
            Ok(r)
        }
    }
}

/// The `RaftPeer` service: only a node certificate whose id was not revoked.
pub fn authenticate_peer(
    node: &Node,
    mut r: tonic::Request<()>,
) -> Result<tonic::Request<()>, Status> {
    match conn_identity(&r) {
        Some(Identity::Node(id)) if revoked(node, id) => Err(Status::permission_denied(format!(
            "node {id} was removed from the cluster: its certificate is revoked"
        ))),
        Some(Identity::Node(id)) => {
            r.extensions_mut().insert(Caller(Identity::Node(id)));
            Ok(r)
        }
        Some(other) => Err(Status::permission_denied(format!(
            "peer requests need a node certificate; {other} is not a node"
        ))),
        None => Err(Status::permission_denied(
            "peer requests need a node certificate of this cluster",
        )),
    }
}

/// The node id of an authenticated peer request.
pub fn peer_id<T>(r: &tonic::Request<T>) -> Result<u64, Status> {
    match caller(r) {
        Some(Identity::Node(id)) => Ok(*id),
        _ => Err(Status::permission_denied(
            "peer requests need a node certificate of this cluster",
        )),
    }
}

fn claim(cert: u64, claimed: u64, what: &str) -> Result<(), Status> {
    if cert == claimed {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "node {cert} sent a {what} claiming to be node {claimed}: refused"
        )))
    }
}

fn bounded(v: u64, what: &str) -> Result<(), Status> {
    if v <= MAX_LEGIT {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{what} {v} is beyond any legitimate value: refused"
        )))
    }
}

type Vote = openraft::alias::VoteOf<TypeConfig>;
type LogId = openraft::alias::LogIdOf<TypeConfig>;

fn check_vote(cert: u64, vote: &Vote, what: &str) -> Result<(), Status> {
    claim(cert, vote.leader_id.node_id, what)?;
    bounded(vote.leader_id.term, "term")
}

fn check_log_id(l: &Option<LogId>) -> Result<(), Status> {
    if let Some(l) = l {
        bounded(l.leader_id.term, "term")?;
        bounded(l.index, "log index")?;
    }
    Ok(())
}

/// An append must come from the leader it names, with sane terms and indexes.
pub fn check_append(cert: u64, req: &AppendEntriesRequest<TypeConfig>) -> Result<(), Status> {
    check_vote(cert, &req.vote, "log append")?;
    check_log_id(&req.prev_log_id)?;
    check_log_id(&req.leader_commit)?;
    for e in &req.entries {
        check_log_id(&Some(e.log_id))?;
    }
    Ok(())
}

/// A vote request must come from the candidate it names.
pub fn check_vote_request(cert: u64, req: &VoteRequest<TypeConfig>) -> Result<(), Status> {
    check_vote(cert, &req.vote, "vote request")?;
    check_log_id(&req.last_log_id)
}

/// A snapshot must come from the leader it names.
pub fn check_snapshot(
    cert: u64,
    vote: &Vote,
    meta: &openraft::alias::SnapshotMetaOf<TypeConfig>,
) -> Result<(), Status> {
    check_vote(cert, vote, "snapshot")?;
    check_log_id(&meta.last_log_id)
}

/// A forwarded proposal that speaks for a node (registration, reports) must come from it.
pub fn check_proposal(cert: u64, req: &Request) -> Result<(), Status> {
    if let Some(n) = req.command.acting_node() {
        claim(cert, n, &format!("{} proposal", req.command.kind()))?;
    }
    Ok(())
}

/// An eviction notice must come from the leader this node knows.
pub fn check_evicted(node: &Node, cert: u64) -> Result<(), Status> {
    match node.leader() {
        Some((leader, _)) if leader == cert => Ok(()),
        Some((leader, _)) => Err(Status::permission_denied(format!(
            "eviction notice from node {cert}, but the leader is node {leader}: refused"
        ))),
        None => Err(Status::unavailable(
            "no leader known: an eviction notice cannot be checked",
        )),
    }
}

/// A heartbeat must come from the node it names.
pub fn check_heartbeat(cert: u64, node_id: u64) -> Result<(), Status> {
    claim(cert, node_id, "heartbeat")
}

// ---- join tokens ----

/// Member addresses a joiner can try, at most [`TOKEN_ADDRS`]: voters first (they stay
/// members longest and can forward the join to the leader), then learners. A cluster of more
/// members than a token may carry (100 nodes, most of them learners) still gets tokens its
/// joiners accept.
pub fn token_addrs(members: Vec<crate::node::MemberInfo>) -> Vec<String> {
    let (voters, learners): (Vec<_>, Vec<_>) = members.into_iter().partition(|m| m.voter);
    voters
        .into_iter()
        .chain(learners)
        .map(|m| m.addr)
        .take(TOKEN_ADDRS)
        .collect()
}

/// Addresses in a join token: plenty to find a live member, well within what a token may
/// carry (`blixard_pki::token::MAX_TOKEN_ADDRS`).
pub const TOKEN_ADDRS: usize = 16;
const _: () = assert!(TOKEN_ADDRS <= blixard_pki::token::MAX_TOKEN_ADDRS);

/// Creates a join token through Raft; returns it with its string (the only time the secret
/// is shown).
pub async fn create_token(node: &Node, ttl_secs: u64) -> Result<pb::JoinTokenInfo, Status> {
    let ttl = if ttl_secs == 0 {
        DEFAULT_TOKEN_TTL_SECS
    } else {
        ttl_secs
    };
    if ttl > blixard_core::tokens::MAX_TOKEN_TTL_MS / 1000 {
        return Err(Status::invalid_argument(
            "--ttl must be at most 30 days (2592000 seconds)",
        ));
    }
    let t = JoinTokenString::generate(&node.tls.fingerprint, token_addrs(node.members()));
    let now = crate::node::now_ms();
    let expires = now + ttl * 1000;
    let cmd = SecurityCommand::CreateJoinToken {
        id: t.id.clone(),
        secret_sha256: t.secret_hash(),
        expires_ms: expires,
    };
    node.propose(Command::Security(cmd), None).await?;
    tracing::info!(token = %t.id, expires_ms = expires, "join token created");
    Ok(pb::JoinTokenInfo {
        id: t.id.clone(),
        token: t.encode(),
        expires_at_ms: expires,
        created_ms: now,
        status: "active".into(),
        used_by: None,
    })
}

pub async fn list_tokens(node: &Node) -> Result<pb::JoinTokenList, Status> {
    node.read_barrier().await?;
    let now = crate::node::now_ms();
    let a = node.state.read();
    let mut tokens: Vec<pb::JoinTokenInfo> = a
        .state
        .security
        .tokens
        .values()
        .map(|t| pb::JoinTokenInfo {
            id: t.id.clone(),
            token: String::new(),
            expires_at_ms: t.expires_ms,
            created_ms: t.created_ms,
            status: t.status(now).into(),
            used_by: t.used_by,
        })
        .collect();
    tokens.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(pb::JoinTokenList { tokens })
}

pub async fn revoke_token(node: &Node, id: String) -> Result<(), Status> {
    blixard_core::tokens::validate_token_id(&id).map_err(NodeError::Rejected)?;
    node.propose(
        Command::Security(SecurityCommand::RevokeJoinToken { id }),
        None,
    )
    .await?;
    Ok(())
}

/// Member side of a join: checks the token through Raft (consuming it), then issues the
/// joiner's certificate.
pub async fn serve_enroll(node: &Node, req: pb::EnrollRequest) -> Result<pb::EnrollReply, Status> {
    if req.node_id == 0 || req.node_id > MAX_LEGIT {
        return Err(Status::invalid_argument("node ids are positive integers"));
    }
    if req.addr.is_empty() || req.addr.len() > blixard_core::spec::MAX_ADDR_LEN {
        return Err(Status::invalid_argument(
            "join address must be 1 to 256 bytes",
        ));
    }
    blixard_core::tokens::validate_token_id(&req.token_id).map_err(|_| {
        Status::permission_denied("join token refused: it is not a token of this cluster")
    })?;
    if req.secret.len() != 64 {
        return Err(Status::permission_denied(
            "join token refused: it is not a token of this cluster",
        ));
    }
    if node.members().iter().any(|m| m.id == req.node_id) {
        return Err(Status::failed_precondition(format!(
            "node {} is already a member of this cluster; node ids are never reused: pick another",
            req.node_id
        )));
    }
    let hash = blixard_pki::token::secret_hash(&req.secret);
    // Anyone may call this: only a caller holding a real token may cost a log entry. Checked
    // against the applied state after a read barrier (no log entry), then again by `apply`.
    node.read_barrier().await?;
    let known = node
        .state
        .read()
        .state
        .security
        .tokens
        .get(&req.token_id)
        .is_some_and(|t| t.secret_sha256 == hash);
    if !known {
        tracing::warn!(node = req.node_id, addr = %req.addr, "join refused: unknown token or wrong secret");
        return Err(Status::permission_denied(
            "join token refused: it is not a token of this cluster",
        ));
    }
    let cmd = SecurityCommand::ConsumeJoinToken {
        id: req.token_id.clone(),
        secret_sha256: hash,
        node_id: req.node_id,
    };
    match node.propose(Command::Security(cmd), None).await {
        Ok(_) => {}
        Err(NodeError::Rejected(e)) => {
            tracing::warn!(node = req.node_id, addr = %req.addr, error = %e, "join refused");
            return Err(Status::permission_denied(e.to_string()));
        }
        Err(e) => return Err(e.into()),
    }
    let cert = node
        .tls
        .ca
        .issue_node(req.node_id)
        .map_err(|e| Status::internal(e.to_string()))?;
    tracing::info!(node = req.node_id, addr = %req.addr, token = %req.token_id, "join token accepted: certificate issued");
    Ok(pb::EnrollReply {
        cluster_id: node.cluster_id.to_string(),
        ca_cert: node.tls.ca.0.cert_pem.clone(),
        ca_key: node.tls.ca.0.key_pem.clone(),
        node_cert: cert.cert_pem,
        node_key: cert.key_pem,
    })
}

/// Joiner side: reaches the cluster through `seed` (then the token's addresses), verifies it
/// by the token's CA fingerprint, and trades the token for this node's certificate. Nothing is
/// written to disk here; on refusal the caller exits without an identity.
pub async fn enroll(
    seed: &str,
    token: &str,
    id: u64,
    addr: &str,
) -> Result<(String, NodeTls), NodeError> {
    let t = JoinTokenString::parse(token).map_err(NodeError::Config)?;
    let cfg = blixard_pki::pinned_client_config(&t.ca_fingerprint).map_err(pki_err)?;
    let mut targets = vec![seed.to_string()];
    targets.extend(t.addrs.iter().filter(|a| *a != seed).cloned());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        for target in &targets {
            let ch = blixard_pki::channel(target, cfg.clone())
                .map_err(|e| NodeError::Config(format!("bad address {target}: {e}")))?;
            let req = pb::EnrollRequest {
                token_id: t.id.clone(),
                secret: t.secret.clone(),
                node_id: id,
                addr: addr.to_string(),
            };
            match blixard_api::EnrollClient::new(ch).enroll(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let ca = Ca(CertKey {
                        cert_pem: r.ca_cert,
                        key_pem: r.ca_key,
                    });
                    let tls = NodeTls::new(
                        ca,
                        CertKey {
                            cert_pem: r.node_cert,
                            key_pem: r.node_key,
                        },
                        id,
                    )?;
                    if tls.fingerprint != t.ca_fingerprint {
                        return Err(NodeError::Config(format!(
                            "{target} sent a CA that is not the one the join token pins"
                        )));
                    }
                    return Ok((r.cluster_id, tls));
                }
                Err(s) => {
                    let text = blixard_pki::error_chain(&s);
                    if text.contains("does not match the join token") {
                        return Err(NodeError::Config(format!(
                            "{target} is not a member of the cluster this join token is for (its CA does not match the token): refused"
                        )));
                    }
                    // The cluster's answers are final; anything else (unreachable, reset, timed
                    // out) is retried until the deadline.
                    if crate::error::is_final_answer(s.code()) {
                        return Err(NodeError::Config(format!(
                            "joining through {target}: {}",
                            s.message()
                        )));
                    }
                    last = format!("{target}: {text}");
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::retry(crate::error::RetryReason::Unreachable(
                format!("cannot reach the cluster to join: {last}"),
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The `Enroll` service (no certificate needed: the token is the credential).
#[derive(Clone)]
pub struct EnrollService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl pb::enroll_server::Enroll for EnrollService {
    async fn enroll(
        &self,
        r: tonic::Request<pb::EnrollRequest>,
    ) -> Result<tonic::Response<pb::EnrollReply>, Status> {
        Ok(tonic::Response::new(
            serve_enroll(&self.node, r.into_inner()).await?,
        ))
    }
}

/// Records through Raft that node `id` was removed: its certificates are refused from now on.
pub async fn revoke_node(node: &Node, id: u64) {
    match node
        .propose(Command::Security(SecurityCommand::RevokeNode { id }), None)
        .await
    {
        Ok(_) => tracing::info!(node = id, "certificate revoked"),
        // The leader's housekeeping retries (`revoke_departed`).
        Err(e) => tracing::warn!(node = id, error = %e, "could not record the revocation yet"),
    }
}

/// On the leader: revokes workers that are no longer members and not yet revoked (a removal
/// whose revocation was interrupted by a crash or a change of leader).
pub async fn revoke_departed(node: &Node) {
    let departed = node.departed_workers(|st, id| !st.security.node_revoked(id));
    for id in departed {
        revoke_node(node, id).await;
    }
}

#[cfg(test)]
mod tests {
    //! The peer decoding paths never panic, whatever bytes arrive, and the claim checks refuse
    //! what they must. Runs with the normal tests (proptest, 256 cases per property).
    use super::*;
    use proptest::prelude::*;

    type Meta = openraft::alias::SnapshotMetaOf<TypeConfig>;

    /// Decodes `bytes` as every peer message type and runs the checks on what decodes.
    fn decode_all(cert: u64, bytes: &[u8]) {
        if let Ok(r) = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(bytes) {
            let _ = check_append(cert, &r);
        }
        if let Ok(r) = serde_json::from_slice::<VoteRequest<TypeConfig>>(bytes) {
            let _ = check_vote_request(cert, &r);
        }
        if let Ok((v, m, _)) = serde_json::from_slice::<(Vote, Meta, Vec<u8>)>(bytes) {
            let _ = check_snapshot(cert, &v, &m);
        }
        if let Ok(r) = serde_json::from_slice::<Request>(bytes) {
            let _ = check_proposal(cert, &r);
        }
        let _ = JoinTokenString::parse(&String::from_utf8_lossy(bytes));
        let _ = Identity::from_der(bytes);
    }

    fn append_json(leader: u64, term: u64, prev: u64, commit: u64) -> Vec<u8> {
        let lid = |t: u64, n: u64| serde_json::json!({"term": t, "node_id": n});
        serde_json::to_vec(&serde_json::json!({
            "vote": {"leader_id": lid(term, leader), "committed": true},
            "prev_log_id": {"leader_id": lid(term, leader), "index": prev},
            "entries": [],
            "leader_commit": {"leader_id": lid(term, leader), "index": commit},
        }))
        .unwrap()
    }

    /// Small (legitimate), around the limit, or anything.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..1000, (MAX_LEGIT - 2)..=(MAX_LEGIT + 2), any::<u64>()]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(cert in 1u64..10, bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            decode_all(cert, &bytes);
        }

        #[test]
        fn mutated_messages_never_panic(cert in 1u64..10, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = append_json(cert, 3, 5, 5);
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            decode_all(cert, &bytes);
        }

        #[test]
        fn appends_are_refused_exactly_when_a_claim_or_number_is_wrong(
            cert in 1u64..5, leader in 1u64..5, term in number(), prev in number(), commit in number(),
        ) {
            let r: AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&append_json(leader, term, prev, commit)).unwrap();
            let ok = cert == leader && term <= MAX_LEGIT && prev <= MAX_LEGIT && commit <= MAX_LEGIT;
            prop_assert_eq!(check_append(cert, &r).is_ok(), ok);
        }
    }

    #[test]
    fn a_proposal_speaking_for_another_node_is_refused() {
        let reg = |id| {
            Request::new(
                Command::RegisterWorker {
                    id,
                    addr: "a:1".into(),
                    capacity: Default::default(),
                    kvm: false,
                    labels: Default::default(),
                },
                0,
            )
        };
        assert!(check_proposal(2, &reg(2)).is_ok());
        assert!(check_proposal(2, &reg(666)).is_err());
        let create = Request::new(Command::DeleteVm { name: "x".into() }, 0);
        assert!(check_proposal(2, &create).is_ok());
    }

    #[test]
    fn token_addrs_voters_first_and_bounded() {
        let members: Vec<crate::node::MemberInfo> = (1..=100)
            .map(|id| crate::node::MemberInfo {
                id,
                addr: format!("10.0.0.{id}:7001"),
                // Voters among the later ids, to see them come first.
                voter: id > 97,
            })
            .collect();
        let addrs = token_addrs(members);
        assert_eq!(addrs.len(), TOKEN_ADDRS);
        assert_eq!(
            addrs[..3],
            ["10.0.0.98:7001", "10.0.0.99:7001", "10.0.0.100:7001"]
        );
        let t = JoinTokenString::generate(&"a".repeat(64), addrs);
        assert!(JoinTokenString::parse(&t.encode()).is_ok());
    }
}
