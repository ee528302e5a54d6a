//! Authorisation: every request is checked on the node that receives it, against the role
//! table of `blixard_core::auth` (see ARCHITECTURE.md, "Trust model").
//!
//! - gRPC: [`AuthzLayer`] wraps the whole server. It reads the method path and the verified
//!   identity of the connection ([`ConnInfo`]) and refuses before any handler runs:
//!   `Unauthenticated` without a client certificate or with a revoked or expired one,
//!   `PermissionDenied` naming the role needed when the caller's role is too low.
//! - HTTP: [`authorize_http`] does the same for `Authorization: Bearer TOKEN` (401 / 403).
//! - Who asked: an authorised client request runs inside [`scope`], so [`current_caller`] names
//!   the client. [`crate::node::Node::propose`] stamps it into the Raft request, where `apply`
//!   records it (`created_by`, events). A follower forwarding a proposal to the leader sends
//!   that request as it is: the leader takes the caller from it because only a member's
//!   certificate may call the peer service (`security::authenticate_peer`).
//! - A member's own certificate on the client API (a follower forwarding a membership change
//!   or fetching logs for a client it already authorised) passes unless it was revoked.
//! - [`AuthService`]: `auth issue|token|list|revoke`.

use std::sync::Arc;
use std::task::{Context, Poll};

use blixard_api::pb;
use blixard_core::auth::{self, Access, AuthCommand, Role};
use blixard_core::tokens::SecurityCommand;
use blixard_core::Command;
use blixard_pki::{ConnInfo, Identity};
use futures::future::BoxFuture;
use tonic::Status;

use crate::error::NodeError;
use crate::node::{now_ms, Node};

tokio::task_local! {
    static CALLER: Option<String>;
}

/// The authenticated client the current request runs for (`None` outside a client request,
/// or for a member's own certificate).
pub fn current_caller() -> Option<String> {
    CALLER.try_with(|c| c.clone()).ok().flatten()
}

/// Runs `f` on behalf of `caller` (see [`current_caller`]).
pub async fn scope<F: std::future::Future>(caller: Option<String>, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// Default lifetime of a credential from `auth issue` (365 days).
pub const DEFAULT_CREDENTIAL_TTL_SECS: u64 = 365 * 24 * 3600;
/// Default lifetime of a bearer token from `auth token` (30 days).
pub const DEFAULT_BEARER_TTL_SECS: u64 = 30 * 24 * 3600;

/// Why a request is refused: not (validly) authenticated, or not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(String),
    Forbidden(String),
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::Unauthenticated(m) => Status::unauthenticated(m),
            Refusal::Forbidden(m) => Status::permission_denied(m),
        }
    }
}

fn role_needed(needed: Role, what: &str, name: &str, has: Role) -> Refusal {
    Refusal::Forbidden(format!(
        "{what} needs role {needed}; '{name}' has role {has} (ask an admin for a credential with role {needed})"
    ))
}

/// Checks a client certificate's identity against `needed`; returns the caller's name to
/// record (`None` for a member).
pub fn check_identity(
    node: &Node,
    identity: Option<&Identity>,
    needed: Role,
    what: &str,
) -> Result<Option<String>, Refusal> {
    match identity {
        None => Err(Refusal::Unauthenticated(
            "no client certificate: pass --credentials FILE or set BLIXARD_CREDENTIALS \
             (the admin credential is DATA_DIR/admin.credentials on the node started with --init)"
                .into(),
        )),
        Some(Identity::Node(id)) => {
            if node.state.read().state.security.node_revoked(*id) {
                // As the peer service says it (`security::authenticate_peer`).
                Err(Refusal::Forbidden(format!(
                    "node {id} was removed from the cluster: its certificate is revoked"
                )))
            } else {
                Ok(None)
            }
        }
        Some(Identity::Client { name, role, serial }) => {
            if let Some(why) = node
                .state
                .read()
                .state
                .security
                .auth
                .credential_refusal(serial, now_ms())
            {
                return Err(Refusal::Unauthenticated(why));
            }
            let has = Role::parse(role).ok_or_else(|| {
                Refusal::Unauthenticated(format!("the credential carries an unknown role '{role}'"))
            })?;
            if !has.allows(needed) {
                return Err(role_needed(needed, what, name, has));
            }
            Ok(Some(name.clone()))
        }
    }
}

