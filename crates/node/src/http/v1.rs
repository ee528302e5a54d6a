//! The JSON API under `/v1/`: VMs, tasks and the event stream here, the cluster, nodes and
//! networks in [`super::cluster`]. Every handler calls the gRPC service ([`crate::service::Api`],
//! the methods the CLI reaches) and shapes the answer with `blixard_api::json` (the CLI's
//! `--json` shapes).
//!
//! The routes are declared once, by the `#[utoipa::path]` of each handler: [`api`] builds both
//! the router and the OpenAPI document (`GET /v1/openapi.json`) from them, so the document
//! cannot miss a route the router serves.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use blixard_api::json as shapes;
use blixard_api::pb;
use blixard_api::pb::blixard_server::Blixard;
use serde_json::{json, Value};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::bodies::*;
use super::{cluster, collect_logs, req, ApiError, ApiResult, Body, Http, Q};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "blixard",
        description = "The JSON API of a blixard node (`blixard node --http`). Answers use the CLI's `--json` shapes; errors are `{\"error\": MESSAGE}`. Every route but the health probes needs `Authorization: Bearer TOKEN` (`blixard auth token`)."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "cluster", description = "Membership, settings, nodes"),
        (name = "vms", description = "Virtual machines"),
        (name = "tasks", description = "One-off commands on the nodes"),
        (name = "networks", description = "VM networks"),
        (name = "events", description = "The event stream"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http as HttpScheme, HttpAuthScheme, SecurityScheme};
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpScheme::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The `/v1/` routes and their OpenAPI document, from one list.
pub(super) fn api() -> (Router<Http>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi_json))
        .routes(routes!(cluster::cluster))
        .routes(routes!(cluster::settings, cluster::set_settings))
        .routes(routes!(cluster::remove_member))
        .routes(routes!(cluster::leave))
        .routes(routes!(cluster::nodes))
        .routes(routes!(cluster::drain))
        .routes(routes!(cluster::undrain))
        .routes(routes!(cluster::networks, cluster::create_network))
        .routes(routes!(cluster::delete_network))
        .routes(routes!(vms, create_vm))
        .routes(routes!(vm, delete_vm))
        .routes(routes!(start_vm))
        .routes(routes!(stop_vm))
        .routes(routes!(vm_logs))
        .routes(routes!(tasks, submit_task))
        .routes(routes!(task))
        .routes(routes!(cancel_task))
        .routes(routes!(task_logs))
        .routes(routes!(events))
        .split_for_parts()
}

/// The OpenAPI document, made once.
static DOC: LazyLock<String> = LazyLock::new(|| {
    api()
        .1
        .to_pretty_json()
        .unwrap_or_else(|e| json!({"error": e.to_string()}).to_string())
});

/// The OpenAPI 3 document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "cluster",
    responses((status = 200, description = "OpenAPI 3 document", body = Value)))]
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOC.as_str(),
    )
        .into_response()
}

/// Every VM (`vm list --json`).
#[utoipa::path(get, path = "/v1/vms", tag = "vms", params(ReadQuery),
    responses((status = 200, description = "The VMs", body = [Value])))]
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

/// One VM (`vm status NAME --json`).
#[utoipa::path(get, path = "/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ReadQuery),
    responses((status = 200, description = "The VM", body = Value),
        (status = 404, description = "No such VM", body = ErrorBody)))]
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

/// Creates a VM (`vm create`), or with `dry_run` explains where it would go.
#[utoipa::path(post, path = "/v1/vms", tag = "vms", request_body = CreateVmBody,
    responses((status = 201, description = "The VM created", body = Value),
        (status = 200, description = "dry_run: the placement explained", body = Value),
        (status = 400, description = "Bad spec", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
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

/// Desired state `running` (`vm start`).
#[utoipa::path(post, path = "/v1/vms/{name}/start", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 200, description = "The VM", body = Value),
        (status = 404, description = "No such VM", body = ErrorBody)))]
async fn start_vm(State(s): State<Http>, Path(name): Path<String>) -> ApiResult {
    set_desired(s, name, "running").await
}

/// Desired state `stopped` (`vm stop`).
#[utoipa::path(post, path = "/v1/vms/{name}/stop", tag = "vms",
    params(("name" = String, Path, description = "VM name")),
    responses((status = 200, description = "The VM", body = Value),
        (status = 404, description = "No such VM", body = ErrorBody)))]
