//! The JSON shapes of the CLI contract (`--json`), built from the gRPC replies. Shared by the
//! CLI and the HTTP API (`/v1/...`) so both answer with the same documents.

use crate::pb;
use serde_json::{json, Value};

pub fn resources(r: &Option<pb::Resources>) -> Value {
    let r = (*r).unwrap_or_default();
    json!({"vcpus": r.vcpus, "memory_mb": r.memory_mb, "disk_gb": r.disk_gb})
}

pub fn node_json(n: &pb::NodeInfo) -> Value {
    json!({
        "id": n.id,
        "addr": n.addr,
        "state": n.state,
        "capacity": resources(&n.capacity),
        "allocated": resources(&n.allocated),
        "vms": n.vms,
        "kvm": n.kvm,
        "labels": n.labels,
        "last_heartbeat_ms_ago": n.last_heartbeat_ms_ago,
        "heartbeat_observer": n.heartbeat_observer,
    })
}

pub fn vm_json(v: &pb::VmInfo) -> Value {
    json!({
        "name": v.name,
        "node_id": v.node_id,
        "desired": v.desired,
        "state": v.state,
        "vcpus": v.vcpus,
        "memory_mb": v.memory_mb,
        "disk_gb": v.disk_gb,
        "epoch": v.epoch,
        "restart": v.restart,
        "restarts": v.restarts,
        "priority": v.priority,
        "placement": v.placement,
        "reason": v.reason,
        "labels": v.labels,
        "anti_affinity": v.anti_affinity,
        "network": v.network,
        "ip": v.ip,
        "created_by": v.created_by,
    })
}

pub fn network_json(n: &pb::NetworkInfo) -> Value {
    json!({
        "name": n.name,
        "cidr": n.cidr,
        "vms": n.vms,
        "vni": n.vni,
        "nodes": n.nodes.iter().map(|(id, ip)| (id.to_string(), ip.clone())).collect::<std::collections::BTreeMap<_, _>>(),
    })
}

pub fn task_json(t: &pb::TaskInfo) -> Value {
    json!({
        "id": t.id,
        "node_id": t.node_id,
        "state": t.state,
        "exit_code": t.exit_code,
        "duration_ms": t.duration_ms,
        "attempt": t.attempt,
        "max_attempts": t.max_attempts,
        "epoch": t.epoch,
        "reason": t.reason,
        "command": t.command,
        "env": t.env_names,
        "cpus": t.cpus,
        "memory_mb": t.memory_mb,
        "timeout_secs": t.timeout_secs,
        "pinned_node": t.pinned_node,
        "cancel_requested": t.cancel_requested,
        "submitted_ms": t.submitted_ms,
        "started_ms": t.started_ms,
        "finished_ms": t.finished_ms,
        "created_by": t.created_by,
    })
}

pub fn explain_json(p: &pb::PlacementExplanation) -> Value {
    json!({
        "node_id": p.node,
        "strategy": p.strategy,
        "summary": p.summary,
        "preempted": p.preempted,
        "verdicts": p.verdicts.iter().map(|v| json!({"node": v.node, "eligible": v.eligible, "score": v.score, "reason": v.reason})).collect::<Vec<_>>(),
    })
}

pub fn status_json(s: &pb::ClusterStatusReply) -> Value {
    json!({
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "term": s.term,
        "applied_index": s.applied_index,
        "members": s.members.iter().map(|m| json!({"id": m.id, "addr": m.addr, "role": m.role})).collect::<Vec<_>>(),
        "cluster_id": s.cluster_id,
        "state_digest": s.state_digest,
        "committed_index": s.committed_index,
        "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "scheduler": s.scheduler.as_ref().map(settings_json),
    })
}

/// The cluster settings (scheduler and lease).
pub fn settings_json(x: &pb::SchedulerSettings) -> Value {
    json!({"strategy": x.strategy, "vcpu_overcommit_pct": x.vcpu_overcommit_pct,
           "lease_ms": x.lease_ms, "grace_ms": x.grace_ms, "heartbeat_ms": x.heartbeat_ms})
}

/// One credential or bearer token record (`auth list --json`).
pub fn auth_entry_json(e: &pb::AuthEntry) -> Value {
    json!({
        "kind": e.kind,
        "id": e.id,
        "name": e.name,
        "role": e.role,
        "created_ms": e.created_ms,
        "expires_at_ms": e.expires_at_ms,
        "created_by": e.created_by,
        "status": e.status,
    })
}
