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

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{ApplyError, Command, Outcome, Reply, Request};
use crate::scheduler;
use crate::spec::{self, NodeId, Resources, VmSpec, MAX_VMS, MAX_WORKERS};

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
}

impl RowKey {
    /// Stable textual key for the store.
    pub fn encode(&self) -> String {
        match self {
            RowKey::Vm(n) => format!("vm/{n}"),
            RowKey::Worker(id) => format!("worker/{id:020}"),
            RowKey::Request(id) => format!("req/{id}"),
        }
    }
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
    /// Rows changed since the last `take_touched`; not part of the state.
    #[serde(skip)]
    touched: BTreeSet<RowKey>,
    /// `requests` ordered by log index, for eviction; derived, rebuilt on load.
    #[serde(skip)]
    request_order: BTreeMap<u64, String>,
}

impl ClusterState {
    /// Applies one committed request at log `index`. Deterministic; a refused request changes
    /// nothing (except remembering its outcome for de-duplication).
    pub fn apply(&mut self, index: u64, req: &Request) -> Outcome {
        if let Some(id) = &req.request_id {
            if let Some(seen) = self.requests.get(id) {
                return seen.outcome.clone();
            }
        }
        let outcome = self.apply_command(index, req.time_ms, &req.command);
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
        self.requests.insert(id, Remembered { index, outcome });
        while self.requests.len() > DEDUP_WINDOW {
            let Some((_, oldest)) = self.request_order.pop_first() else { break };
            self.requests.remove(&oldest);
            self.touched.insert(RowKey::Request(oldest));
        }
    }

    fn apply_command(&mut self, index: u64, now: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::RegisterWorker { id, addr, capacity, kvm, labels } => {
                if addr.is_empty() || addr.len() > spec::MAX_ADDR_LEN {
                    return Err(ApplyError::invalid("worker address must be 1 to 256 bytes"));
                }
                spec::validate_labels(labels)?;
                if !self.workers.contains_key(id) && self.workers.len() >= MAX_WORKERS {
                    return Err(ApplyError::LimitReached(format!("the cluster already has {MAX_WORKERS} workers")));
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
                let w = w.clone();
                self.touched.insert(RowKey::Worker(*id));
                // New capacity may let pending VMs in.
                self.place_pending(index, now);
                Ok(Reply::Worker(self.workers.get(&w.id).cloned().unwrap_or(w)))
            }
            Command::RemoveWorker { id } => {
                if self.workers.remove(id).is_none() {
                    return Err(ApplyError::not_found("node", id));
                }
                self.touched.insert(RowKey::Worker(*id));
                let names: Vec<String> =
                    self.vms.values().filter(|v| v.node_id == Some(*id)).map(|v| v.spec.name.clone()).collect();
                for name in names {
                    if let Some(vm) = self.vms.get_mut(&name) {
                        vm.node_id = None;
                        vm.state = VmState::Pending;
                        vm.reason = Some(format!("node {id} left the cluster"));
                        vm.updated_ms = now;
                        self.touched.insert(RowKey::Vm(name));
                    }
                }
                self.place_pending(index, now);
                Ok(Reply::Done)
            }
            Command::SetWorkerState { id, state } => {
                let Some(w) = self.workers.get_mut(id) else {
                    return Err(ApplyError::not_found("node", id));
                };
                w.state = *state;
                let w = w.clone();
                self.touched.insert(RowKey::Worker(*id));
                if *state == NodeState::Up {
                    self.place_pending(index, now);
                }
                Ok(Reply::Worker(w))
            }
            Command::CreateVm { spec } => {
                spec.validate()?;
                if self.vms.contains_key(&spec.name) {
                    return Err(ApplyError::AlreadyExists { what: "VM".into(), name: spec.name.clone() });
                }
                if self.vms.len() >= MAX_VMS {
                    return Err(ApplyError::LimitReached(format!("the cluster already holds {MAX_VMS} VMs")));
                }
                if let Some(pin) = spec.node {
                    if !self.workers.contains_key(&pin) {
                        return Err(ApplyError::not_found("node", pin));
                    }
                }
                let node = scheduler::place(self, spec)?;
                let desired = if spec.start { Desired::Running } else { Desired::Stopped };
                let state = if spec.start { VmState::Pending } else { VmState::Stopped };
                let vm = VmRecord {
                    spec: spec.clone(),
                    node_id: None,
                    desired,
                    state,
                    epoch: 0,
                    reason: None,
                    created_ms: now,
                    updated_ms: now,
                    restarts: 0,
                };
                self.vms.insert(spec.name.clone(), vm);
                self.assign(&spec.name, node, index);
                self.touched.insert(RowKey::Vm(spec.name.clone()));
                Ok(Reply::Vm(self.vms[&spec.name].clone()))
            }
            Command::DeleteVm { name } => {
                let Some(vm) = self.vms.remove(name) else {
                    return Err(ApplyError::not_found("VM", name));
                };
                if let Some(node) = vm.node_id {
                    self.release(node, &vm.spec.resources());
                }
                self.touched.insert(RowKey::Vm(name.clone()));
                self.place_pending(index, now);
                Ok(Reply::Done)
            }
            Command::SetVmDesired { name, desired } => {
                let Some(vm) = self.vms.get_mut(name) else {
                    return Err(ApplyError::not_found("VM", name));
                };
                vm.desired = *desired;
                vm.updated_ms = now;
                let vm = vm.clone();
                self.touched.insert(RowKey::Vm(name.clone()));
                Ok(Reply::Vm(vm))
            }
            Command::ReportVmStatus { name, node_id, epoch, state, reason } => {
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
                if *state == VmState::Starting && vm.state == VmState::Failed && vm.desired == Desired::Running {
                    vm.restarts = vm.restarts.saturating_add(1);
                }
                vm.state = *state;
                vm.reason = reason.clone();
                vm.updated_ms = now;
                let vm = vm.clone();
                self.touched.insert(RowKey::Vm(name.clone()));
                Ok(Reply::Vm(vm))
            }
        }
    }

