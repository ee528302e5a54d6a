//! The HTTP surface of a node (`blixard node --http HOST:PORT`), on axum, on the node's tokio
//! runtime: `/healthz`, `/readyz`, `/metrics`, the JSON API under `/v1/`, the event stream
//! `/v1/events` (server-sent events) and the embedded dashboard under `/ui/`.
//!
//! One code path: every `/v1/` handler calls the gRPC service ([`crate::service::Api`], the
//! same methods the CLI reaches over gRPC) and shapes the reply with `blixard_api::json`, the
//! CLI's `--json` shapes. No rule is implemented twice.
//!
//! Plug points for the secure cluster (not done here):
//! - Authorisation: [`authorize`] is the one middleware every route passes through; a bearer
//!   token check (`Authorization: Bearer TOKEN`, roles) goes there, returning 401/403.
//! - HTTPS: [`serve`] takes an accepted-connection listener; a TLS acceptor wraps it there.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use blixard_api::json as shapes;
use blixard_api::pb;
use blixard_api::pb::blixard_server::Blixard;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::node::Node;
use crate::service::Api;

#[derive(Clone)]
struct Http {
    api: Api,
    node: Arc<Node>,
}

/// An error answer: the gRPC status mapped to an HTTP code, with `{"error": message}`.
struct ApiError(StatusCode, String);

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        let code = match s.code() {
            InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
            NotFound => StatusCode::NOT_FOUND,
            AlreadyExists | FailedPrecondition | Aborted => StatusCode::CONFLICT,
            ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
            PermissionDenied => StatusCode::FORBIDDEN,
            Unauthenticated => StatusCode::UNAUTHORIZED,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Unimplemented => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, s.message().to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn req<T>(t: T) -> tonic::Request<T> {
    tonic::Request::new(t)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    #[serde(default)]
    stale: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TaskQuery {
    #[serde(default)]
    stale: bool,
    state: Option<String>,
    node: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<u64>,
    /// The bearer token, for browsers' `EventSource` (which cannot send headers); checked by
    /// [`authorize`].
    #[serde(default, rename = "token")]
    _token: Option<String>,
    /// `false`: the events kept now, then the stream ends. Default: keep streaming.
    follow: Option<bool>,
}

/// `POST /v1/vms`: the spec, with the CLI's defaults (`vm create`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVmBody {
    name: String,
    #[serde(default = "one")]
    vcpus: u32,
    #[serde(default = "default_memory")]
    memory_mb: u64,
    #[serde(default)]
    disk_gb: u64,
    kernel: Option<String>,
    initrd: Option<String>,
    cmdline: Option<String>,
    disk_image: Option<String>,
    #[serde(default)]
    disk_readonly: bool,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
    anti_affinity: Option<String>,
    node: Option<u64>,
    #[serde(default = "default_restart")]
    restart: String,
    #[serde(default = "yes")]
    start: bool,
    strategy: Option<String>,
    #[serde(default)]
    constraints: std::collections::HashMap<String, String>,
    #[serde(default)]
    features: Vec<String>,
    priority: Option<u32>,
    #[serde(default)]
    preempt: bool,
    /// Where it would go and why, changing nothing (`vm create --dry-run`).
    #[serde(default)]
    dry_run: bool,
    /// Retries with the same id are applied once.
    #[serde(default)]
    request_id: String,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_memory() -> u64 {
    256
}
fn default_restart() -> String {
    "on-failure".into()
}

/// `POST /v1/tasks`: as `task submit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitTaskBody {
    command: Vec<String>,
    #[serde(default)]
    env: std::collections::HashMap<String, String>,
    #[serde(default = "one")]
    cpus: u32,
    #[serde(default = "default_task_memory")]
    memory_mb: u64,
    #[serde(default = "default_task_timeout")]
    timeout_secs: u64,
    node: Option<u64>,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default)]
    request_id: String,
}

