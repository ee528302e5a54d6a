//! The Raft log payload: every change to the replicated state is one [`Request`], and the
//! result of applying it is one [`Outcome`]. Nothing changes the state any other way.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Desired, NodeState, VmRecord, VmState, Worker};
use crate::network::Network;
use crate::spec::{NodeId, Resources, Strategy, VmSpec};
use crate::task::{TaskRecord, TaskSpec, TaskState};

/// One entry of the replicated log: a command, stamped by the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client request id: a retried request with the same id is applied once, and the retry
    /// gets the first outcome back.
    pub request_id: Option<String>,
    /// Wall-clock milliseconds since the Unix epoch, stamped by the node that proposed it.
    /// `apply` never reads a clock: it uses this.
    pub time_ms: u64,
    pub command: Command,
    /// Who asked (the authenticated client's name, see [`crate::auth`]), stamped by the node
    /// that received the request and carried when it is forwarded; `None` for the cluster's
    /// own proposals. Recorded as `created_by` and in the events. Always written (the log is
    /// bincode, which cannot skip a field).
    #[serde(default)]
    pub caller: Option<String>,
}

impl Request {
    pub fn new(command: Command, time_ms: u64) -> Self {
        Self {
            request_id: None,
            time_ms,
            command,
            caller: None,
        }
    }

    pub fn by(mut self, caller: Option<String>) -> Self {
        self.caller = caller;
        self
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

impl Command {
    /// The node a command speaks for, when it is one a node sends about itself (a peer that
    /// forwards it must be that node).
    pub fn acting_node(&self) -> Option<NodeId> {
        match self {
            Command::RegisterWorker { id, .. } | Command::WorkerShuttingDown { id } => Some(*id),
            Command::ReportVmStatus { node_id, .. }
            | Command::ReportTaskStarted { node_id, .. }
            | Command::ReportTaskResult { node_id, .. } => Some(*node_id),
            _ => None,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.command.kind())?;
        if let Some(id) = &self.request_id {
            write!(f, "[{id}]")?;
        }
        Ok(())
    }
}

/// Every kind of change the state machine accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node announces itself as a worker with the capabilities it detected (or re-announces
    /// them after a restart). Registration never changes a node's drain/down state.
    RegisterWorker {
        id: NodeId,
        addr: String,
        capacity: Resources,
        kvm: bool,
        labels: BTreeMap<String, String>,
    },
    /// The node left the cluster and can no longer run anything (it confirmed it stopped its
    /// workloads, or its lease has provably expired): forget it as a worker; its VMs go back
    /// to pending. Proposed only by the leader of `term`, never forwarded: `apply` refuses it
    /// when the entry's own term differs (a deposed leader's verdict is void).
    RemoveWorker { id: NodeId, term: u64 },
    /// An operator marks a worker draining, or up again (undrain). `down` is refused: it is
    /// the failure detector's verdict ([`Command::LivenessVerdict`]), not a client command.
    SetWorkerState { id: NodeId, state: NodeState },
    /// The failure detector's verdict on a worker: `down` after lease + grace of silence (its
    /// lease has provably expired, so its workloads may run elsewhere) or `up` when its
    /// heartbeats are back. Proposed by the leader of `term` only, never forwarded; `apply`
    /// refuses it when the log entry's own term is another one.
    LivenessVerdict {
        id: NodeId,
        state: NodeState,
        term: u64,
    },
    /// Change the cluster's lease settings (absent fields keep their value); see
    /// [`crate::state::LivenessSettings`].
    SetLivenessSettings {
        lease_ms: Option<u64>,
        grace_ms: Option<u64>,
        heartbeat_ms: Option<u64>,
    },
    /// Record a new VM and place it.
    CreateVm { spec: VmSpec },
    /// Change the cluster-wide scheduler settings: the default strategy and the vCPU
    /// overcommit in percent (100 = none, at most 1000). Refused when a node already has more
    /// vCPUs allocated than the new ratio allows.
    SetSchedulerSettings {
        strategy: Strategy,
        vcpu_overcommit_pct: u32,
    },
    /// Forget a VM.
    DeleteVm { name: String },
    /// Ask for a VM to run or to be stopped.
    SetVmDesired { name: String, desired: Desired },
    /// Move a VM off its node (drain): stop it there, then place it elsewhere.
    MoveVm { name: String },
    /// What an executor observed of a VM it runs, for the placement `epoch` it acts on.
    /// `restarted`: the executor has just restarted it after it ended on its own (counted in
    /// `VmRecord::restarts`).
    ReportVmStatus {
        name: String,
        node_id: NodeId,
        epoch: u64,
        state: VmState,
        reason: Option<String>,
        #[serde(default)]
        restarted: bool,
    },
    /// Record a one-shot task (its id chosen by the proposer) and place it when capacity allows.
    SubmitTask { id: String, spec: TaskSpec },
    /// The node running attempt `epoch` of a task started it.
    ReportTaskStarted {
        id: String,
        node_id: NodeId,
        epoch: u64,
    },
    /// The result of attempt `epoch` of a task (succeeded, failed, timed_out or cancelled).
    ReportTaskResult {
        id: String,
        node_id: NodeId,
        epoch: u64,
        state: TaskState,
        exit_code: Option<i32>,
        duration_ms: Option<u64>,
        reason: Option<String>,
    },
    /// Cancel a task: at once while it waits for a node, else its node stops it and reports.
    CancelTask { id: String },
    /// Create a network (see [`crate::network`]): a private CIDR, disjoint from the others.
    CreateNetwork { name: String, cidr: String },
    /// Create the network `default` with `cidr` unless it exists (proposed by the node that
    /// ran `--init`, and by any node that finds it missing).
    EnsureDefaultNetwork { cidr: String },
    /// Delete a network no VM uses.
    DeleteNetwork { name: String },
    /// Node `node_id` confirms that these (VM name, placement epoch) no longer run there: their
    /// quarantined addresses are free again.
    ReleaseAddresses {
        node_id: NodeId,
        vms: Vec<(String, u64)>,
    },
    /// Join tokens and revoked node identities (`tokens`).
    Security(crate::tokens::SecurityCommand),
    // New variants go last: log entries are encoded by variant index (bincode), so a variant
    // inserted above would change the meaning of every entry already written.
    /// A node stopping gracefully says so about itself: an `up` worker becomes `shutting-down`
    /// (nothing new is placed on it; its workloads stay where they are). A draining or down
    /// worker keeps its state. It is `up` again once the failure detector sees its heartbeats
    /// return ([`Command::LivenessVerdict`]).
    WorkerShuttingDown { id: NodeId },
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterWorker { .. } => "register_worker",
            Command::RemoveWorker { .. } => "remove_worker",
            Command::SetWorkerState { .. } => "set_worker_state",
            Command::WorkerShuttingDown { .. } => "worker_shutting_down",
            Command::LivenessVerdict { .. } => "liveness_verdict",
            Command::SetLivenessSettings { .. } => "set_liveness_settings",
            Command::CreateVm { .. } => "create_vm",
            Command::SetSchedulerSettings { .. } => "set_scheduler_settings",
            Command::DeleteVm { .. } => "delete_vm",
            Command::SetVmDesired { .. } => "set_vm_desired",
            Command::MoveVm { .. } => "move_vm",
            Command::ReportVmStatus { .. } => "report_vm_status",
            Command::SubmitTask { .. } => "submit_task",
            Command::ReportTaskStarted { .. } => "report_task_started",
            Command::ReportTaskResult { .. } => "report_task_result",
            Command::CancelTask { .. } => "cancel_task",
            Command::CreateNetwork { .. } => "create_network",
            Command::EnsureDefaultNetwork { .. } => "ensure_default_network",
            Command::DeleteNetwork { .. } => "delete_network",
            Command::ReleaseAddresses { .. } => "release_addresses",
            Command::Security(c) => c.kind(),
        }
    }
}

