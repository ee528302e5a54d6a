//! The invariants that must hold after every apply (checked in debug builds and by tests).

use super::ClusterState;
use crate::model::VmState;
use crate::scheduler;
use crate::spec::{NodeId, Resources};
use crate::task::{TaskState, MAX_FINISHED_TASKS};
use std::collections::{BTreeMap, BTreeSet};

impl ClusterState {
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
        if fresh.leaving != self.leaving {
            return Err("leaving (evacuating) VM index differs from a rebuild".into());
        }
        if fresh.pending != self.pending {
            return Err("pending index differs from a rebuild".into());
        }
        if crate::network::quarantine_index(&self.networks) != self.ghosts {
            return Err("quarantine (ghost) index differs from a rebuild".into());
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