fn default_task_memory() -> u64 {
    64
}
fn default_task_timeout() -> u64 {
    blixard_core::task::DEFAULT_TASK_TIMEOUT_SECS
}
fn default_attempts() -> u32 {
    blixard_core::task::DEFAULT_MAX_ATTEMPTS
}

/// A JSON body, with a one-line error when it does not parse.
struct Body<T>(T);

#[axum::async_trait]
impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(r: Request, s: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(r, s).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("bad request body: {}", e.body_text()),
            )),
        }
    }
}

/// Query strings with a one-line error.
struct Q<T>(T);

#[axum::async_trait]
impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        p: &mut axum::http::request::Parts,
        s: &S,
    ) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(p, s).await {
            Ok(Query(v)) => Ok(Q(v)),
            Err(e) => Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("bad query: {}", e.body_text()),
            )),
        }
    }
}

/// The routes, with the authorisation and metrics middleware around all of them.
fn router(node: Arc<Node>) -> Router {
    let state = Http {
        api: Api { node: node.clone() },
        node,
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/nodes", get(nodes))
        .route("/v1/vms", get(vms).post(create_vm))
        .route("/v1/vms/:name", get(vm).delete(delete_vm))
        .route("/v1/vms/:name/start", post(start_vm))
        .route("/v1/vms/:name/stop", post(stop_vm))
        .route("/v1/tasks", get(tasks).post(submit_task))
        .route("/v1/tasks/:id", get(task))
        .route("/v1/tasks/:id/cancel", post(cancel_task))
        .route("/v1/events", get(events))
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(|| ui("index.html")))
        .route("/ui/:file", get(|Path(f): Path<String>| ui_file(f)))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such route: see /v1/ and /ui/".into(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Serves HTTP on `listener` until the node stops.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let stop = node.clone();
    let app = router(node.clone());
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Every request passes here first: `Authorization: Bearer TOKEN` checked against the
/// replicated records and the route's role (`blixard_core::auth::http_access`); 401 without a
/// valid token, 403 naming the role needed. An authorised request runs on behalf of the token's
/// name (recorded as `created_by` and in the events).
async fn authorize(State(s): State<Http>, r: Request, next: Next) -> Response {
    let route = r
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| r.uri().path().to_string());
    let mut bearer = r
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if bearer.is_none() && route == "/v1/events" {
        // `EventSource` cannot send headers: the dashboard passes its token in the query.
        bearer = r.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(|t| format!("Bearer {t}"))
        });
    }
    match crate::authz::check_http(&s.node, bearer.as_deref(), r.method().as_str(), &route) {
        Ok(caller) => crate::authz::scope(caller, next.run(r)).await,
        Err(crate::authz::Refusal::Unauthenticated(m)) => {
            let mut resp = ApiError(StatusCode::UNAUTHORIZED, m).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            resp
        }
        Err(crate::authz::Refusal::Forbidden(m)) => {
            ApiError(StatusCode::FORBIDDEN, m).into_response()
        }
    }
}

