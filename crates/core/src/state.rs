//! The replicated state and the one function that changes it: [`ClusterState::apply`].
//!
//! Every node applies the same log to this type and must reach the same state bit for bit, so
//! `apply` reads nothing but its arguments: the log index (which becomes a placement's epoch)
//! and the request (whose proposer stamped the time). Maps are `BTreeMap`s so iteration, and
//! hence placement and serialization, is ordered the same everywhere.
//!
//! The storage layer persists the state as rows (one per VM, worker and remembered request):
//! `apply` records which rows it touched in [`ClusterState::take_touched`], so the store writes
//! only those rows, in the same transaction that records the applied log id.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{ApplyError, Command, Outcome, Reply, Request};
use crate::liveness::LivenessSettings;
use crate::network::Network;
use crate::scheduler::{self, SchedulerSettings};
use crate::spec::{self, NodeId, Resources, VmSpec, MAX_VMS, MAX_WORKERS};
use crate::task::{self, TaskRecord, TaskSpec, TaskState, MAX_ACTIVE_TASKS, MAX_FINISHED_TASKS};

/// How many client request ids are remembered for de-duplication. Older ones are forgotten in
/// log order, so a retry arriving after this many newer requests is applied again.
pub const DEDUP_WINDOW: usize = 10_000;

/// A worker's health and availability for new VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Down,
    Draining,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Draining => "draining",
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
}

impl VmRecord {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// A row of the persisted state: the unit the store writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RowKey {
    Vm(String),
    Worker(NodeId),
    Request(String),
    /// The cluster-wide scheduler settings.
    Settings,
    Task(String),
    /// The lease settings.
    Liveness,
    /// The current members and every node id ever used.
    NodeIds,
    Network(String),
    /// The security records (`crate::tokens`), one row.
    Security,
}

impl RowKey {
    /// Stable textual key for the store.
    pub fn encode(&self) -> String {
        match self {
            RowKey::Vm(n) => format!("vm/{n}"),
            RowKey::Worker(id) => format!("worker/{id:020}"),
            RowKey::Request(id) => format!("req/{id}"),
            RowKey::Settings => SETTINGS_ROW.to_string(),
            RowKey::Task(id) => format!("task/{id}"),
            RowKey::Liveness => LIVENESS_ROW.to_string(),
            RowKey::NodeIds => NODE_IDS_ROW.to_string(),
            RowKey::Network(n) => format!("net/{n}"),
            RowKey::Security => SECURITY_ROW.to_string(),
        }
    }
}

/// Store key of the scheduler settings row.
const SETTINGS_ROW: &str = "settings";
/// Store key of the lease settings row.
const LIVENESS_ROW: &str = "liveness";
/// Store key of the node ids row.
const NODE_IDS_ROW: &str = "node_ids";

/// The cluster's node ids, from the membership entries of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIds {
    /// Voters and learners of the last applied membership.
    pub members: BTreeSet<NodeId>,
    /// Every id that was ever a member: never handed out again.
    pub used: BTreeSet<NodeId>,
}
/// Store key of the security records row.
const SECURITY_ROW: &str = "security";

/// Order in which pending VMs are tried: highest priority first, then oldest, then by name.
type PendingKey = (Reverse<u8>, u64, String);

fn pending_key(vm: &VmRecord) -> PendingKey {
    (
        Reverse(vm.spec.priority),
        vm.created_ms,
        vm.spec.name.clone(),
    )
}

/// A remembered request outcome, for de-duplicating retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub index: u64,
    pub outcome: Outcome,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub workers: BTreeMap<NodeId, Worker>,
    pub vms: BTreeMap<String, VmRecord>,
    /// Outcomes of recent client requests, by request id.
    pub requests: BTreeMap<String, Remembered>,
    /// Cluster-wide scheduler settings (strategy, vCPU overcommit).
    #[serde(default)]
    pub settings: SchedulerSettings,
    /// One-shot tasks: active ones and the most recent finished ones.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Lease, grace and heartbeat: the numbers fencing and failure detection use.
    #[serde(default)]
    pub liveness: LivenessSettings,
    /// Members and used ids (kept from the membership entries, see [`Self::note_membership`]).
    #[serde(default)]
    pub node_ids: NodeIds,
    /// Networks and their address leases (see [`crate::network`]).
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Join tokens and revoked node identities (`crate::tokens`).
    #[serde(default)]
    pub security: crate::tokens::SecurityState,
    /// Rows changed since the last `take_touched`; not part of the state.
    #[serde(skip)]
    pub(crate) touched: BTreeSet<RowKey>,
    /// `requests` ordered by log index, for eviction; derived, rebuilt on load.
    #[serde(skip)]
    request_order: BTreeMap<u64, String>,
    /// Anti-affinity group -> node -> the group's VM there; derived, rebuilt on load.
    #[serde(skip)]
    groups: BTreeMap<String, BTreeMap<NodeId, String>>,
    /// Node -> (priority, name) of the VMs placed there; derived, rebuilt on load.
    #[serde(skip)]
    by_node: BTreeMap<NodeId, BTreeSet<(u8, String)>>,
    /// Unplaced VMs in the order `place_pending` tries them; derived, rebuilt on load.
    #[serde(skip)]
    pending: BTreeSet<PendingKey>,
    /// Unassigned active tasks as (submitted_ms, id), in the order they are placed; derived.
    #[serde(skip)]
    pending_tasks: BTreeSet<(u64, String)>,
    /// Finished tasks as (finishing log index, id), oldest first, for retention; derived.
    #[serde(skip)]
    finished_tasks: BTreeSet<(u64, String)>,
    /// Bytes of all VM specs, task specs and remembered outcomes (see `budget`); derived.
    #[serde(skip)]
    bytes: Bytes,
}

fn ghost_reason(name: &str, node: NodeId) -> String {
    format!("waiting for the deleted VM '{name}' to stop on node {node}")
}

/// Sizes tracked against the byte budgets ([`crate::budget`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bytes {
    vms: usize,
    tasks: usize,
    requests: usize,
}

fn remembered_bytes(id: &str, r: &Remembered) -> usize {
    id.len() + serde_json::to_vec(r).map_or(0, |v| v.len())
}

impl ClusterState {
    /// Applies one committed request at log `index`. Deterministic; a refused request changes
    /// nothing (except remembering its outcome for de-duplication).
    ///
    /// This form is for tools and tests: the entry's term is taken to be 0. The store calls
    /// [`Self::apply_at`] with the log entry's own term.
    pub fn apply(&mut self, index: u64, req: &Request) -> Outcome {
        self.apply_at(0, index, req)
    }

