//! The shared domain types of the replicated state: workers, VMs and their states.
//!
//! They live apart from [`crate::state`] so that `command`, `planner`, `liveness` and the
//! scheduler can name them without depending on the state machine itself.

use crate::spec::{NodeId, Resources, VmSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A worker's health and availability for new VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NodeState {
    Up,
    Down,
    Draining,
    /// The node announced a graceful stop (`Command::WorkerShuttingDown`): nothing new is
    /// placed on it; its heartbeats coming back make it `up` again, and its silence past
    /// lease + grace makes it `down`, like any node.
    #[serde(rename = "shutting-down")]
    ShuttingDown,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
            NodeState::ShuttingDown => "shutting-down",
        }
    }
}

/// A registered worker: a node that can run VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: NodeId,
    pub addr: String,
    pub state: NodeState,
    /// What the scheduler may allocate on this node.
    pub capacity: Resources,
    /// Sum of the resources of the VMs placed here. Maintained by `apply`; never above capacity.
    pub allocated: Resources,
    pub kvm: bool,
    pub labels: BTreeMap<String, String>,
    /// Number of VMs placed here.
    pub vms: u32,
    pub registered_ms: u64,
}

/// Whether the user wants a VM running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(&self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }
}

/// What is known of a VM's actual state (as reported by its executor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum VmState {
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Its node went down and its restart policy (`never`) forbids running it elsewhere.
    Lost,
}

impl VmState {
    pub fn as_str(&self) -> &'static str {
        match self {
            VmState::Pending => "pending",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
            VmState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        Some(match s {
            "pending" => VmState::Pending,
            "starting" => VmState::Starting,
            "running" => VmState::Running,
            "stopping" => VmState::Stopping,
            "stopped" => VmState::Stopped,
            "failed" => VmState::Failed,
            "lost" => VmState::Lost,
            _ => return None,
        })
    }
}

/// A VM as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    /// Where it is placed; `None` while pending.
    pub node_id: Option<NodeId>,
    pub desired: Desired,
    pub state: VmState,
    /// The log index of the command that made the current placement. Executors act only on
    /// their current epoch; reports carrying another are refused.
    pub epoch: u64,
    /// Why the VM is in its state (placement refusals, failures).
    pub reason: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Times the executor restarted it after it ended unexpectedly.
    #[serde(default)]
    pub restarts: u32,
    /// Why the scheduler put it where it is, e.g. "binpack: node 2 (score 0.81; 3 nodes
    /// eligible)"; `None` while pending (see `reason`).
    #[serde(default)]
    pub placement: Option<String>,
    /// Leaving its node (drain, preemption, a node that no longer fits it): its executor
    /// stops it; once it reports `stopped` (or its node is declared down: its lease expired)
    /// it is placed elsewhere with a new epoch. Stop here, then start there: never both.
    #[serde(default)]
    pub evacuating: bool,
    /// While evacuating for a preemption: the VM waiting for its room.
    #[serde(default)]
    pub preempted_by: Option<String>,
    /// The network its address is on (see [`crate::network`]); kept for its whole life.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Who created it (the client's name; see [`crate::auth`]).
    #[serde(default)]
    pub created_by: Option<String>,
}

impl VmRecord {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}
