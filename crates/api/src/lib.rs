//! The gRPC contract: generated protobuf types and services, and the conversions between them
//! and `blixard-core` types. This is the only crate that knows both.

use std::collections::BTreeMap;

use blixard_core as core;

/// Generated protobuf code.
pub mod json;

pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("blixard.v1");
}

pub use pb::auth_client::AuthClient;
pub use pb::blixard_client::BlixardClient;
pub use pb::enroll_client::EnrollClient;
pub use pb::networks_client::NetworksClient;
pub use pb::raft_peer_client::RaftPeerClient;

/// Metadata header carrying the cluster id on peer requests.
pub const CLUSTER_HEADER: &str = "x-blixard-cluster";
/// Metadata header set on a request forwarded to the leader, so it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-blixard-forwarded";
/// Largest encoded log entry (a request as it travels between peers). Proposals above it are
/// refused before they reach the log, so that one entry always fits in a peer message.
/// Everything a client can ask for is far below it: a VM spec's strings total about 25 KiB and
/// a task's 32 KiB (see `core::spec` and `core::task`), at most 6 times that when every byte
/// needs a JSON escape.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Snapshot data bytes per `InstallSnapshot` chunk.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest snapshot a follower reassembles. The state's byte budgets (`core::budget`: VM specs,
/// task specs and the de-duplication table) total 112 MiB; records, workers, networks, tokens
/// and the JSON encoding come on top; this is more than twice the budgets, and the size one
/// snapshot message could have before snapshots were chunked. A snapshot declared or streamed
/// above it is refused; a node receives one snapshot at a time.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;
/// Largest message a peer may send or a node accepts on the peer service. The largest
/// legitimate ones are an `AppendEntries` carrying a single entry of `MAX_ENTRY_BYTES` with
/// its framing (a few hundred bytes: vote, previous and committed log ids), a snapshot chunk
/// (`SNAPSHOT_CHUNK` and its offset) and a snapshot header (the membership: about 300 bytes per
/// member). The sender packs entries into `AppendEntries` batches that stay below this (see
/// `blixard_transport::network`), so twice the largest entry leaves room for all three.
pub const MAX_PEER_MESSAGE: usize = 2 * MAX_ENTRY_BYTES;
/// Largest reply the client service sends (unchanged from before the peer limit was lowered;
/// the client limits are their own setting).
pub const MAX_CLIENT_REPLY: usize = 256 * 1024 * 1024;
/// Largest message a client may send.
pub const MAX_CLIENT_MESSAGE: usize = 1024 * 1024;

impl From<core::Resources> for pb::Resources {
    fn from(r: core::Resources) -> Self {
        pb::Resources {
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            disk_gb: r.disk_gb,
        }
    }
}

impl From<pb::Resources> for core::Resources {
    fn from(r: pb::Resources) -> Self {
        core::Resources {
            vcpus: r.vcpus,
            memory_mb: r.memory_mb,
            disk_gb: r.disk_gb,
        }
    }
}

impl From<&core::Worker> for pb::NodeInfo {
    fn from(w: &core::Worker) -> Self {
        pb::NodeInfo {
            id: w.id,
            addr: w.addr.clone(),
            state: w.state.as_str().to_string(),
            capacity: Some(w.capacity.into()),
            allocated: Some(w.allocated.into()),
            vms: w.vms,
            kvm: w.kvm,
            labels: w.labels.clone().into_iter().collect(),
            // Local knowledge, filled in by the node that answers (see `node list`).
            last_heartbeat_ms_ago: None,
            heartbeat_observer: None,
        }
    }
}

