//! `/v1/` routes for the cluster (status, settings, membership), its nodes (list, drain) and
//! networks: each calls the gRPC service method the CLI's command calls.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use blixard_api::json as shapes;
use blixard_api::pb;
use blixard_api::pb::blixard_server::Blixard;
use blixard_api::pb::networks_server::Networks;
use serde_json::{json, Value};

use super::bodies::*;
use super::{req, ApiError, ApiResult, Body, Http, Q};

/// Leader, term, members, indexes (`cluster status --json`).
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster", params(ReadQuery),
    responses((status = 200, description = "The cluster", body = Value),
        (status = 503, description = "No quorum / no leader", body = ErrorBody)))]
pub(super) async fn cluster(State(s): State<Http>, Q(q): Q<ReadQuery>) -> ApiResult {
    let r = s
        .api
        .cluster_status(req(pb::ReadOptions { stale: q.stale }))
        .await?
        .into_inner();
    Ok(Json(shapes::status_json(&r)))
}

/// The cluster settings (`cluster settings --json`).
#[utoipa::path(get, path = "/v1/cluster/settings", tag = "cluster", params(ReadQuery),
    responses((status = 200, description = "The settings", body = Value)))]
pub(super) async fn settings(State(s): State<Http>, Q(q): Q<ReadQuery>) -> ApiResult {
    let r = s
        .api
        .cluster_status(req(pb::ReadOptions { stale: q.stale }))
        .await?
        .into_inner();
    let x = r.scheduler.unwrap_or_default();
    Ok(Json(shapes::settings_json(&x)))
}

/// Changes some settings (`cluster settings --strategy ... --lease ...`); fields left out keep
/// their values.
#[utoipa::path(post, path = "/v1/cluster/settings", tag = "cluster", request_body = SettingsBody,
    responses((status = 200, description = "The settings now", body = Value),
        (status = 400, description = "Bad value", body = ErrorBody)))]
pub(super) async fn set_settings(State(s): State<Http>, Body(b): Body<SettingsBody>) -> ApiResult {
    let r = pb::SchedulerSettings {
        strategy: b.strategy.unwrap_or_default(),
        vcpu_overcommit_pct: b.vcpu_overcommit_pct.unwrap_or(0),
        request_id: b.request_id,
        lease_ms: b.lease_ms.unwrap_or(0),
        grace_ms: b.grace_ms.unwrap_or(0),
        heartbeat_ms: b.heartbeat_ms.unwrap_or(0),
    };
    let x = s.api.set_scheduler_settings(req(r)).await?.into_inner();
    Ok(Json(shapes::settings_json(&x)))
}

/// Removes a member (`cluster remove ID [--force]`). Removing the leader, or a voter when
/// fewer than three would remain, needs `force=true`; without it: 409, nothing changes.
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "Node id"), ForceQuery),
    responses((status = 200, description = "Removed", body = Value),
        (status = 404, description = "Not a member", body = ErrorBody),
        (status = 409, description = "Needs force=true (the reason says why)", body = ErrorBody)))]
pub(super) async fn remove_member(
    State(s): State<Http>,
    Path(id): Path<u64>,
    Q(q): Q<ForceQuery>,
) -> ApiResult {
    let r = pb::RemoveMemberRequest {
        node_id: id,
        force: q.force,
    };
    s.api.remove_member(req(r)).await?;
    Ok(Json(
        json!({"ok": true, "message": format!("node {id} removed")}),
    ))
}

/// The node serving this request leaves the cluster and stops (`cluster leave [--force]`).
/// Leaving fewer than three voters needs `force=true`; without it: 409, nothing changes.
#[utoipa::path(post, path = "/v1/cluster/leave", tag = "cluster", params(ForceQuery),
    responses((status = 200, description = "Left; the node stops", body = Value),
        (status = 409, description = "Needs force=true (the reason says why)", body = ErrorBody)))]
pub(super) async fn leave(State(s): State<Http>, Q(q): Q<ForceQuery>) -> ApiResult {
    s.api
        .leave(req(pb::LeaveRequest { force: q.force }))
        .await?;
    let id = s.node.id;
    Ok(Json(
        json!({"ok": true, "message": format!("node {id} left the cluster")}),
    ))
}

