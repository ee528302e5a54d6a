//! The HTTP surface of a node (`blixard node --http HOST:PORT`), on axum, on the node's tokio
//! runtime: `/healthz`, `/readyz`, `/metrics`, the JSON API under `/v1/` ([`v1`], [`cluster`];
//! its OpenAPI document at `/v1/openapi.json`), the event stream `/v1/events` (server-sent
//! events) and the embedded dashboard under `/ui/`. Served over HTTPS only ([`serve`]): the
//! cluster is always secure, and bearer tokens must not travel in cleartext.
//!
//! One code path: every `/v1/` handler calls the gRPC service ([`crate::service::Api`], the
//! same methods the CLI reaches over gRPC) and shapes the reply with `blixard_api::json`, the
//! CLI's `--json` shapes. No rule is implemented twice (the `--force` guards included:
//! `blixard_core::guards`, checked by the service).
//!
//! Authorisation: [`authorize`] is the one middleware every route passes through
//! (`Authorization: Bearer TOKEN`, roles from `blixard_core::auth::http_access`).

mod bodies;
mod cluster;
mod serve;
mod v1;

pub use serve::serve;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use blixard_api::pb;
use serde_json::{json, Value};

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
    let (api, _doc) = v1::api();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(|| ui("index.html")))
        .route("/ui/:file", get(|Path(f): Path<String>| ui_file(f)))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such route: see /v1/openapi.json and /ui/".into(),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// A log stream of the service (VM console, task output) read to its end, as text.
async fn collect_logs<S>(mut stream: S) -> Result<String, ApiError>
where
    S: tokio_stream::Stream<Item = Result<pb::LogChunk, tonic::Status>> + Unpin,
{
    use tokio_stream::StreamExt;
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?.data);
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
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