/// What a successful apply returns to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "one reply per applied command, moved a few times; boxing `Vm` would touch every match on it"
)]
pub enum Reply {
    Done,
    Vm(VmRecord),
    Worker(Worker),
    Task(Box<TaskRecord>),
    Network(Box<Network>),
}

/// Why `apply` refused a command. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{what} '{name}' not found")]
    NotFound { what: String, name: String },
    #[error("{what} '{name}' already exists")]
    AlreadyExists { what: String, name: String },
    #[error("{0}")]
    NoCapacity(String),
    #[error("stale report for VM '{name}': epoch {got} is not the current placement (epoch {current} on node {node:?})")]
    StaleEpoch {
        name: String,
        got: u64,
        current: u64,
        node: Option<NodeId>,
    },
    #[error("{0}")]
    LimitReached(String),
    #[error("stale report for task '{id}': attempt epoch {got} is not the current assignment (epoch {current} on node {node:?})")]
    StaleAttempt {
        id: String,
        got: u64,
        current: u64,
        node: Option<NodeId>,
    },
    /// A leader-only verdict committed in another term than the one that decided it.
    #[error("stale verdict: decided in term {decided} but committed in term {committed}; only the leader of the current term decides")]
    StaleTerm { decided: u64, committed: u64 },
    /// A node id that was used before (ids are never reused: a wiped node rejoining under an
    /// old id could split the quorum).
    #[error("node id {0} was used before by a member of this cluster; ids are never reused: start the node with a new --id")]
    IdUsed(NodeId),
}

impl ApplyError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApplyError::Invalid(msg.into())
    }
    pub fn not_found(what: &str, name: impl fmt::Display) -> Self {
        ApplyError::NotFound {
            what: what.into(),
            name: name.to_string(),
        }
    }
}

/// The result of applying one request. Returned to the proposer through Raft.
pub type Outcome = Result<Reply, ApplyError>;