async fn stop_vm(State(s): State<Http>, Path(name): Path<String>) -> ApiResult {
    set_desired(s, name, "stopped").await
}

/// Deletes a VM (`vm delete [--force]`). A VM whose process runs is deleted only with
/// `force=true`; without it the answer is 409 and nothing changes.
#[utoipa::path(delete, path = "/v1/vms/{name}", tag = "vms",
    params(("name" = String, Path, description = "VM name"), ForceQuery),
    responses((status = 200, description = "Deleted", body = Value),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 409, description = "It runs: stop it first or pass force=true", body = ErrorBody)))]
async fn delete_vm(
    State(s): State<Http>,
    Path(name): Path<String>,
    Q(q): Q<ForceQuery>,
) -> ApiResult {
    let r = pb::VmRef {
        name: name.clone(),
        request_id: uuid::Uuid::new_v4().to_string(),
        force: q.force,
    };
    s.api.delete_vm(req(r)).await?;
    Ok(Json(
        json!({"ok": true, "message": format!("VM {name} deleted")}),
    ))
}

/// The VM's serial console so far (`vm logs NAME --json`): `{"name", "console"}`.
#[utoipa::path(get, path = "/v1/vms/{name}/logs", tag = "vms",
    params(("name" = String, Path, description = "VM name"), VmLogsQuery),
    responses((status = 200, description = "The console text", body = Value),
        (status = 404, description = "No such VM", body = ErrorBody)))]
async fn vm_logs(
    State(s): State<Http>,
    Path(name): Path<String>,
    Q(q): Q<VmLogsQuery>,
) -> ApiResult {
    let r = pb::VmLogsRequest {
        name: name.clone(),
        follow: false,
        previous: q.previous,
    };
    let stream = s.api.vm_logs(req(r)).await?.into_inner();
    let text = collect_logs(stream).await?;
    Ok(Json(json!({"name": name, "console": text})))
}

/// Every task (`task list --json`).
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, description = "The tasks", body = [Value])))]
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

/// One task (`task status ID --json`).
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "Task id (or a unique prefix)"), ReadQuery),
    responses((status = 200, description = "The task", body = Value),
        (status = 404, description = "No such task", body = ErrorBody)))]
async fn task(State(s): State<Http>, Path(id): Path<String>, Q(q): Q<ReadQuery>) -> ApiResult {
    let t = s
        .api
        .get_task(req(pb::GetTaskRequest { id, stale: q.stale }))
        .await?
        .into_inner();
    Ok(Json(shapes::task_json(&t)))
}

/// Submits a task (`task submit`).
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks", request_body = SubmitTaskBody,
    responses((status = 201, description = "The task", body = Value),
        (status = 400, description = "Bad spec", body = ErrorBody)))]
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

/// Cancels a task (`task cancel`).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, description = "The task", body = Value),
        (status = 404, description = "No such task", body = ErrorBody)))]
async fn cancel_task(State(s): State<Http>, Path(id): Path<String>) -> ApiResult {
    let r = pb::TaskRef {
        id,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let t = s.api.cancel_task(req(r)).await?.into_inner();
    Ok(Json(shapes::task_json(&t)))
}

/// The task's output (`task logs ID --json`): `{"id", "output"}`.
#[utoipa::path(get, path = "/v1/tasks/{id}/logs", tag = "tasks",
    params(("id" = String, Path, description = "Task id")),
    responses((status = 200, description = "The output text", body = Value),
        (status = 404, description = "No such task", body = ErrorBody)))]
async fn task_logs(State(s): State<Http>, Path(id): Path<String>) -> ApiResult {
    let r = pb::TaskRef {
        id: id.clone(),
        request_id: String::new(),
    };
    let stream = s.api.task_logs(req(r)).await?.into_inner();
    let text = collect_logs(stream).await?;
    Ok(Json(json!({"id": id, "output": text})))
}

/// Server-sent events, one JSON event per `data:` line, with the log index as the SSE `id`
/// (a reconnecting browser sends it back as `Last-Event-ID`).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of JSON events", content_type = "text/event-stream", body = String),
        (status = 429, description = "The node serves too many streams", body = ErrorBody),
        (status = 503, description = "The node is stopping", body = ErrorBody)))]
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
