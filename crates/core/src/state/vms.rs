//! The VM rules: placing, evacuating, preempting and forgetting VMs, and node state changes.

use super::index::PendingKey;
use super::{ghost_reason, ClusterState, RowKey};
use crate::command::{ApplyError, Outcome, Reply};
use crate::model::{Desired, NodeState, VmRecord, VmState};
use crate::scheduler;
use crate::spec::{NodeId, Resources, VmSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

impl ClusterState {
    /// The node where a deleted VM named `name` may still run (its address waits in
    /// quarantine for that node's confirmation, or its fencing): a new VM of that name is not
    /// placed until then, so two of one name never run at once. O(log n): an index of the
    /// quarantined leases kept by `apply` (see `network`), checked by `check_invariants`.
    pub fn ghost_of(&self, name: &str) -> Option<NodeId> {
        // The first quarantine by (network, offset): the one a scan of the leases finds first.
        self.ghosts
            .get(name)
            .and_then(|q| q.values().next().copied())
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
    pub(super) fn forget_vm(&mut self, name: &str, index: u64, now: u64) {
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
    pub(super) fn set_worker_state(
        &mut self,
        id: NodeId,
        state: NodeState,
        index: u64,
        now: u64,
    ) -> Outcome {
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

    /// Places the unplaced VM `name` on `node` with epoch `index`.
    pub(super) fn place_vm(
        &mut self,
        name: &str,
        node: NodeId,
        index: u64,
        now: u64,
        explanation: String,
    ) {
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
    pub(super) fn reschedule_from_down_node(&mut self, id: NodeId, now: u64) -> BTreeSet<String> {
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
    pub(super) fn unplace_vm(&mut self, name: &str, now: u64, reason: String) {
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

    pub(super) fn release(&mut self, node: NodeId, res: &Resources) {
        if let Some(w) = self.workers.get_mut(&node) {
            w.allocated = w.allocated.saturating_sub(res);
            w.vms = w.vms.saturating_sub(1);
            self.touched.insert(RowKey::Worker(node));
        }
    }

    /// Whether VM `name` may be running on its node now, as far as the log knows: only a VM
    /// whose node confirmed it ended, and which nothing will start again, is not.
    pub(super) fn may_run(vm: &VmRecord) -> bool {
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
    pub(super) fn evacuate(
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
    pub(super) fn preempt(
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
    pub(super) fn evict_misfits(&mut self, id: NodeId, index: u64, now: u64) -> BTreeSet<String> {
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
    pub(super) fn leaving_allocation(&self, id: NodeId) -> Resources {
        self.vms_leaving(id).fold(Resources::default(), |acc, v| {
            acc.saturating_add(&v.spec.resources())
        })
    }

    /// The largest free amount of each resource over up nodes, each with the lowest node id
    /// having it; `None` when no node is up.
    pub(super) fn free_bound(&self) -> Option<[(u64, NodeId); 3]> {
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
    pub(super) fn place_pending(
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
            let decision = scheduler::decide(self.placement_view(), &spec);
            if let Some(node) = decision.node {
                self.place_vm(&name, node, index, now, decision.text);
                bound = self.free_bound();
                texts.clear();
                continue;
            }
            if can_preempt {
                if let Some(p) = scheduler::plan_preemption(self.placement_view(), &spec) {
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
}
