//! The derived indexes of the state (VMs by node, anti-affinity groups, pending VMs):
//! maintained by `apply`, never stored, rebuilt on load.

use super::ClusterState;
use crate::model::{VmRecord, VmState};
use crate::scheduler::View;
use crate::spec::NodeId;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Order in which pending VMs are tried: highest priority first, then oldest, then by name.
pub(super) type PendingKey = (Reverse<u8>, u64, String);

pub(super) fn pending_key(vm: &VmRecord) -> PendingKey {
    (
        Reverse(vm.spec.priority),
        vm.created_ms,
        vm.spec.name.clone(),
    )
}

impl ClusterState {
    /// Adds VM `name` to the derived indexes: its node and group when placed, else pending.
    pub(super) fn index_add(&mut self, name: &str) {
        let Some(vm) = self.vms.get(name) else { return };
        match vm.node_id {
            Some(n) => {
                self.by_node
                    .entry(n)
                    .or_default()
                    .insert((vm.spec.priority, name.to_string()));
                if vm.evacuating {
                    self.leaving.entry(n).or_default().insert(name.to_string());
                }
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
    pub(super) fn index_remove(&mut self, name: &str) {
        let Some(vm) = self.vms.get(name) else { return };
        match vm.node_id {
            Some(n) => {
                if let Some(set) = self.by_node.get_mut(&n) {
                    set.remove(&(vm.spec.priority, name.to_string()));
                    if set.is_empty() {
                        self.by_node.remove(&n);
                    }
                }
                if let Some(set) = self.leaving.get_mut(&n) {
                    set.remove(name);
                    if set.is_empty() {
                        self.leaving.remove(&n);
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

    /// What placement reads: workers, VMs, settings and the two indexes above (see
    /// `scheduler::View`).
    pub fn placement_view(&self) -> View<'_> {
        View::new(
            &self.workers,
            &self.vms,
            &self.settings,
            &self.groups,
            &self.by_node,
        )
    }

    /// Anti-affinity group `group`: node -> the group's VM placed there.
    pub fn anti_affinity_nodes(&self, group: &str) -> Option<&BTreeMap<NodeId, String>> {
        self.placement_view().anti_affinity_nodes(group)
    }

    /// The VMs placed on `node`, as (priority, name), lowest priority first.
    pub fn vms_on_node(&self, node: NodeId) -> impl Iterator<Item = (u8, &str)> {
        self.placement_view().vms_on_node(node)
    }

    /// The VMs leaving `node`: placed there and evacuating (stopping there before they are
    /// placed elsewhere), by name. O(log n) to find, then one step per such VM.
    pub fn vms_leaving(&self, node: NodeId) -> impl Iterator<Item = &VmRecord> {
        self.leaving
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|n| self.vms.get(n))
    }

    /// The unplaced VMs, in the order they are retried.
    pub fn pending_vms(&self) -> impl Iterator<Item = &str> {
        self.pending.iter().map(|k| k.2.as_str())
    }
}