impl From<&core::VmRecord> for pb::VmInfo {
    fn from(v: &core::VmRecord) -> Self {
        pb::VmInfo {
            name: v.spec.name.clone(),
            node_id: v.node_id,
            desired: v.desired.as_str().to_string(),
            state: v.state.as_str().to_string(),
            vcpus: v.spec.vcpus,
            memory_mb: v.spec.memory_mb,
            epoch: v.epoch,
            disk_gb: v.spec.disk_gb,
            reason: v.reason.clone(),
            restart: v.spec.restart.as_str().to_string(),
            labels: v.spec.labels.clone().into_iter().collect(),
            anti_affinity: v.spec.anti_affinity.clone(),
            created_ms: v.created_ms,
            created_by: v.created_by.clone(),
            updated_ms: v.updated_ms,
            restarts: v.restarts,
            placement: v.placement.clone(),
            priority: u32::from(v.spec.priority),
            network: v.network.clone(),
            ip: v.ip.map(|ip| ip.to_string()),
        }
    }
}

impl From<&core::VmSpec> for pb::VmSpec {
    fn from(s: &core::VmSpec) -> Self {
        pb::VmSpec {
            name: s.name.clone(),
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            disk_gb: s.disk_gb,
            kernel: s.kernel.clone(),
            initrd: s.initrd.clone(),
            cmdline: s.cmdline.clone(),
            labels: s.labels.clone().into_iter().collect(),
            anti_affinity: s.anti_affinity.clone(),
            node: s.node,
            restart: s.restart.as_str().to_string(),
            start: s.start,
            strategy: s
                .strategy
                .map(|x| x.as_str().to_string())
                .unwrap_or_default(),
            constraints: s.constraints.clone().into_iter().collect(),
            features: s.features.iter().cloned().collect(),
            priority: Some(u32::from(s.priority)),
            preempt: s.preempt,
            disk_image: s.disk_image.clone(),
            disk_readonly: s.disk_readonly,
            network: s.network.clone(),
            ip: s.ip.map(|ip| ip.to_string()),
        }
    }
}

impl TryFrom<pb::VmSpec> for core::VmSpec {
    type Error = String;
    fn try_from(s: pb::VmSpec) -> Result<Self, String> {
        let restart = if s.restart.is_empty() {
            core::RestartPolicy::default()
        } else {
            s.restart.parse()?
        };
        let mut spec = core::VmSpec::new(s.name);
        spec.vcpus = s.vcpus;
        spec.memory_mb = s.memory_mb;
        spec.disk_gb = s.disk_gb;
        spec.kernel = s.kernel;
        spec.initrd = s.initrd;
        spec.cmdline = s.cmdline;
        spec.labels = s.labels.into_iter().collect::<BTreeMap<_, _>>();
        spec.anti_affinity = s.anti_affinity;
        spec.node = s.node;
        spec.restart = restart;
        spec.start = s.start;
        if !s.strategy.is_empty() {
            spec.strategy = Some(s.strategy.parse()?);
        }
        spec.constraints = s.constraints.into_iter().collect();
        spec.features = s.features.into_iter().collect();
        if let Some(p) = s.priority {
            spec.priority = u8::try_from(p)
                .map_err(|_| format!("priority must be between 0 and 100, got {p}"))?;
        }
        spec.preempt = s.preempt;
        spec.disk_image = s.disk_image;
        spec.disk_readonly = s.disk_readonly;
        spec.network = s.network.filter(|n| !n.is_empty());
        if let Some(ip) = s.ip.filter(|ip| !ip.is_empty()) {
            spec.ip = Some(
                ip.parse()
                    .map_err(|_| format!("invalid IPv4 address '{ip}'"))?,
            );
        }
        Ok(spec)
    }
}

impl From<&core::Placement> for pb::PlacementExplanation {
    fn from(p: &core::Placement) -> Self {
        pb::PlacementExplanation {
            node: p.node,
            strategy: p.strategy.as_str().to_string(),
            summary: p.summary.clone(),
            preempted: p.preempted.clone(),
            verdicts: p
                .verdicts
                .iter()
                .map(|v| pb::NodeVerdict {
                    node: v.node,
                    eligible: v.eligible,
                    score: v.score,
                    reason: v.reason.clone(),
                })
                .collect(),
        }
    }
}

impl From<&core::Network> for pb::NetworkInfo {
    fn from(n: &core::Network) -> Self {
        pb::NetworkInfo {
            name: n.name.clone(),
            cidr: n.cidr.to_string(),
            vms: u32::try_from(n.vm_count()).unwrap_or(u32::MAX),
            vni: n.vni,
            nodes: n
                .node_addresses()
                .into_iter()
                .map(|(id, ip)| (id, ip.to_string()))
                .collect(),
        }
    }
}