/// The gRPC decision for one request: the method path and the connection's identity.
/// `Ok(caller)` to go on (the caller to record), or the status to answer with.
pub fn check_grpc(
    node: &Node,
    path: &str,
    conn: Option<&ConnInfo>,
) -> Result<Option<String>, Status> {
    let what = path.rsplit('/').next().unwrap_or(path);
    match auth::grpc_access(path) {
        // The peer and enrollment services check their callers themselves (node certificates;
        // join tokens).
        Some(Access::Public) | Some(Access::Peer) => Ok(None),
        Some(Access::Role(needed)) => {
            check_identity(node, conn.and_then(|c| c.identity.as_ref()), needed, what)
                .map_err(Status::from)
        }
        None => Err(Status::unimplemented(format!("unknown method {path}"))),
    }
}

/// Authorises every gRPC request (see the module doc).
#[derive(Clone)]
pub struct AuthzLayer {
    pub node: Arc<Node>,
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            node: self.node.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for Authz<S>
where
    S: tower::Service<
            axum::http::Request<B>,
            Response = axum::http::Response<tonic::body::BoxBody>,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        match check_grpc(&self.node, &path, req.extensions().get::<ConnInfo>()) {
            Ok(caller) => {
                let fut = self.inner.call(req);
                Box::pin(scope(caller, fut))
            }
            Err(status) => {
                tracing::info!(method = %path, code = ?status.code(), reason = %status.message(), "request refused");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The HTTP decision: `Authorization` header value (if any), the method and the matched route.
pub fn check_http(
    node: &Node,
    authorization: Option<&str>,
    method: &str,
    route: &str,
) -> Result<Option<String>, Refusal> {
    let needed = match auth::http_access(method, route) {
        Access::Public => return Ok(None),
        Access::Peer => Role::Admin,
        Access::Role(r) => r,
    };
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Refusal::Unauthenticated(
                "missing bearer token: send `Authorization: Bearer TOKEN` (create one with `blixard auth token --name WHO --role ROLE`)"
                    .into(),
            )
        })?;
    let (name, has) = node
        .state
        .read()
        .state
        .security
        .auth
        .check_bearer(token, now_ms(), blixard_pki::token::secret_hash)
        .map_err(Refusal::Unauthenticated)?;
    if !has.allows(needed) {
        return Err(role_needed(
            needed,
            &format!("{method} {route}"),
            &name,
            has,
        ));
    }
    Ok(Some(name))
}

// ---- the Auth service ----

fn parse_role(role: &str) -> Result<Role, Status> {
    Role::parse(role).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown role '{role}': use admin, operator or viewer"
        ))
    })
}

fn expiry(ttl_secs: u64, default: u64) -> Result<(u64, u64), Status> {
    let ttl = if ttl_secs == 0 { default } else { ttl_secs };
    if ttl > auth::MAX_TTL_MS / 1000 {
        return Err(Status::invalid_argument(format!(
            "--ttl must be at most 10 years ({} seconds)",
            auth::MAX_TTL_MS / 1000
        )));
    }
    let now = now_ms();
    Ok((now, now + ttl * 1000))
}

fn who() -> String {
    current_caller().unwrap_or_else(|| "member".into())
}

/// `auth issue|token|list|revoke`.
#[derive(Clone)]
pub struct AuthService {
    pub node: Arc<Node>,
}

#[tonic::async_trait]
impl pb::auth_server::Auth for AuthService {
    async fn issue_credential(
        &self,
        r: tonic::Request<pb::IssueCredentialRequest>,
    ) -> Result<tonic::Response<pb::IssuedCredential>, Status> {
        let r = r.into_inner();
        auth::validate_name(&r.name).map_err(NodeError::Rejected)?;
        let role = parse_role(&r.role)?;
        let (_, expires_ms) = expiry(r.ttl_secs, DEFAULT_CREDENTIAL_TTL_SECS)?;
        let (cert, serial) = self
            .node
            .tls
            .ca
            .issue_client_until(&r.name, role.as_str(), Some(expires_ms / 1000))
            .map_err(|e| Status::internal(e.to_string()))?;
        // Recorded before it is handed out: every credential in circulation can be listed and
        // revoked. The certificate's expiry is whole seconds.
        let expires_ms = expires_ms / 1000 * 1000;
        let cmd = AuthCommand::RecordCredential {
            serial: serial.clone(),
            name: r.name.clone(),
            role,
            expires_ms: Some(expires_ms),
            created_by: who(),
        };
        self.node
            .propose(Command::Security(SecurityCommand::Auth(cmd)), None)
            .await?;
        tracing::info!(name = %r.name, %role, %serial, by = %who(), "credential issued");
        Ok(tonic::Response::new(pb::IssuedCredential {
            name: r.name,
            role: role.as_str().into(),
            serial,
            ca_cert: self.node.tls.ca.0.cert_pem.clone(),
            cert: cert.cert_pem,
            key: cert.key_pem,
            expires_at_ms: Some(expires_ms),
        }))
    }