/// The nodes with capacity, allocation and state (`node list --json`).
#[utoipa::path(get, path = "/v1/nodes", tag = "cluster", params(ReadQuery),
    responses((status = 200, description = "The nodes", body = [Value])))]
pub(super) async fn nodes(State(s): State<Http>, Q(q): Q<ReadQuery>) -> ApiResult {
    let r = s
        .api
        .list_nodes(req(pb::ReadOptions { stale: q.stale }))
        .await?
        .into_inner();
    Ok(Json(Value::Array(
        r.nodes.iter().map(shapes::node_json).collect(),
    )))
}

async fn set_node_state(s: Http, id: u64, state: &str) -> ApiResult {
    let r = pb::SetNodeStateRequest {
        node_id: id,
        state: state.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let n = s.api.set_node_state(req(r)).await?.into_inner();
    Ok(Json(shapes::node_json(&n)))
}

/// Drains a node (`node drain ID --no-wait`): its VMs move elsewhere; watch `/v1/vms` or the
/// events for them to leave.
#[utoipa::path(post, path = "/v1/nodes/{id}/drain", tag = "cluster",
    params(("id" = u64, Path, description = "Node id")),
    responses((status = 200, description = "The node", body = Value),
        (status = 404, description = "No such node", body = ErrorBody)))]
pub(super) async fn drain(State(s): State<Http>, Path(id): Path<u64>) -> ApiResult {
    set_node_state(s, id, "draining").await
}

/// Takes a node back (`node undrain ID`).
#[utoipa::path(post, path = "/v1/nodes/{id}/undrain", tag = "cluster",
    params(("id" = u64, Path, description = "Node id")),
    responses((status = 200, description = "The node", body = Value),
        (status = 404, description = "No such node", body = ErrorBody)))]
pub(super) async fn undrain(State(s): State<Http>, Path(id): Path<u64>) -> ApiResult {
    set_node_state(s, id, "up").await
}

/// The networks (`network list --json`).
#[utoipa::path(get, path = "/v1/networks", tag = "networks", params(ReadQuery),
    responses((status = 200, description = "The networks", body = [Value])))]
pub(super) async fn networks(State(s): State<Http>, Q(q): Q<ReadQuery>) -> ApiResult {
    let r = s
        .api
        .list_networks(req(pb::ReadOptions { stale: q.stale }))
        .await?
        .into_inner();
    Ok(Json(Value::Array(
        r.networks.iter().map(shapes::network_json).collect(),
    )))
}

/// Creates a network (`network create NAME --cidr CIDR`).
#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = CreateNetworkBody,
    responses((status = 201, description = "The network", body = Value),
        (status = 400, description = "Bad name or CIDR", body = ErrorBody),
        (status = 409, description = "Exists, or overlaps another", body = ErrorBody)))]
pub(super) async fn create_network(
    State(s): State<Http>,
    Body(b): Body<CreateNetworkBody>,
) -> Result<Response, ApiError> {
    let r = pb::CreateNetworkRequest {
        name: b.name,
        cidr: b.cidr,
        request_id: b.request_id,
    };
    let n = s.api.create_network(req(r)).await?.into_inner();
    Ok((StatusCode::CREATED, Json(shapes::network_json(&n))).into_response())
}

/// Deletes a network (`network delete NAME`); refused while a VM uses it.
#[utoipa::path(delete, path = "/v1/networks/{name}", tag = "networks",
    params(("name" = String, Path, description = "Network name")),
    responses((status = 200, description = "Deleted", body = Value),
        (status = 404, description = "No such network", body = ErrorBody),
        (status = 409, description = "A VM uses it", body = ErrorBody)))]
pub(super) async fn delete_network(State(s): State<Http>, Path(name): Path<String>) -> ApiResult {
    let r = pb::NetworkRef {
        name: name.clone(),
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    s.api.delete_network(req(r)).await?;
    Ok(Json(
        json!({"ok": true, "message": format!("network {name} deleted")}),
    ))
}