/// Counts requests by route template, method and code, and times them.
async fn observe(State(s): State<Http>, r: Request, next: Next) -> Response {
    let route = r
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = r.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(r).await;
    let m = &s.node.metrics;
    m.http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            route: route.clone(),
            method,
            code: resp.status().as_u16(),
        })
        .inc();
    m.http_seconds
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Ready: a member that knows its leader and has applied what it knows to be committed.
async fn readyz(State(s): State<Http>) -> Response {
    let m = s.node.metrics();
    let applied = m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
    let committed = m.local_committed.as_ref().map(|l| l.index()).unwrap_or(0);
    let member = m
        .membership_config
        .membership()
        .nodes()
        .any(|(id, _)| *id == s.node.id);
    let why = match (member, m.current_leader, applied >= committed) {
        (false, _, _) => Some("not a member of the cluster".to_string()),
        (_, None, _) => Some("no known leader".to_string()),
        (_, _, false) => Some(format!(
            "applied index {applied} behind committed {committed}"
        )),
        _ => None,
    };
    let body = json!({"ready": why.is_none(), "reason": why, "leader_id": m.current_leader, "applied_index": applied, "committed_index": committed});
    let code = if why.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<Http>) -> Response {
    let body = s.node.metrics.render(&s.node);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn cluster(State(s): State<Http>, Q(q): Q<ReadQuery>) -> ApiResult {
    let r = s
        .api
        .cluster_status(req(pb::ReadOptions { stale: q.stale }))
        .await?
        .into_inner();
    Ok(Json(shapes::status_json(&r)))
}

async fn nodes(State(s): State<Http>, Q(q): Q<ReadQuery>) -> ApiResult {
    let r = s
        .api
        .list_nodes(req(pb::ReadOptions { stale: q.stale }))
        .await?
        .into_inner();
    Ok(Json(Value::Array(
        r.nodes.iter().map(shapes::node_json).collect(),
    )))
}

async fn vms(State(s): State<Http>, Q(q): Q<ReadQuery>) -> ApiResult {
    // Page by page, as the CLI does: any number of VMs can be listed.
    let mut vms = Vec::new();
    let mut after = String::new();
    loop {
        let page = pb::PageRequest {
            stale: q.stale,
            limit: 0,
            after: after.clone(),
        };
        let r = s.api.list_vms_page(req(page)).await?.into_inner();
        vms.extend(r.vms);
        if r.next.is_empty() {
            break;
        }
        after = r.next;
    }
    Ok(Json(Value::Array(
        vms.iter().map(shapes::vm_json).collect(),
    )))
}

async fn vm(State(s): State<Http>, Path(name): Path<String>, Q(q): Q<ReadQuery>) -> ApiResult {
    let r = s
        .api
        .get_vm(req(pb::GetVmRequest {
            name,
            stale: q.stale,
        }))
        .await?
        .into_inner();
    Ok(Json(shapes::vm_json(&r)))
}

async fn create_vm(
    State(s): State<Http>,
    Body(b): Body<CreateVmBody>,
) -> Result<Response, ApiError> {
    let spec = pb::VmSpec {
        name: b.name,
        vcpus: b.vcpus,
        memory_mb: b.memory_mb,
        disk_gb: b.disk_gb,
        kernel: b.kernel,
        initrd: b.initrd,
        cmdline: b.cmdline,
        labels: b.labels,
        anti_affinity: b.anti_affinity,
        node: b.node,
        restart: b.restart,
        start: b.start,
        strategy: b.strategy.unwrap_or_default(),
        constraints: b.constraints,
        features: b.features,
        priority: b.priority,
        preempt: b.preempt,
        disk_image: b.disk_image,
        disk_readonly: b.disk_readonly,
        network: b.network,
        ip: b.ip,
    };
    let r = pb::CreateVmRequest {
        spec: Some(spec),
        request_id: b.request_id,
    };
    if b.dry_run {
        let p = s.api.explain_placement(req(r)).await?.into_inner();
        return Ok(Json(shapes::explain_json(&p)).into_response());
    }
    let vm = s.api.create_vm(req(r)).await?.into_inner();
    Ok((StatusCode::CREATED, Json(shapes::vm_json(&vm))).into_response())
}

async fn set_desired(s: Http, name: String, desired: &str) -> ApiResult {
    let r = pb::SetVmDesiredRequest {
        name,
        desired: desired.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let vm = s.api.set_vm_desired(req(r)).await?.into_inner();
    Ok(Json(shapes::vm_json(&vm)))
}

async fn start_vm(State(s): State<Http>, Path(name): Path<String>) -> ApiResult {
    set_desired(s, name, "running").await
}

async fn stop_vm(State(s): State<Http>, Path(name): Path<String>) -> ApiResult {
    set_desired(s, name, "stopped").await
}

async fn delete_vm(State(s): State<Http>, Path(name): Path<String>) -> ApiResult {
    let r = pb::VmRef {
        name: name.clone(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    s.api.delete_vm(req(r)).await?;
    Ok(Json(
        json!({"ok": true, "message": format!("VM {name} deleted")}),
    ))
}

async fn tasks(State(s): State<Http>, Q(q): Q<TaskQuery>) -> ApiResult {
    // Page by page, as the CLI does.
    let mut tasks = Vec::new();
    let mut after = String::new();
    loop {
        let r = pb::ListTasksRequest {
            stale: q.stale,
            state: q.state.clone().unwrap_or_default(),
            node: q.node,
            limit: 0,
            after: after.clone(),
        };
        let r = s.api.list_tasks(req(r)).await?.into_inner();
        tasks.extend(r.tasks);
        if r.next.is_empty() {
            break;
        }
        after = r.next;
    }
    Ok(Json(Value::Array(
        tasks.iter().map(shapes::task_json).collect(),
    )))
}

async fn task(State(s): State<Http>, Path(id): Path<String>, Q(q): Q<ReadQuery>) -> ApiResult {
    let t = s
        .api
        .get_task(req(pb::GetTaskRequest { id, stale: q.stale }))
        .await?
        .into_inner();
    Ok(Json(shapes::task_json(&t)))
}

async fn submit_task(
    State(s): State<Http>,
    Body(b): Body<SubmitTaskBody>,
) -> Result<Response, ApiError> {
    let spec = pb::TaskSpec {
        command: b.command,
        env: b.env,
        cpus: b.cpus,
        memory_mb: b.memory_mb,
        timeout_secs: b.timeout_secs,
        node: b.node,
        max_attempts: b.max_attempts,
    };
    let t = s
        .api
        .submit_task(req(pb::SubmitTaskRequest {
            spec: Some(spec),
            request_id: b.request_id,
        }))
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(shapes::task_json(&t))).into_response())
}

async fn cancel_task(State(s): State<Http>, Path(id): Path<String>) -> ApiResult {
    let r = pb::TaskRef {
        id,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let t = s.api.cancel_task(req(r)).await?.into_inner();
    Ok(Json(shapes::task_json(&t)))
}

/// `GET /v1/events?since=I`: server-sent events, one JSON event per `data:` line, with the
/// log index as the SSE `id` (a reconnecting browser sends it back as `Last-Event-ID`).
async fn events(
    State(s): State<Http>,
    headers: axum::http::HeaderMap,
    Q(q): Q<EventsQuery>,
) -> Response {
    use tokio_stream::StreamExt;
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let since = q.since.or(last_id);
    let rx = match crate::events::follow(s.node.clone(), since, q.follow.unwrap_or(true)) {
        Ok(rx) => rx,
        // Too many streams (429) or stopping (503).
        Err(e @ crate::streams::StreamRefused::Full(_)) => {
            return ApiError(StatusCode::TOO_MANY_REQUESTS, e.to_string()).into_response()
        }
        Err(e) => return ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|e| {
        let data = serde_json::to_string(&e)
            .unwrap_or_else(|err| json!({"error": err.to_string()}).to_string());
        Ok::<_, std::convert::Infallible>(
            SseEvent::default()
                .id(e.index.to_string())
                .event(e.kind.type_name())
                .data(data),
        )
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

const UI_INDEX: &str = include_str!("ui/index.html");
const UI_JS: &str = include_str!("ui/app.js");
const UI_CSS: &str = include_str!("ui/style.css");

async fn ui(file: &str) -> Response {
    let (ty, body) = match file {
        "index.html" => ("text/html; charset=utf-8", UI_INDEX),
        "app.js" => ("text/javascript; charset=utf-8", UI_JS),
        "style.css" => ("text/css; charset=utf-8", UI_CSS),
        _ => {
            return ApiError(StatusCode::NOT_FOUND, format!("no such file: /ui/{file}"))
                .into_response()
        }
    };
    (
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ui_file(f: String) -> Response {
    ui(&f).await
}
