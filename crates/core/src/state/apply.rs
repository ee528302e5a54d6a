//! The command dispatcher of [`ClusterState::apply`]: one arm per [`Command`].

use super::{ghost_reason, ClusterState, RowKey};
use crate::command::{ApplyError, Command, Outcome, Reply};
use crate::model::{Desired, NodeState, VmRecord, VmState, Worker};
use crate::scheduler::{self, SchedulerSettings};
use crate::spec::{self, Resources, MAX_WORKERS};
use crate::task::{self, TaskState};
use std::collections::BTreeSet;

impl ClusterState {
    pub(super) fn apply_command(
        &mut self,
        term: u64,
        index: u64,
        now: u64,
        cmd: &Command,
    ) -> Outcome {
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
                if *state == NodeState::ShuttingDown {
                    return Err(ApplyError::invalid(format!(
                        "only node {id} itself says it is shutting down (when it stops gracefully); to take it out of service, drain it"
                    )));
                }
                if matches!(w.state, NodeState::Down | NodeState::ShuttingDown)
                    && *state == NodeState::Up
                {
                    return Err(ApplyError::invalid(format!(
                        "node {id} is {}: it comes back up by itself once its heartbeats return",
                        w.state.as_str()
                    )));
                }
                self.set_worker_state(*id, *state, index, now)
            }
            Command::WorkerShuttingDown { id } => {
                let Some(w) = self.workers.get(id) else {
                    return Err(ApplyError::not_found("node", id));
                };
                match w.state {
                    NodeState::Up => {
                        self.set_worker_state(*id, NodeState::ShuttingDown, index, now)
                    }
                    // Draining stays draining (the operator's choice outlives a restart); down
                    // and shutting-down stay as they are.
                    _ => Ok(Reply::Worker(w.clone())),
                }
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
                    (NodeState::Down | NodeState::ShuttingDown, NodeState::Up)
                    | (
                        NodeState::Up | NodeState::Draining | NodeState::ShuttingDown,
                        NodeState::Down,
                    ) => self.set_worker_state(*id, *state, index, now),
                    (_, NodeState::Draining | NodeState::ShuttingDown) => {
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
                // The same refusals as the dry run (`explain`).
                self.check_create_vm(spec)?;
                let weight = crate::budget::vm_spec_bytes(spec);
                let decision = scheduler::decide(self.placement_view(), spec);
                let preemption = match decision.node {
                    None if spec.preempt => scheduler::plan_preemption(self.placement_view(), spec),
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
                    created_by: None,
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
}