    async fn create_bearer_token(
        &self,
        r: tonic::Request<pb::IssueCredentialRequest>,
    ) -> Result<tonic::Response<pb::IssuedBearerToken>, Status> {
        let r = r.into_inner();
        auth::validate_name(&r.name).map_err(NodeError::Rejected)?;
        let role = parse_role(&r.role)?;
        let (_, expires_ms) = expiry(r.ttl_secs, DEFAULT_BEARER_TTL_SECS)?;
        let id = blixard_pki::token::random_hex(auth::BEARER_ID_LEN / 2);
        let secret = blixard_pki::token::random_hex(32);
        let cmd = AuthCommand::CreateBearerToken {
            id: id.clone(),
            name: r.name.clone(),
            role,
            secret_sha256: blixard_pki::token::secret_hash(&secret),
            expires_ms: Some(expires_ms),
            created_by: who(),
        };
        self.node
            .propose(Command::Security(SecurityCommand::Auth(cmd)), None)
            .await?;
        tracing::info!(name = %r.name, %role, token = %id, by = %who(), "bearer token created");
        Ok(tonic::Response::new(pb::IssuedBearerToken {
            token: format!("{}{id}_{secret}", auth::BEARER_PREFIX),
            id,
            name: r.name,
            role: role.as_str().into(),
            expires_at_ms: Some(expires_ms),
        }))
    }

    async fn list_auth(
        &self,
        _r: tonic::Request<pb::Empty>,
    ) -> Result<tonic::Response<pb::AuthList>, Status> {
        self.node.read_barrier().await?;
        let now = now_ms();
        let a = self.node.state.read();
        let s = &a.state.security.auth;
        let mut entries: Vec<pb::AuthEntry> = s
            .credentials
            .values()
            .map(|c| pb::AuthEntry {
                kind: "credential".into(),
                id: c.serial.clone(),
                name: c.name.clone(),
                role: c.role.as_str().into(),
                created_ms: c.created_ms,
                expires_at_ms: c.expires_ms,
                created_by: c.created_by.clone(),
                status: c.status(now).into(),
            })
            .chain(s.bearer.values().map(|t| pb::AuthEntry {
                kind: "token".into(),
                id: t.id.clone(),
                name: t.name.clone(),
                role: t.role.as_str().into(),
                created_ms: t.created_ms,
                expires_at_ms: t.expires_ms,
                created_by: t.created_by.clone(),
                status: t.status(now).into(),
            }))
            .collect();
        entries.sort_by(|a, b| (a.created_ms, &a.name, &a.id).cmp(&(b.created_ms, &b.name, &b.id)));
        Ok(tonic::Response::new(pb::AuthList { entries }))
    }

    async fn revoke(
        &self,
        r: tonic::Request<pb::AuthRevokeRequest>,
    ) -> Result<tonic::Response<pb::Empty>, Status> {
        let who_ = r.into_inner().who;
        if who_.is_empty() || who_.len() > 128 {
            return Err(Status::invalid_argument(
                "name what to revoke: a client name, a credential serial or a token id",
            ));
        }
        let cmd = AuthCommand::Revoke { who: who_.clone() };
        self.node
            .propose(Command::Security(SecurityCommand::Auth(cmd)), None)
            .await?;
        tracing::info!(revoked = %who_, by = %who(), "credentials revoked");
        Ok(tonic::Response::new(pb::Empty {}))
    }
}

/// Records the admin credential `--init` wrote (`DATA_DIR/admin.credentials`) in the replicated
/// state, so it is listed and can be revoked like any other. Idempotent (an identical record
/// is accepted again); retried while there is no leader; run by every node that has the file.
pub async fn record_bootstrap_admin(node: Arc<Node>) {
    let path = node
        .config
        .data_dir
        .join(crate::security::ADMIN_CREDENTIALS);
    let Ok(creds) = blixard_pki::Credentials::load(&path) else {
        return;
    };
    let Ok(Identity::Client { name, role, serial }) = creds.material().identity() else {
        return;
    };
    let Some(role) = Role::parse(&role) else {
        return;
    };
    if node
        .state
        .read()
        .state
        .security
        .auth
        .credentials
        .contains_key(&serial)
    {
        return;
    }
    let expires_ms = blixard_pki::not_after_secs(&creds.cert)
        .ok()
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| s.saturating_mul(1000))
        .filter(|e| *e < now_ms() + auth::MAX_TTL_MS);
    let cmd = AuthCommand::RecordCredential {
        serial,
        name,
        role,
        expires_ms,
        created_by: "bootstrap".into(),
    };
    crate::propose_until_done(
        node,
        Command::Security(SecurityCommand::Auth(cmd)),
        "admin credential record",
    )
    .await;
}