    /// Places `name` on `node` (or leaves it pending), with epoch `index`.
    fn assign(&mut self, name: &str, node: Option<NodeId>, index: u64) {
        let Some(vm) = self.vms.get_mut(name) else { return };
        let res = vm.spec.resources();
        vm.node_id = node;
        vm.epoch = index;
        match node {
            Some(_) => vm.reason = None,
            None => {
                vm.state = VmState::Pending;
            }
        }
        if let Some(n) = node {
            if let Some(w) = self.workers.get_mut(&n) {
                w.allocated = w.allocated.saturating_add(&res);
                w.vms += 1;
                self.touched.insert(RowKey::Worker(n));
            }
        }
    }

    fn release(&mut self, node: NodeId, res: &Resources) {
        if let Some(w) = self.workers.get_mut(&node) {
            w.allocated = w.allocated.saturating_sub(res);
            w.vms = w.vms.saturating_sub(1);
            self.touched.insert(RowKey::Worker(node));
        }
    }

    /// Tries to place every unplaced VM, oldest name order first (deterministic).
    fn place_pending(&mut self, index: u64, now: u64) {
        let pending: Vec<String> =
            self.vms.values().filter(|v| v.node_id.is_none()).map(|v| v.spec.name.clone()).collect();
        for name in pending {
            let spec = self.vms[&name].spec.clone();
            match scheduler::place(self, &spec) {
                Ok(Some(node)) => {
                    self.assign(&name, Some(node), index);
                    if let Some(vm) = self.vms.get_mut(&name) {
                        vm.updated_ms = now;
                        if vm.desired == Desired::Stopped {
                            vm.state = VmState::Stopped;
                        }
                    }
                    self.touched.insert(RowKey::Vm(name));
                }
                Ok(None) | Err(_) => {}
            }
        }
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
            .chain(self.requests.keys().map(|id| RowKey::Request(id.clone())));
        keys.filter_map(|k| self.row(&k).map(|v| (k.encode(), v))).collect()
    }

    /// Rebuilds the state from stored rows (the inverse of [`Self::all_rows`]).
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<Self, String> {
        let mut s = ClusterState::default();
        for (key, value) in rows {
            let bad = |e: serde_json::Error| format!("corrupt row {key}: {e}");
            if let Some(name) = key.strip_prefix("vm/") {
                s.vms.insert(name.to_string(), serde_json::from_slice(value).map_err(bad)?);
            } else if let Some(id) = key.strip_prefix("worker/") {
                let id: NodeId = id.parse().map_err(|_| format!("corrupt row key {key}"))?;
                s.workers.insert(id, serde_json::from_slice(value).map_err(bad)?);
            } else if let Some(id) = key.strip_prefix("req/") {
                s.requests.insert(id.to_string(), serde_json::from_slice(value).map_err(bad)?);
            } else {
                return Err(format!("unknown row key {key}"));
            }
        }
        s.rebuild_derived();
        Ok(s)
    }

    /// Restores the fields that are not serialized.
    pub fn rebuild_derived(&mut self) {
        self.request_order = self.requests.iter().map(|(id, r)| (r.index, id.clone())).collect();
        self.touched.clear();
    }

    /// A digest of the whole state; equal on every node at the same applied index.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// Checks the invariants that must hold after every apply; returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut alloc: BTreeMap<NodeId, (Resources, u32)> = BTreeMap::new();
        for vm in self.vms.values() {
            if let Some(n) = vm.node_id {
                if !self.workers.contains_key(&n) {
                    return Err(format!("VM {} is placed on unknown node {n}", vm.spec.name));
                }
                if let Some(pin) = vm.spec.node {
                    if pin != n {
                        return Err(format!("VM {} is pinned to {pin} but placed on {n}", vm.spec.name));
                    }
                }
                let e = alloc.entry(n).or_default();
                e.0 = e.0.saturating_add(&vm.spec.resources());
                e.1 += 1;
            }
        }
        for w in self.workers.values() {
            let (a, count) = alloc.get(&w.id).copied().unwrap_or_default();
            if a != w.allocated || count != w.vms {
                return Err(format!("node {} records allocation {:?}/{} but VMs sum to {:?}/{}", w.id, w.allocated, w.vms, a, count));
            }
            if !w.capacity.fits(&w.allocated) {
                return Err(format!("node {} over-committed: {:?} > {:?}", w.id, w.allocated, w.capacity));
            }
        }
        let mut groups: BTreeSet<(String, NodeId)> = BTreeSet::new();
        for vm in self.vms.values() {
            if let (Some(g), Some(n)) = (&vm.spec.anti_affinity, vm.node_id) {
                if !groups.insert((g.clone(), n)) {
                    return Err(format!("anti-affinity group {g} has two VMs on node {n}"));
                }
            }
        }
        Ok(())
    }
}