/// Parses a node state name from the wire.
pub fn parse_node_state(s: &str) -> Result<core::NodeState, String> {
    match s {
        "up" => Ok(core::NodeState::Up),
        "down" => Ok(core::NodeState::Down),
        "draining" => Ok(core::NodeState::Draining),
        other => Err(format!(
            "unknown node state '{other}': use up, down or draining"
        )),
    }
}

/// Parses a desired VM state from the wire.
pub fn parse_desired(s: &str) -> Result<core::Desired, String> {
    match s {
        "running" => Ok(core::Desired::Running),
        "stopped" => Ok(core::Desired::Stopped),
        other => Err(format!(
            "unknown desired state '{other}': use running or stopped"
        )),
    }
}

impl From<&core::TaskRecord> for pb::TaskInfo {
    fn from(t: &core::TaskRecord) -> Self {
        pb::TaskInfo {
            id: t.id.clone(),
            node_id: t.node_id,
            state: t.state.as_str().to_string(),
            exit_code: t.exit_code,
            duration_ms: t.duration_ms,
            attempt: t.attempt,
            max_attempts: t.spec.max_attempts,
            epoch: t.epoch,
            reason: t.reason.clone(),
            command: t.spec.command.clone(),
            cpus: t.spec.cpus,
            memory_mb: t.spec.memory_mb,
            timeout_secs: t.spec.timeout_secs,
            pinned_node: t.spec.node,
            cancel_requested: t.cancel_requested,
            submitted_ms: t.submitted_ms,
            started_ms: t.started_ms,
            finished_ms: t.finished_ms,
            // Write-only: names, never values.
            env: Default::default(),
            env_names: t.spec.env.keys().cloned().collect(),
            created_by: t.created_by.clone(),
        }
    }
}

impl From<&core::TaskSpec> for pb::TaskSpec {
    fn from(s: &core::TaskSpec) -> Self {
        pb::TaskSpec {
            command: s.command.clone(),
            env: s.env.clone().into_iter().collect(),
            cpus: s.cpus,
            memory_mb: s.memory_mb,
            timeout_secs: s.timeout_secs,
            node: s.node,
            max_attempts: s.max_attempts,
        }
    }
}

impl From<pb::TaskSpec> for core::TaskSpec {
    /// Zero cpus, timeout or attempts mean the defaults.
    fn from(s: pb::TaskSpec) -> Self {
        let mut spec = core::TaskSpec::new(s.command);
        spec.env = s.env.into_iter().collect();
        if s.cpus != 0 {
            spec.cpus = s.cpus;
        }
        spec.memory_mb = s.memory_mb;
        if s.timeout_secs != 0 {
            spec.timeout_secs = s.timeout_secs;
        }
        spec.node = s.node;
        if s.max_attempts != 0 {
            spec.max_attempts = s.max_attempts;
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_spec_round_trips() {
        let mut s = core::TaskSpec::new(vec!["sh".into(), "-c".into(), "echo hi".into()]);
        s.env.insert("A".into(), "b".into());
        s.node = Some(2);
        s.max_attempts = 5;
        assert_eq!(core::TaskSpec::from(pb::TaskSpec::from(&s)), s);
    }

    use super::*;

    #[test]
    fn vm_spec_round_trips() {
        let mut s = core::VmSpec::new("web-1");
        s.labels.insert("tier".into(), "web".into());
        s.node = Some(3);
        s.restart = core::RestartPolicy::Always;
        let back = core::VmSpec::try_from(pb::VmSpec::from(&s)).unwrap();
        assert_eq!(s, back);
    }

    #[test]
    fn unknown_restart_policy_is_refused() {
        let mut p = pb::VmSpec::from(&core::VmSpec::new("a"));
        p.restart = "sometimes".into();
        assert!(core::VmSpec::try_from(p).unwrap_err().contains("sometimes"));
    }
}
