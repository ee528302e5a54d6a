//! What placement may read of the cluster state, and nothing more: the workers, the VMs (for
//! preemption), the scheduler settings and two derived indexes. The scheduler takes a [`View`]
//! instead of the whole `ClusterState`, so it cannot reach tasks, requests, networks or
//! security, and does not depend on the `state` module.

use std::collections::{BTreeMap, BTreeSet};

use super::SchedulerSettings;
use crate::model::{VmRecord, Worker};
use crate::spec::NodeId;

/// A read-only view of the state for placement, borrowed from `ClusterState::placement_view`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    workers: &'a BTreeMap<NodeId, Worker>,
    vms: &'a BTreeMap<String, VmRecord>,
    settings: &'a SchedulerSettings,
    groups: &'a BTreeMap<String, BTreeMap<NodeId, String>>,
    by_node: &'a BTreeMap<NodeId, BTreeSet<(u8, String)>>,
}

impl<'a> View<'a> {
    /// Built by `ClusterState::placement_view` from its fields and derived indexes.
    pub(crate) fn new(
        workers: &'a BTreeMap<NodeId, Worker>,
        vms: &'a BTreeMap<String, VmRecord>,
        settings: &'a SchedulerSettings,
        groups: &'a BTreeMap<String, BTreeMap<NodeId, String>>,
        by_node: &'a BTreeMap<NodeId, BTreeSet<(u8, String)>>,
    ) -> Self {
        Self {
            workers,
            vms,
            settings,
            groups,
            by_node,
        }
    }

    /// The registered workers, by ascending id.
    pub fn workers(&self) -> impl Iterator<Item = &'a Worker> {
        self.workers.values()
    }

    pub fn worker(&self, id: NodeId) -> Option<&'a Worker> {
        self.workers.get(&id)
    }

    pub fn vm(&self, name: &str) -> Option<&'a VmRecord> {
        self.vms.get(name)
    }

    pub fn settings(&self) -> &'a SchedulerSettings {
        self.settings
    }

    /// Anti-affinity group `group`: node -> the group's VM placed there.
    pub fn anti_affinity_nodes(&self, group: &str) -> Option<&'a BTreeMap<NodeId, String>> {
        self.groups.get(group)
    }

    /// The VMs placed on `node`, as (priority, name), lowest priority first.
    pub fn vms_on_node(&self, node: NodeId) -> impl Iterator<Item = (u8, &'a str)> {
        self.by_node
            .get(&node)
            .into_iter()
            .flatten()
            .map(|(p, n)| (*p, n.as_str()))
    }
}