    /// Applies one committed request whose log id is (`term`, `index`). Leader-only verdicts
    /// (liveness, worker removal) carry the term of the leader that decided them; they are
    /// refused unless it equals `term`, so a deposed leader's verdict can never take effect.
    pub fn apply_at(&mut self, term: u64, index: u64, req: &Request) -> Outcome {
        if let Some(id) = &req.request_id {
            if let Some(seen) = self.requests.get(id) {
                return seen.outcome.clone();
            }
        }
        let outcome = self.apply_command(term, index, req.time_ms, &req.command);
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            panic!(
                "invariant broken by {} at index {index}: {e}",
                req.command.kind()
            );
        }
        if outcome.is_ok() && !self.pending_tasks.is_empty() {
            // Any change may have made room (or a node) for waiting tasks.
            self.place_pending_tasks(index, req.time_ms);
        }
        if let Some(id) = &req.request_id {
            if id.len() <= spec::MAX_REQUEST_ID_LEN {
                self.remember(id.clone(), index, outcome.clone());
            }
        }
        outcome
    }

    fn remember(&mut self, id: String, index: u64, outcome: Outcome) {
        self.request_order.insert(index, id.clone());
        self.touched.insert(RowKey::Request(id.clone()));
        let r = Remembered { index, outcome };
        self.bytes.requests += remembered_bytes(&id, &r);
        if let Some(old) = self.requests.insert(id.clone(), r) {
            self.bytes.requests = self
                .bytes
                .requests
                .saturating_sub(remembered_bytes(&id, &old));
        }
        // The oldest are forgotten first: beyond the count window or the byte budget.
        while self.requests.len() > DEDUP_WINDOW
            || self.bytes.requests > crate::budget::MAX_DEDUP_BYTES
        {
            let Some((_, oldest)) = self.request_order.pop_first() else {
                break;
            };
            if let Some(old) = self.requests.remove(&oldest) {
                self.bytes.requests = self
                    .bytes
                    .requests
                    .saturating_sub(remembered_bytes(&oldest, &old));
            }
            self.touched.insert(RowKey::Request(oldest));
        }
    }

    /// Records a membership entry of the log (voters and learners): the members, and their ids
    /// as used forever. Called by the store in log order, so it is as deterministic as `apply`.
    pub fn note_membership(&mut self, ids: impl IntoIterator<Item = NodeId>) {
        let members: BTreeSet<NodeId> = ids.into_iter().collect();
        self.node_ids.used.extend(members.iter().copied());
        self.node_ids.members = members;
        self.touched.insert(RowKey::NodeIds);
    }

    /// Whether a join of node `id` must be refused: the id belonged to a member that is gone.
    pub fn id_was_used(&self, id: NodeId) -> bool {
        self.node_ids.used.contains(&id) && !self.node_ids.members.contains(&id)
    }

    fn apply_command(&mut self, term: u64, index: u64, now: u64, cmd: &Command) -> Outcome {
        let same_term = |decided: u64| {
            if decided == term {
                Ok(())
            } else {
                Err(ApplyError::StaleTerm {
                    decided,
                    committed: term,
                })
            }
        };
        match cmd {
            Command::RegisterWorker {
                id,
                addr,
                capacity,
                kvm,
                labels,
            } => {
                if !self.node_ids.members.is_empty() && !self.node_ids.members.contains(id) {
                    return Err(ApplyError::invalid(format!("node {id} is not a member of the cluster: only members register as workers")));
                }
                if addr.is_empty() || addr.len() > spec::MAX_ADDR_LEN {
                    return Err(ApplyError::invalid("worker address must be 1 to 256 bytes"));
                }
                spec::validate_labels(labels)?;
                if !self.workers.contains_key(id) && self.workers.len() >= MAX_WORKERS {
                    return Err(ApplyError::LimitReached(format!(
                        "the cluster already has {MAX_WORKERS} workers"
                    )));
                }
                let w = self.workers.entry(*id).or_insert_with(|| Worker {
                    id: *id,
                    addr: addr.clone(),
                    state: NodeState::Up,
                    capacity: *capacity,
                    allocated: Resources::default(),
                    kvm: *kvm,
                    labels: labels.clone(),
                    vms: 0,
                    registered_ms: now,
                });
                w.addr = addr.clone();
                w.capacity = *capacity;
                w.kvm = *kvm;
                w.labels = labels.clone();
                self.touched.insert(RowKey::Worker(*id));
                self.node_registered(*id);
                // A re-registration may have taken labels, features or capacity away.
                let evicted = self.evict_misfits(*id, index, now);
                // New capacity may let pending VMs in.
                self.place_pending(index, now, BTreeSet::new(), evicted);
                match self.workers.get(id) {
                    Some(w) => Ok(Reply::Worker(w.clone())),
                    None => Err(ApplyError::not_found("node", id)),
                }
            }
            Command::RemoveWorker { id, term: decided } => {
                same_term(*decided)?;
                if self.workers.remove(id).is_none() {
                    return Err(ApplyError::not_found("node", id));
                }
                self.touched.insert(RowKey::Worker(*id));
                self.node_removed(*id);
                self.requeue_tasks_from_node(
                    *id,
                    index,
                    now,
                    &format!("node {id} left the cluster"),
                );
                let names: Vec<String> = self
                    .by_node
                    .get(id)
                    .map(|s| s.iter().map(|(_, n)| n.clone()).collect())
                    .unwrap_or_default();
                for name in &names {
                    self.unplace_vm(name, now, format!("node {id} left the cluster"));
                }
                self.place_pending(index, now, BTreeSet::new(), names.into_iter().collect());
                Ok(Reply::Done)
            }
            Command::SetWorkerState { id, state } => {
                let Some(w) = self.workers.get(id) else {
                    return Err(ApplyError::not_found("node", id));
                };
                if *state == NodeState::Down {
                    return Err(ApplyError::invalid(format!(
                        "a node is declared down only by the failure detector (after its lease expired); to take node {id} out of service, drain it"
                    )));
                }
                if w.state == NodeState::Down && *state == NodeState::Up {
                    return Err(ApplyError::invalid(format!(
                        "node {id} is down: it comes back up by itself once its heartbeats return"
                    )));
                }
                self.set_worker_state(*id, *state, index, now)
            }
            Command::LivenessVerdict {
                id,
                state,
                term: decided,
            } => {
                same_term(*decided)?;
                let Some(w) = self.workers.get(id) else {
                    return Err(ApplyError::not_found("node", id));
                };
                match (w.state, *state) {
                    (NodeState::Down, NodeState::Up)
                    | (NodeState::Up | NodeState::Draining, NodeState::Down) => {
                        self.set_worker_state(*id, *state, index, now)
                    }
                    (_, NodeState::Draining) => {
                        Err(ApplyError::invalid("a liveness verdict is up or down"))
                    }
                    // Already so (a verdict repeated across a leader change): nothing to do.
                    _ => Ok(Reply::Worker(w.clone())),
                }
            }
            Command::SetLivenessSettings {
                lease_ms,
                grace_ms,
                heartbeat_ms,
            } => {
                let new = self.liveness.merged(
                    *lease_ms,
                    *grace_ms,
                    *heartbeat_ms,
                    now,
                    self.workers.is_empty(),
                );
                new.validate()?;
                self.liveness = new;
                self.touched.insert(RowKey::Liveness);
                Ok(Reply::Done)
            }
            Command::SetSchedulerSettings {
                strategy,
                vcpu_overcommit_pct,
            } => {
                let new = SchedulerSettings {
                    strategy: *strategy,
                    vcpu_overcommit_pct: *vcpu_overcommit_pct,
                };
                new.validate()?;
                for w in self.workers.values() {
                    let limit = new.effective_capacity(&w.capacity).vcpus;
                    if w.allocated.vcpus > limit {
                        return Err(ApplyError::invalid(format!(
                            "cannot set vcpu overcommit to {vcpu_overcommit_pct}%: node {} has {} vCPUs allocated, above its limit of {limit} at that ratio",
                            w.id, w.allocated.vcpus
                        )));
                    }
                }
                self.settings = new;
                self.touched.insert(RowKey::Settings);
                self.place_pending(index, now, BTreeSet::new(), BTreeSet::new());
                Ok(Reply::Done)
            }
            Command::CreateVm { spec } => {
                spec.validate()?;
                self.check_new_vm_name(&spec.name)?;
                if self.vms.len() >= MAX_VMS {
                    return Err(ApplyError::LimitReached(format!(
                        "the cluster already holds {MAX_VMS} VMs"
                    )));
                }
                let weight = crate::budget::vm_spec_bytes(spec);
                if self.bytes.vms + weight > crate::budget::MAX_VM_SPEC_BYTES {
                    return Err(ApplyError::LimitReached(format!(
                        "the cluster's VM specs already take {} KiB of its {} KiB budget: delete VMs or use shorter specs",
                        self.bytes.vms >> 10,
                        crate::budget::MAX_VM_SPEC_BYTES >> 10
                    )));
                }
                if let Some(pin) = spec.node {
                    if !self.workers.contains_key(&pin) {
                        return Err(ApplyError::not_found("node", pin));
                    }
                }
                let decision = scheduler::decide(self, spec);
                let preemption = match decision.node {
                    None if spec.preempt => scheduler::plan_preemption(self, spec),
                    _ => None,
                };
                let desired = if spec.start {
                    Desired::Running
                } else {
                    Desired::Stopped
                };
                // The last refusal possible: taking the address is the first change.
                let address = self.assign_address(spec)?;
                let vm = VmRecord {
                    spec: spec.clone(),
                    node_id: None,
                    desired,
                    state: VmState::Pending,
                    epoch: index,
                    reason: None,
                    created_ms: now,
                    updated_ms: now,
                    restarts: 0,
                    evacuating: false,
                    preempted_by: None,
                    placement: None,
                    network: address.as_ref().map(|a| a.0.clone()),
                    ip: address.map(|a| a.1),
                };
                self.vms.insert(spec.name.clone(), vm);
                self.bytes.vms += weight;
                self.index_add(&spec.name);
                self.touched.insert(RowKey::Vm(spec.name.clone()));
                if let Some(n) = self.ghost_of(&spec.name) {
                    // A deleted VM of this name may still run: not beside it.
                    if let Some(vm) = self.vms.get_mut(&spec.name) {
                        vm.reason = Some(ghost_reason(&spec.name, n));
                    }
                    return Ok(Reply::Vm(self.vms[&spec.name].clone()));
                }
                match (decision.node, preemption) {
                    (Some(node), _) => self.place_vm(&spec.name, node, index, now, decision.text),
                    (None, Some(p)) => {
                        let victims = self.preempt(spec, &p, index, now);
                        // The victims that were not running may fit elsewhere now; they may
                        // not preempt in turn.
                        self.place_pending(index, now, victims.clone(), victims);
                    }
                    (None, None) => {
                        if let Some(vm) = self.vms.get_mut(&spec.name) {
                            vm.reason = Some(decision.text);
                        }
                    }
                }
                Ok(Reply::Vm(self.vms[&spec.name].clone()))
            }
            Command::DeleteVm { name } => {
                if !self.vms.contains_key(name) {
                    return Err(ApplyError::not_found("VM", name));
                }
                // The record and the name go at once; while the deleted copy may still run on
                // its node, its quarantined address keeps its name from being placed again
                // (`ghost_of`).
                self.forget_vm(name, index, now);
                Ok(Reply::Done)
            }
            Command::SetVmDesired { name, desired } => {
                let Some(vm) = self.vms.get_mut(name) else {
                    return Err(ApplyError::not_found("VM", name));
                };
                let was = vm.desired;
                vm.desired = *desired;
                vm.updated_ms = now;
                self.touched.insert(RowKey::Vm(name.clone()));
                let ended_by_itself = vm.state == VmState::Failed
                    || (vm.state == VmState::Stopped && was == Desired::Running);
                let node_up = vm
                    .node_id
                    .and_then(|n| self.workers.get(&n))
                    .is_some_and(|w| w.state == NodeState::Up);
                let Some(vm) = self.vms.get_mut(name) else {
                    return Err(ApplyError::not_found("VM", name));
                };
                // (On a node that is not up, a drain or the failure detector moves it instead.)
                if *desired == Desired::Running && node_up && ended_by_itself && !vm.evacuating {
                    // It ended on its own and its restart policy let it be: a start asks for a
                    // fresh run, under a new epoch on the same node (the old run is cleaned up
                    // first; its console is kept as the previous one).
                    vm.epoch = index;
                    vm.state = VmState::Pending;
                    vm.reason = Some("started again by request".into());
                } else if vm.state == VmState::Lost && *desired == Desired::Running {
                    // Asked to run again: it becomes an ordinary pending VM.
                    vm.state = VmState::Pending;
                    vm.reason = Some("restarted by request after being lost".into());
                    self.index_add(name);
                    self.place_pending(index, now, BTreeSet::new(), BTreeSet::new());
                }
                Ok(Reply::Vm(self.vms[name].clone()))
            }
            Command::MoveVm { name } => {
                let Some(vm) = self.vms.get_mut(name) else {
                    return Err(ApplyError::not_found("VM", name));
                };
                let Some(from) = vm.node_id else {
                    return Err(ApplyError::invalid(format!(
                        "VM '{name}' is not placed on any node"
                    )));
                };
                vm.updated_ms = now;
                self.touched.insert(RowKey::Vm(name.clone()));
                if self.evacuate(
                    name,
                    now,
                    format!("moving off node {from}: stopping it there first"),
                    None,
                ) {
                    self.place_pending(index, now, BTreeSet::new(), BTreeSet::from([name.clone()]));
                }
                Ok(Reply::Vm(self.vms[name].clone()))
            }
            Command::ReportVmStatus {
                name,
                node_id,
                epoch,
                state,
                reason,
                restarted,
            } => {
                let Some(vm) = self.vms.get_mut(name) else {
                    return Err(ApplyError::not_found("VM", name));
                };
                if vm.epoch != *epoch || vm.node_id != Some(*node_id) {
                    return Err(ApplyError::StaleEpoch {
                        name: name.clone(),
                        got: *epoch,
                        current: vm.epoch,
                        node: vm.node_id,
                    });
                }
                if *restarted && *state == VmState::Starting {
                    vm.restarts = vm.restarts.saturating_add(1);
                }
                let leaving_because = vm.reason.clone();
                vm.state = *state;
                vm.reason = reason.clone();
                vm.updated_ms = now;
                self.touched.insert(RowKey::Vm(name.clone()));
                if vm.evacuating && matches!(state, VmState::Stopped | VmState::Failed) {
                    // Its node confirmed the old copy is down: now place it elsewhere (new
                    // epoch). A preemption's victim keeps its reason, and the VM that waited
                    // for its room (higher priority) is tried first.
                    // It keeps the reason it had to leave (preempted, no longer fits), except a
                    // drain's "stopping it there first", which is now done.
                    let why = match leaving_because {
                        Some(r) if !r.starts_with("moving off node") => r,
                        _ => format!("moved off node {node_id}"),
                    };
                    self.unplace_vm(name, now, why);
                    self.place_pending(index, now, BTreeSet::new(), BTreeSet::from([name.clone()]));
                }
                Ok(Reply::Vm(self.vms[name].clone()))
            }
            Command::SubmitTask { id, spec } => self.submit_task(index, now, id, spec),
            Command::CreateNetwork { .. }
            | Command::EnsureDefaultNetwork { .. }
            | Command::DeleteNetwork { .. }
            | Command::ReleaseAddresses { .. } => {
                let out = self.apply_network_command(now, cmd);
                if out.is_ok() && matches!(cmd, Command::ReleaseAddresses { .. }) {
                    // A deleted VM confirmed stopped: a new one of its name may start now.
                    self.place_pending(index, now, BTreeSet::new(), BTreeSet::new());
                }
                out
            }
            Command::ReportTaskStarted { id, node_id, epoch } => {
                let t = self.current_task(id, *node_id, *epoch)?;
                if t.state == TaskState::Pending {
                    t.state = TaskState::Running;
                    t.started_ms = Some(now);
                    t.reason = None;
                    t.updated_ms = now;
                    self.touched.insert(RowKey::Task(id.clone()));
                }
                Ok(Reply::Task(Box::new(self.tasks[id].clone())))
            }
            Command::ReportTaskResult {
                id,
                node_id,
                epoch,
                state,
                exit_code,
                duration_ms,
                reason,
            } => {
                if !state.is_result() {
                    return Err(ApplyError::invalid(format!(
                        "a task result must be succeeded, failed, timed_out or cancelled, not {}",
                        state.as_str()
                    )));
                }
                self.current_task(id, *node_id, *epoch)?;
                self.finish_task(
                    id,
                    index,
                    now,
                    *state,
                    reason.as_deref().map(task::clip_reason),
                );
                if let Some(t) = self.tasks.get_mut(id) {
                    t.exit_code = *exit_code;
                    t.duration_ms = *duration_ms;
                }
                let reply = self.tasks.get(id).cloned();
                self.evict_finished_tasks();
                // Freed capacity may let waiting VMs in.
                self.place_pending(index, now, BTreeSet::new(), BTreeSet::new());
                match reply {
                    Some(t) => Ok(Reply::Task(Box::new(t))),
                    None => Ok(Reply::Done),
                }
            }
            Command::CancelTask { id } => {
                let Some(t) = self.tasks.get_mut(id) else {
                    return Err(ApplyError::not_found("task", id));
                };
                if t.state.is_finished() {
                    return Err(ApplyError::invalid(format!(
                        "task '{id}' already finished ({})",
                        t.state.as_str()
                    )));
                }
                if t.node_id.is_none() {
                    self.finish_task(
                        id,
                        index,
                        now,
                        TaskState::Cancelled,
                        Some("cancelled before it was placed".into()),
                    );
                } else {
                    t.cancel_requested = true;
                    t.reason = Some("cancel requested: waiting for its node to stop it".into());
                    t.updated_ms = now;
                    self.touched.insert(RowKey::Task(id.clone()));
                }
                let reply = self.tasks.get(id).cloned();
                self.evict_finished_tasks();
                match reply {
                    Some(t) => Ok(Reply::Task(Box::new(t))),
                    None => Ok(Reply::Done),
                }
            }
            Command::Security(c) => {
                // Node ids are never reused: a token cannot admit an id that was ever a member.
                let reply = self.security.apply(c, now, &self.node_ids.used)?;
                self.touched.insert(RowKey::Security);
                Ok(reply)
            }
        }
    }

    /// The node where a deleted VM named `name` may still run (its address waits in
    /// quarantine for that node's confirmation, or its fencing): a new VM of that name is not
    /// placed until then, so two of one name never run at once.
    fn ghost_of(&self, name: &str) -> Option<NodeId> {
        self.networks
            .values()
            .flat_map(|n| n.leases.values())
            .find_map(|l| match l {
                crate::network::Lease::Quarantined { name: q, node, .. } if q == name => {
                    Some(*node)
                }
                _ => None,
            })
    }

    /// Whether a new VM may take `name` (shared by `CreateVm` and the dry run).
    pub fn check_new_vm_name(&self, name: &str) -> Result<(), ApplyError> {
        match self.vms.get(name) {
            Some(_) => Err(ApplyError::AlreadyExists {
                what: "VM".into(),
                name: name.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Forgets VM `name` for good: its resources, its address (quarantined until its node
    /// confirms the old placement no longer runs, see `network`) and its name.
    fn forget_vm(&mut self, name: &str, index: u64, now: u64) {
        self.index_remove(name);
        if let Some(vm) = self.vms.remove(name) {
            self.bytes.vms = self
                .bytes
                .vms
                .saturating_sub(crate::budget::vm_spec_bytes(&vm.spec));
            if let Some(node) = vm.node_id {
                self.release(node, &vm.spec.resources());
            }
            if let (Some(net), Some(ip)) = (&vm.network, vm.ip) {
                self.release_vm_address(net, ip, name, vm.node_id.map(|n| (n, vm.epoch)));
            }
        }
        self.touched.insert(RowKey::Vm(name.to_string()));
        self.place_pending(index, now, BTreeSet::new(), BTreeSet::new());
    }

    /// Sets a worker's state; a node going down has its lease expired, so its workloads are
    /// taken off it (VMs re-placed or lost, tasks retried or lost).
    fn set_worker_state(&mut self, id: NodeId, state: NodeState, index: u64, now: u64) -> Outcome {
        let Some(w) = self.workers.get_mut(&id) else {
            return Err(ApplyError::not_found("node", id));
        };
        let was = w.state;
        w.state = state;
        self.touched.insert(RowKey::Worker(id));
        match state {
            NodeState::Up => self.place_pending(index, now, BTreeSet::new(), BTreeSet::new()),
            NodeState::Down if was != NodeState::Down => {
                self.node_fenced(id);
                self.requeue_tasks_from_node(id, index, now, &format!("node {id} is down"));
                let evicted = self.reschedule_from_down_node(id, now);
                self.place_pending(index, now, BTreeSet::new(), evicted);
            }
            _ => {}
        }
        let w = self
            .workers
            .get(&id)
            .cloned()
            .ok_or_else(|| ApplyError::not_found("node", id))?;
        Ok(Reply::Worker(w))
    }

    fn submit_task(&mut self, index: u64, now: u64, id: &str, spec: &TaskSpec) -> Outcome {
        task::validate_task_id(id)?;
        spec.validate()?;
        if self.tasks.contains_key(id) {
            return Err(ApplyError::AlreadyExists {
                what: "task".into(),
                name: id.to_string(),
            });
        }
        let active = self.tasks.len() - self.finished_tasks.len();
        if active >= MAX_ACTIVE_TASKS {
            return Err(ApplyError::LimitReached(format!(
                "the cluster already holds {MAX_ACTIVE_TASKS} unfinished tasks"
            )));
        }
        let weight = crate::budget::task_spec_bytes(spec);
        if self.bytes.tasks + weight > crate::budget::MAX_TASK_SPEC_BYTES {
            return Err(ApplyError::LimitReached(format!(
                "the cluster's tasks already take {} KiB of their {} KiB budget: wait for tasks to finish, or cancel some",
                self.bytes.tasks >> 10,
                crate::budget::MAX_TASK_SPEC_BYTES >> 10
            )));
        }
        if let Some(pin) = spec.node {
            let Some(w) = self.workers.get(&pin) else {
                return Err(ApplyError::not_found("node", pin));
            };
            let cap = self.settings.effective_capacity(&w.capacity);
            if !cap.fits(&spec.resources()) {
                return Err(ApplyError::NoCapacity(format!(
                    "node {pin} can never fit this task: it offers {} vCPUs and {} MiB memory",
                    cap.vcpus, cap.memory_mb
                )));
            }
        }
        let t = TaskRecord {
            id: id.to_string(),
            spec: spec.clone(),
            node_id: None,
            state: TaskState::Pending,
            attempt: 0,
            epoch: index,
            exit_code: None,
            duration_ms: None,
            reason: None,
            cancel_requested: false,
            submitted_ms: now,
            started_ms: None,
            finished_ms: None,
            finished_index: None,
            updated_ms: now,
        };
        self.pending_tasks.insert((now, id.to_string()));
        self.bytes.tasks += weight;
        self.tasks.insert(id.to_string(), t);
        self.touched.insert(RowKey::Task(id.to_string()));
        self.place_pending_tasks(index, now);
        Ok(Reply::Task(Box::new(self.tasks[id].clone())))
    }

    /// The task `id` if (`node`, `epoch`) is its current, unfinished assignment.
    fn current_task(
        &mut self,
        id: &str,
        node: NodeId,
        epoch: u64,
    ) -> Result<&mut TaskRecord, ApplyError> {
        let Some(t) = self.tasks.get_mut(id) else {
            return Err(ApplyError::not_found("task", id));
        };
        if t.epoch != epoch || t.node_id != Some(node) || t.state.is_finished() {
            return Err(ApplyError::StaleAttempt {
                id: id.to_string(),
                got: epoch,
                current: t.epoch,
                node: t.node_id,
            });
        }
        Ok(t)
    }

    /// Ends task `id` in `state`: frees what it held and records it as finished. (Eviction of
    /// old finished tasks is left to the caller, after it has read the record.)
    fn finish_task(
        &mut self,
        id: &str,
        index: u64,
        now: u64,
        state: TaskState,
        reason: Option<String>,
    ) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.state.is_finished() {
            return;
        }
        let held = t.node_id.map(|n| (n, t.spec.resources()));
        if t.node_id.is_none() {
            self.pending_tasks.remove(&(t.submitted_ms, id.to_string()));
        }
        t.state = state;
        t.reason = reason;
        t.finished_ms = Some(now);
        t.finished_index = Some(index);
        t.updated_ms = now;
        self.finished_tasks.insert((index, id.to_string()));
        self.touched.insert(RowKey::Task(id.to_string()));
        if let Some((n, res)) = held {
            self.release_task(n, &res);
        }
    }

    /// Forgets the oldest finished tasks beyond [`MAX_FINISHED_TASKS`].
    fn evict_finished_tasks(&mut self) {
        while self.finished_tasks.len() > MAX_FINISHED_TASKS {
            let Some((_, id)) = self.finished_tasks.pop_first() else {
                break;
            };
            if let Some(t) = self.tasks.remove(&id) {
                self.bytes.tasks = self
                    .bytes
                    .tasks
                    .saturating_sub(crate::budget::task_spec_bytes(&t.spec));
            }
            self.touched.insert(RowKey::Task(id));
        }
    }

    fn release_task(&mut self, node: NodeId, res: &Resources) {
        if let Some(w) = self.workers.get_mut(&node) {
            w.allocated = w.allocated.saturating_sub(res);
            self.touched.insert(RowKey::Worker(node));
        }
    }

    /// Node `id` is gone (down, removed, or shrunk): each unfinished task assigned there is
    /// retried elsewhere with a new attempt while attempts remain, else it is lost (or
    /// cancelled, when a cancel was pending).
    fn requeue_tasks_from_node(&mut self, id: NodeId, index: u64, now: u64, why: &str) {
        let on_node: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.node_id == Some(id) && !t.state.is_finished())
            .map(|t| t.id.clone())
            .collect();
        for tid in on_node {
            let Some(t) = self.tasks.get(&tid) else {
                continue;
            };
            let (cancel, attempt, max) = (t.cancel_requested, t.attempt, t.spec.max_attempts);
            if cancel {
                self.finish_task(
                    &tid,
                    index,
                    now,
                    TaskState::Cancelled,
                    Some(format!("cancelled; {why}")),
                );
            } else if attempt >= max {
                self.finish_task(
                    &tid,
                    index,
                    now,
                    TaskState::Lost,
                    Some(format!(
                        "{why} during attempt {attempt} of {max}; no attempt left"
                    )),
                );
            } else {
                let res = t.spec.resources();
                let Some(t) = self.tasks.get_mut(&tid) else {
                    continue;
                };
                t.node_id = None;
                t.state = TaskState::Pending;
                t.started_ms = None;
                t.reason = Some(format!("{why} during attempt {attempt} of {max}; retrying"));
                t.updated_ms = now;
                let key = (t.submitted_ms, tid.clone());
                self.pending_tasks.insert(key);
                self.touched.insert(RowKey::Task(tid.clone()));
                self.release_task(id, &res);
            }
        }
        self.evict_finished_tasks();
    }

    /// Where task `spec` would go now: an up node (the pinned one, if any) with room, the one
    /// with the most free vCPUs, then memory, then the lowest id. `Err` says why none.
    fn choose_task_node(&self, spec: &TaskSpec) -> Result<NodeId, String> {
        let need = spec.resources();
        let mut best: Option<(u32, u64, NodeId)> = None;
        for w in self.workers.values() {
            if w.state != NodeState::Up || spec.node.is_some_and(|p| p != w.id) {
                continue;
            }
            let free = self
                .settings
                .effective_capacity(&w.capacity)
                .saturating_sub(&w.allocated);
            if !free.fits(&need) {
                continue;
            }
            let better = match best {
                None => true,
                Some((c, m, _)) => (free.vcpus, free.memory_mb) > (c, m),
            };
            if better {
                best = Some((free.vcpus, free.memory_mb, w.id));
            }
        }
        match (best, spec.node) {
            (Some((_, _, n)), _) => Ok(n),
            (None, Some(p)) => match self.workers.get(&p) {
                Some(w) if w.state != NodeState::Up => {
                    Err(format!("waiting for node {p}: it is {}", w.state.as_str()))
                }
                Some(_) => Err(format!(
                    "waiting for node {p} to have {} free vCPUs and {} MiB memory",
                    need.vcpus, need.memory_mb
                )),
                None => Err(format!("node {p} is no longer in the cluster")),
            },
            (None, None) => Err(format!(
                "waiting for an up node with {} free vCPUs and {} MiB memory",
                need.vcpus, need.memory_mb
            )),
        }
    }

    /// Assigns every waiting task that fits somewhere, oldest first; the others keep waiting
    /// (with the reason). Each assignment is a new attempt whose epoch is `index`.
    fn place_pending_tasks(&mut self, index: u64, now: u64) {
        let waiting: Vec<(u64, String)> = self.pending_tasks.iter().cloned().collect();
        for key in waiting {
            let Some(t) = self.tasks.get(&key.1) else {
                continue;
            };
            match self.choose_task_node(&t.spec) {
                Ok(node) => {
                    let res = t.spec.resources();
                    self.pending_tasks.remove(&key);
                    let Some(t) = self.tasks.get_mut(&key.1) else {
                        continue;
                    };
                    t.node_id = Some(node);
                    t.attempt += 1;
                    t.epoch = index;
                    t.state = TaskState::Pending;
                    t.reason = None;
                    t.updated_ms = now;
                    self.touched.insert(RowKey::Task(key.1.clone()));
                    if let Some(w) = self.workers.get_mut(&node) {
                        w.allocated = w.allocated.saturating_add(&res);
                        self.touched.insert(RowKey::Worker(node));
                    }
                }
                Err(why) => {
                    let Some(t) = self.tasks.get_mut(&key.1) else {
                        continue;
                    };
                    // A retry keeps the story of why it is waiting until it is placed again.
                    if t.attempt == 0 && t.reason.as_deref() != Some(why.as_str()) {
                        t.reason = Some(why);
                        t.updated_ms = now;
                        self.touched.insert(RowKey::Task(key.1.clone()));
                    }
                }
            }
        }
    }

    /// Unassigned tasks, in the order they are placed.
    pub fn pending_task_ids(&self) -> impl Iterator<Item = &str> {
        self.pending_tasks.iter().map(|k| k.1.as_str())
    }

    /// Adds VM `name` to the derived indexes: its node and group when placed, else pending.
    fn index_add(&mut self, name: &str) {
        let Some(vm) = self.vms.get(name) else { return };
        match vm.node_id {
            Some(n) => {
                self.by_node
                    .entry(n)
                    .or_default()
                    .insert((vm.spec.priority, name.to_string()));
                // A VM leaving its node no longer holds its group's place there.
                if let (Some(g), false) = (&vm.spec.anti_affinity, vm.evacuating) {
                    self.groups
                        .entry(g.clone())
                        .or_default()
                        .insert(n, name.to_string());
                }
            }
            None if vm.state == VmState::Lost => {}
            None => {
                self.pending.insert(pending_key(vm));
            }
        }
    }

    /// Removes VM `name` from the derived indexes (the inverse of `index_add`).
    fn index_remove(&mut self, name: &str) {
        let Some(vm) = self.vms.get(name) else { return };
        match vm.node_id {
            Some(n) => {
                if let Some(set) = self.by_node.get_mut(&n) {
                    set.remove(&(vm.spec.priority, name.to_string()));
                    if set.is_empty() {
                        self.by_node.remove(&n);
                    }
                }
                if let Some(g) = &vm.spec.anti_affinity {
                    if let Some(nodes) = self.groups.get_mut(g) {
                        if nodes.get(&n).is_some_and(|v| v == name) {
                            nodes.remove(&n);
                        }
                        if nodes.is_empty() {
                            self.groups.remove(g);
                        }
                    }
                }
            }
            None => {
                self.pending.remove(&pending_key(vm));
            }
        }
    }

    /// Places the unplaced VM `name` on `node` with epoch `index`.
    fn place_vm(&mut self, name: &str, node: NodeId, index: u64, now: u64, explanation: String) {
        self.index_remove(name);
        let Some(vm) = self.vms.get_mut(name) else {
            return;
        };
        let res = vm.spec.resources();
        vm.node_id = Some(node);
        vm.epoch = index;
        vm.reason = None;
        vm.placement = Some(explanation);
        vm.updated_ms = now;
        vm.state = if vm.desired == Desired::Stopped {
            VmState::Stopped
        } else {
            VmState::Pending
        };
        if let Some(w) = self.workers.get_mut(&node) {
            w.allocated = w.allocated.saturating_add(&res);
            w.vms += 1;
            self.touched.insert(RowKey::Worker(node));
        }
        self.touched.insert(RowKey::Vm(name.to_string()));
        self.index_add(name);
    }

    /// A node went down: its VMs whose restart policy allows it go back to pending (to be
    /// placed elsewhere with a new epoch); the others become lost. Returns the rescheduled.
    fn reschedule_from_down_node(&mut self, id: NodeId, now: u64) -> BTreeSet<String> {
        let on_node: Vec<String> = self
            .by_node
            .get(&id)
            .map(|s| s.iter().map(|(_, n)| n.clone()).collect())
            .unwrap_or_default();
        let mut rescheduled = BTreeSet::new();
        for name in on_node {
            let Some(vm) = self.vms.get(&name) else {
                continue;
            };
            let policy = vm.spec.restart;
            let desired = vm.desired;
            self.unplace_vm(&name, now, format!("node {id} is down; rescheduled"));
            if let Some(vm) = self.vms.get_mut(&name) {
                vm.evacuating = false;
                if desired == Desired::Running && policy == crate::spec::RestartPolicy::Never {
                    self.index_remove(&name);
                    if let Some(vm) = self.vms.get_mut(&name) {
                        vm.state = VmState::Lost;
                        vm.reason = Some(format!(
                            "node {id} went down and its restart policy is never"
                        ));
                    }
                    continue;
                }
            }
            rescheduled.insert(name);
        }
        rescheduled
    }

    /// Takes VM `name` off its node, back to pending with `reason`.
    fn unplace_vm(&mut self, name: &str, now: u64, reason: String) {
        self.index_remove(name);
        let Some(vm) = self.vms.get_mut(name) else {
            return;
        };
        let res = vm.spec.resources();
        let node = vm.node_id.take();
        vm.state = VmState::Pending;
        vm.evacuating = false;
        vm.preempted_by = None;
        vm.reason = Some(reason);
        vm.placement = None;
        vm.updated_ms = now;
        self.touched.insert(RowKey::Vm(name.to_string()));
        if let Some(n) = node {
            self.release(n, &res);
        }
        self.index_add(name);
    }

    fn release(&mut self, node: NodeId, res: &Resources) {
        if let Some(w) = self.workers.get_mut(&node) {
            w.allocated = w.allocated.saturating_sub(res);
            w.vms = w.vms.saturating_sub(1);
            self.touched.insert(RowKey::Worker(node));
        }
    }

    /// Whether VM `name` may be running on its node now, as far as the log knows: only a VM
    /// whose node confirmed it ended, and which nothing will start again, is not.
    fn may_run(vm: &VmRecord) -> bool {
        match (vm.desired, vm.state) {
            (_, VmState::Lost) => false,
            (Desired::Stopped, VmState::Stopped | VmState::Failed) => false,
            (Desired::Running, VmState::Failed) => {
                vm.spec.restart != crate::spec::RestartPolicy::Never
            }
            _ => vm.node_id.is_some(),
        }
    }

    /// The one way a placed VM leaves a node that may still run it: it is marked evacuating
    /// (its node stops it, keeping its resources meanwhile) and is placed elsewhere only once
    /// that node confirmed it stopped, or its lease provably expired (the node is declared
    /// down). A VM that cannot be running is unplaced at once; returns whether it was.
    fn evacuate(
        &mut self,
        name: &str,
        now: u64,
        reason: String,
        preempted_by: Option<&str>,
    ) -> bool {
        let Some(vm) = self.vms.get_mut(name) else {
            return false;
        };
        if vm.node_id.is_none() {
            return false;
        }
        if !Self::may_run(vm) {
            self.unplace_vm(name, now, reason);
            return true;
        }
        self.index_remove(name);
        let Some(vm) = self.vms.get_mut(name) else {
            return false;
        };
        vm.evacuating = true;
        vm.preempted_by = preempted_by.map(str::to_string);
        vm.reason = Some(reason);
        vm.updated_ms = now;
        self.touched.insert(RowKey::Vm(name.to_string()));
        self.index_add(name);
        false
    }

    /// Preemption by `by`: its victims leave their node (two phases, see [`Self::evacuate`])
    /// and `by` is placed there at once, so the room is its own (the node holds both while
    /// the victims stop: what leaves is not counted against its capacity). Its executor starts
    /// it only once no victim of it still runs there (`planner::plan`). Returns the victims.
    fn preempt(
        &mut self,
        by: &VmSpec,
        p: &scheduler::Preemption,
        index: u64,
        now: u64,
    ) -> BTreeSet<String> {
        let mut waiting_for = Vec::new();
        for v in &p.victims {
            if !self.evacuate(v, now, scheduler::preempted_reason(by), Some(&by.name)) {
                waiting_for.push(v.clone());
            }
        }
        self.place_vm(
            &by.name,
            p.node,
            index,
            now,
            scheduler::preemption_text(by, p),
        );
        if !waiting_for.is_empty() {
            if let Some(vm) = self.vms.get_mut(&by.name) {
                vm.reason = Some(format!(
                    "waiting for {} to stop on node {} before it starts",
                    waiting_for.join(", "),
                    p.node
                ));
            }
        }
        p.victims.iter().cloned().collect()
    }

    /// After a re-registration: evicts the VMs on `id` whose label or feature constraints the
    /// node no longer meets, then (lowest priority first) VMs until the allocation fits the
    /// node's capacity again. Returns the evicted VMs.
    fn evict_misfits(&mut self, id: NodeId, index: u64, now: u64) -> BTreeSet<String> {
        let mut evicted = BTreeSet::new();
        let Some(w) = self.workers.get(&id) else {
            return evicted;
        };
        let on_node: Vec<String> = self
            .by_node
            .get(&id)
            .map(|s| s.iter().map(|(_, n)| n.clone()).collect())
            .unwrap_or_default();
        let mut misfits = Vec::new();
        for name in &on_node {
            if let Some(why) = self
                .vms
                .get(name)
                .and_then(|vm| scheduler::constraint_violation(&vm.spec, w))
            {
                misfits.push((name.clone(), why));
            }
        }
        let _ = index;
        for (name, why) in misfits {
            if self.evacuate(&name, now, why, None) {
                evicted.insert(name);
            }
        }
        // Then, lowest priority first, VMs until what stays fits the new capacity. Tasks are
        // never evicted (a one-shot command cannot move without running twice): they finish.
        let Some(w) = self.workers.get(&id) else {
            return evicted;
        };
        let cap = self.settings.effective_capacity(&w.capacity);
        let mut staying = w.allocated.saturating_sub(&self.leaving_allocation(id));
        let why = format!(
            "node {id} re-registered with less capacity ({} vCPUs, {} MiB memory, {} GiB disk)",
            cap.vcpus, cap.memory_mb, cap.disk_gb
        );
        let candidates: Vec<String> = self
            .by_node
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(_, n)| n.clone())
            .collect();
        for victim in candidates {
            if cap.fits(&staying) {
                break;
            }
            let Some(vm) = self.vms.get(&victim) else {
                continue;
            };
            if vm.evacuating {
                continue;
            }
            let res = vm.spec.resources();
            staying = staying.saturating_sub(&res);
            if self.evacuate(&victim, now, why.clone(), None) {
                evicted.insert(victim);
            }
        }
        evicted
    }

    /// What the VMs leaving node `id` (evacuating) still hold there.
    fn leaving_allocation(&self, id: NodeId) -> Resources {
        self.by_node
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|(_, n)| self.vms.get(n))
            .filter(|v| v.evacuating)
            .fold(Resources::default(), |acc, v| {
                acc.saturating_add(&v.spec.resources())
            })
    }

    /// The largest free amount of each resource over up nodes, each with the lowest node id
    /// having it; `None` when no node is up.
    fn free_bound(&self) -> Option<[(u64, NodeId); 3]> {
        let mut b: Option<[(u64, NodeId); 3]> = None;
        for w in self.workers.values().filter(|w| w.state == NodeState::Up) {
            let free = self
                .settings
                .effective_capacity(&w.capacity)
                .saturating_sub(&w.allocated);
            let free = [u64::from(free.vcpus), free.memory_mb, free.disk_gb];
            let b = b.get_or_insert([(free[0], w.id), (free[1], w.id), (free[2], w.id)]);
            for (slot, v) in b.iter_mut().zip(free) {
                if v > slot.0 {
                    *slot = (v, w.id);
                }
            }
        }
        b
    }

    /// Tries to place every unplaced VM: highest priority first, then oldest, then by name.
    /// A pending VM with `preempt` may evict lower-priority VMs, except the VMs in `barred`
    /// (preempted earlier in the same apply), so preemption cannot cascade or loop. VMs in
    /// `evicted` (taken off a node in this apply) that stay pending keep their eviction reason
    /// ("preempted by VM x (priority p)", "node 3 left the cluster", ...).
    ///
    /// Cost: one ordered walk of the pending set. An unconstrained VM that needs more of some
    /// resource than any up node has free is refused from a per-round bound without looking at
    /// the nodes (with the same reason text `decide` would give); others cost one scan of the
    /// workers.
    fn place_pending(
        &mut self,
        index: u64,
        now: u64,
        mut barred: BTreeSet<String>,
        mut evicted: BTreeSet<String>,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let mut bound = self.free_bound();
        // Fast-path refusal texts by (vCPUs, MiB, GiB) needed; valid while `bound` is.
        let mut texts: BTreeMap<(u32, u64, u64), Option<String>> = BTreeMap::new();
        let mut cursor: Option<PendingKey> = None;
        loop {
            let next = match &cursor {
                None => self.pending.first().cloned(),
                Some(c) => self
                    .pending
                    .range((Bound::Excluded(c.clone()), Bound::Unbounded))
                    .next()
                    .cloned(),
            };
            let Some(key) = next else { break };
            let name = key.2.clone();
            cursor = Some(key);
            if let Some(n) = self.ghost_of(&name) {
                let why = ghost_reason(&name, n);
                if let Some(vm) = self.vms.get_mut(&name) {
                    if vm.reason.as_deref() != Some(why.as_str()) {
                        vm.reason = Some(why);
                        vm.updated_ms = now;
                        self.touched.insert(RowKey::Vm(name));
                    }
                }
                continue;
            }
            let Some(vm) = self.vms.get_mut(&name) else {
                continue;
            };
            let can_preempt = vm.spec.preempt && !barred.contains(&name);
            let keep_reason = evicted.contains(&name);
            if !can_preempt && scheduler::unconstrained(&vm.spec) {
                // Fast path: more than any up node has free of some resource. The refusal
                // follows from the bound alone, exactly as `decide` would word it.
                let need = vm.spec.resources();
                let text = texts
                    .entry((need.vcpus, need.memory_mb, need.disk_gb))
                    .or_insert_with(|| {
                        bound
                            .as_ref()
                            .and_then(|b| scheduler::no_room_text(&need, b))
                    });
                if let Some(text) = text {
                    if !keep_reason && vm.reason.as_deref() != Some(text.as_str()) {
                        vm.reason = Some(text.clone());
                        vm.updated_ms = now;
                        self.touched.insert(RowKey::Vm(name));
                    }
                    continue;
                }
            }
            let spec = vm.spec.clone();
            let decision = scheduler::decide(self, &spec);
            if let Some(node) = decision.node {
                self.place_vm(&name, node, index, now, decision.text);
                bound = self.free_bound();
                texts.clear();
                continue;
            }
            if can_preempt {
                if let Some(p) = scheduler::plan_preemption(self, &spec) {
                    // Victims have lower priority, so they sort after `name` and are retried
                    // later in this same walk.
                    let victims = self.preempt(&spec, &p, index, now);
                    evicted.extend(victims.iter().cloned());
                    barred.extend(victims);
                    bound = self.free_bound();
                    texts.clear();
                    continue;
                }
            }
            if keep_reason {
                continue;
            }
            if let Some(vm) = self.vms.get_mut(&name) {
                if vm.reason.as_deref() != Some(decision.text.as_str()) {
                    vm.reason = Some(decision.text);
                    vm.updated_ms = now;
                    self.touched.insert(RowKey::Vm(name));
                }
            }
        }
    }

    /// Anti-affinity group `group`: node -> the group's VM placed there.
    pub fn anti_affinity_nodes(&self, group: &str) -> Option<&BTreeMap<NodeId, String>> {
        self.groups.get(group)
    }

    /// The VMs placed on `node`, as (priority, name), lowest priority first.
    pub fn vms_on_node(&self, node: NodeId) -> impl Iterator<Item = (u8, &str)> {
        self.by_node
            .get(&node)
            .into_iter()
            .flatten()
            .map(|(p, n)| (*p, n.as_str()))
    }

    /// The unplaced VMs, in the order they are retried.
    pub fn pending_vms(&self) -> impl Iterator<Item = &str> {
        self.pending.iter().map(|k| k.2.as_str())
    }

    /// The rows changed since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<RowKey> {
        std::mem::take(&mut self.touched)
    }

    /// The serialized value of a row, `None` when the row no longer exists.
    pub fn row(&self, key: &RowKey) -> Option<Vec<u8>> {
        let json = match key {
            RowKey::Vm(n) => self.vms.get(n).map(serde_json::to_vec),
            RowKey::Worker(id) => self.workers.get(id).map(serde_json::to_vec),
            RowKey::Request(id) => self.requests.get(id).map(serde_json::to_vec),
            RowKey::Settings => Some(serde_json::to_vec(&self.settings)),
            RowKey::Task(id) => self.tasks.get(id).map(serde_json::to_vec),
            RowKey::Liveness => Some(serde_json::to_vec(&self.liveness)),
            RowKey::NodeIds => Some(serde_json::to_vec(&self.node_ids)),
            RowKey::Network(n) => self.networks.get(n).map(serde_json::to_vec),
            RowKey::Security => Some(serde_json::to_vec(&self.security)),
        };
        // Serializing these plain data types cannot fail.
        json.and_then(Result::ok)
    }

    /// Every row, for rewriting the store from a snapshot.
    pub fn all_rows(&self) -> Vec<(String, Vec<u8>)> {
        let keys = self
            .vms
            .keys()
            .map(|n| RowKey::Vm(n.clone()))
            .chain(self.workers.keys().map(|id| RowKey::Worker(*id)))
            .chain(self.requests.keys().map(|id| RowKey::Request(id.clone())))
            .chain(self.tasks.keys().map(|id| RowKey::Task(id.clone())))
            .chain(self.networks.keys().map(|n| RowKey::Network(n.clone())))
            .chain([
                RowKey::Settings,
                RowKey::Liveness,
                RowKey::NodeIds,
                RowKey::Security,
            ]);
        keys.filter_map(|k| self.row(&k).map(|v| (k.encode(), v)))
            .collect()
    }

    /// Rebuilds the state from stored rows (the inverse of [`Self::all_rows`]).
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, String> {
        let mut s = ClusterState::default();
        for (key, value) in rows {
            let bad = |e: serde_json::Error| format!("corrupt row {key}: {e}");
            if let Some(name) = key.strip_prefix("vm/") {
                s.vms.insert(
                    name.to_string(),
                    serde_json::from_slice(value).map_err(bad)?,
                );
            } else if let Some(id) = key.strip_prefix("worker/") {
                let id: NodeId = id.parse().map_err(|_| format!("corrupt row key {key}"))?;
                s.workers
                    .insert(id, serde_json::from_slice(value).map_err(bad)?);
            } else if key == SECURITY_ROW {
                s.security = serde_json::from_slice(value).map_err(bad)?;
            } else if key == SETTINGS_ROW {
                s.settings = serde_json::from_slice(value).map_err(bad)?;
            } else if key == LIVENESS_ROW {
                s.liveness = serde_json::from_slice(value).map_err(bad)?;
            } else if key == NODE_IDS_ROW {
                s.node_ids = serde_json::from_slice(value).map_err(bad)?;
            } else if let Some(id) = key.strip_prefix("task/") {
                s.tasks
                    .insert(id.to_string(), serde_json::from_slice(value).map_err(bad)?);
            } else if let Some(name) = key.strip_prefix("net/") {
                s.networks.insert(
                    name.to_string(),
                    serde_json::from_slice(value).map_err(bad)?,
                );
            } else if let Some(id) = key.strip_prefix("req/") {
                s.requests
                    .insert(id.to_string(), serde_json::from_slice(value).map_err(bad)?);
            } else {
                return Err(format!("unknown row key {key}"));
            }
        }
        s.rebuild_derived();
        Ok(s)
    }

    /// Restores the fields that are not serialized.
    pub fn rebuild_derived(&mut self) {
        self.request_order = self
            .requests
            .iter()
            .map(|(id, r)| (r.index, id.clone()))
            .collect();
        self.bytes = Bytes {
            vms: self
                .vms
                .values()
                .map(|v| crate::budget::vm_spec_bytes(&v.spec))
                .sum(),
            tasks: self
                .tasks
                .values()
                .map(|t| crate::budget::task_spec_bytes(&t.spec))
                .sum(),
            requests: self
                .requests
                .iter()
                .map(|(id, r)| remembered_bytes(id, r))
                .sum(),
        };
        self.groups.clear();
        self.by_node.clear();
        self.pending.clear();
        let names: Vec<String> = self.vms.keys().cloned().collect();
        for name in names {
            self.index_add(&name);
        }
        self.pending_tasks.clear();
        self.finished_tasks.clear();
        for t in self.tasks.values() {
            if t.state.is_finished() {
                self.finished_tasks
                    .insert((t.finished_index.unwrap_or(0), t.id.clone()));
            } else if t.node_id.is_none() {
                self.pending_tasks.insert((t.submitted_ms, t.id.clone()));
            }
        }
        self.touched.clear();
    }

    /// A digest of the whole state; equal on every node at the same applied index.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// Checks the invariants that must hold after every apply; returns the first violation:
    /// allocations match the VMs placed, no node holds more than its capacity (vCPUs scaled by
    /// the overcommit ratio), pinned VMs are on their node, placed VMs meet their label and
    /// feature constraints, no anti-affinity group has two VMs on one node, and the derived
    /// indexes equal a rebuild from scratch.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut alloc: BTreeMap<NodeId, (Resources, u32)> = BTreeMap::new();
        for vm in self.vms.values() {
            if let Some(n) = vm.node_id {
                let Some(w) = self.workers.get(&n) else {
                    return Err(format!("VM {} is placed on unknown node {n}", vm.spec.name));
                };
                if let Some(why) =
                    scheduler::constraint_violation(&vm.spec, w).filter(|_| !vm.evacuating)
                {
                    return Err(format!("VM {} breaks its constraints: {why}", vm.spec.name));
                }
                let e = alloc.entry(n).or_default();
                e.0 = e.0.saturating_add(&vm.spec.resources());
                e.1 += 1;
            } else if !matches!(vm.state, VmState::Pending | VmState::Lost) {
                return Err(format!(
                    "VM {} is unplaced but {}",
                    vm.spec.name,
                    vm.state.as_str()
                ));
            }
        }
        let mut task_alloc: BTreeMap<NodeId, Resources> = BTreeMap::new();
        for t in self.tasks.values() {
            if t.state.is_finished() {
                continue;
            }
            if let Some(n) = t.node_id {
                if !self.workers.contains_key(&n) {
                    return Err(format!("task {} is assigned to unknown node {n}", t.id));
                }
                if t.spec.node.is_some_and(|p| p != n) {
                    return Err(format!(
                        "task {} is pinned to node {:?} but assigned to node {n}",
                        t.id, t.spec.node
                    ));
                }
                if t.attempt == 0 || t.attempt > t.spec.max_attempts {
                    return Err(format!(
                        "task {} is assigned with attempt {}",
                        t.id, t.attempt
                    ));
                }
                let e = task_alloc.entry(n).or_default();
                *e = e.saturating_add(&t.spec.resources());
            } else if t.state != TaskState::Pending {
                return Err(format!(
                    "task {} is unassigned but {}",
                    t.id,
                    t.state.as_str()
                ));
            }
        }
        let finished = self
            .tasks
            .values()
            .filter(|t| t.state.is_finished())
            .count();
        if finished > MAX_FINISHED_TASKS {
            return Err(format!(
                "{finished} finished tasks kept, above the limit of {MAX_FINISHED_TASKS}"
            ));
        }
        for w in self.workers.values() {
            let (a, count) = alloc.get(&w.id).copied().unwrap_or_default();
            let a = a.saturating_add(&task_alloc.get(&w.id).copied().unwrap_or_default());
            if a != w.allocated || count != w.vms {
                return Err(format!(
                    "node {} records allocation {:?}/{} but VMs and tasks sum to {:?}/{}",
                    w.id, w.allocated, w.vms, a, count
                ));
            }
            // A node that shrank (re-registered with less) may hold more than its capacity
            // while the VMs leaving it stop and its tasks finish; nothing new lands there.
            let cap = self.settings.effective_capacity(&w.capacity);
            let staying = w
                .allocated
                .saturating_sub(&self.leaving_allocation(w.id))
                .saturating_sub(&task_alloc.get(&w.id).copied().unwrap_or_default());
            if !cap.fits(&staying) {
                return Err(format!(
                    "node {} over-committed: {:?} > {:?} (vcpu overcommit {}%)",
                    w.id, w.allocated, cap, self.settings.vcpu_overcommit_pct
                ));
            }
        }
        let mut groups: BTreeSet<(String, NodeId)> = BTreeSet::new();
        for vm in self.vms.values() {
            if let (Some(g), Some(n), false) = (&vm.spec.anti_affinity, vm.node_id, vm.evacuating) {
                if !groups.insert((g.clone(), n)) {
                    return Err(format!("anti-affinity group {g} has two VMs on node {n}"));
                }
            }
        }
        self.settings
            .validate()
            .map_err(|e| format!("invalid settings: {e}"))?;
        self.check_network_invariants()?;
        self.liveness
            .validate()
            .map_err(|e| format!("invalid lease settings: {e}"))?;
        for vm in self.vms.values() {
            if vm.evacuating && vm.node_id.is_none() {
                return Err(format!("VM {} is evacuating but not placed", vm.spec.name));
            }
            if vm.preempted_by.is_some() && !vm.evacuating {
                return Err(format!(
                    "VM {} records a preemption but is not evacuating",
                    vm.spec.name
                ));
            }
        }
        let mut fresh = ClusterState {
            workers: BTreeMap::new(),
            vms: self.vms.clone(),
            requests: BTreeMap::new(),
            settings: self.settings,
            tasks: self.tasks.clone(),
            ..ClusterState::default()
        };
        fresh.rebuild_derived();
        if fresh.groups != self.groups {
            return Err("anti-affinity index differs from a rebuild".into());
        }
        if fresh.by_node != self.by_node {
            return Err("per-node VM index differs from a rebuild".into());
        }
        if fresh.pending != self.pending {
            return Err("pending index differs from a rebuild".into());
        }
        if fresh.pending_tasks != self.pending_tasks || fresh.finished_tasks != self.finished_tasks
        {
            return Err("task indexes differ from a rebuild".into());
        }
        // (The de-duplication bytes are left out: recounting them costs a serialization of
        // every remembered outcome, and this runs after every apply in debug builds.)
        if (fresh.bytes.vms, fresh.bytes.tasks) != (self.bytes.vms, self.bytes.tasks) {
            return Err(format!(
                "byte accounting {:?} differs from a rebuild {:?}",
                self.bytes, fresh.bytes
            ));
        }
        Ok(())
    }
}
