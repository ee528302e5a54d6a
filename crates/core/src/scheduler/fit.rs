//! Whether a VM fits a node: the eligibility checks, in order, and the utilization score.

use std::collections::BTreeMap;

use super::strategy_of;
use super::View;
use crate::model::{NodeState, Worker};
use crate::spec::{NodeId, Resources, Strategy, VmSpec};

/// Why `w` no longer satisfies the placement constraints of `spec`, if it does not.
pub fn constraint_violation(spec: &VmSpec, w: &Worker) -> Option<String> {
    if spec.node.is_some_and(|p| p != w.id) {
        return Some(format!(
            "pinned to node {} but on node {}",
            spec.node.unwrap_or_default(),
            w.id
        ));
    }
    if let Some((k, v)) = missing_label(spec, w) {
        return Some(format!("node {} no longer has label {k}={v}", w.id));
    }
    if let Some(f) = missing_feature(spec, w) {
        return Some(format!("node {} no longer has feature {f}", w.id));
    }
    None
}

pub(super) fn missing_label<'a>(spec: &'a VmSpec, w: &Worker) -> Option<(&'a str, &'a str)> {
    spec.constraints
        .iter()
        .find(|(k, v)| w.labels.get(*k) != Some(*v))
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

pub(super) fn missing_feature<'a>(spec: &'a VmSpec, w: &Worker) -> Option<&'a str> {
    spec.features
        .iter()
        .find(|f| !has_feature(w, f))
        .map(String::as_str)
}

/// Whether a worker offers a (known) feature.
pub fn has_feature(w: &Worker, feature: &str) -> bool {
    match feature {
        "kvm" => w.kvm,
        _ => false,
    }
}

/// True when `spec` has no pin, labels, features or anti-affinity group: every up node is a
/// candidate, so the refusal depends only on the largest free amounts over up nodes.
pub fn unconstrained(spec: &VmSpec) -> bool {
    spec.node.is_none()
        && spec.constraints.is_empty()
        && spec.features.is_empty()
        && spec.anti_affinity.is_none()
}

/// Utilization after adding `need`, in thousandths, averaged over the resources the node has.
pub(super) fn utilization(cap: &Resources, used: &Resources) -> u32 {
    let dims = [
        (u128::from(cap.vcpus), u128::from(used.vcpus)),
        (u128::from(cap.memory_mb), u128::from(used.memory_mb)),
        (u128::from(cap.disk_gb), u128::from(used.disk_gb)),
    ];
    let (mut sum, mut n) = (0u128, 0u128);
    for (c, u) in dims {
        if let Some(share) = (u * 1000).checked_div(c) {
            sum += share.min(1000);
            n += 1;
        }
    }
    sum.checked_div(n)
        .map_or(0, |avg| u32::try_from(avg).unwrap_or(1000))
}

/// A node's verdict, as the first failing check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check<'a> {
    NotPinned,
    MissingLabel(&'a str, &'a str),
    MissingFeature(&'a str),
    NotUp(NodeState),
    AntiAffinity,
    NoRoom { free: Resources },
    Fits { score: u32 },
}

impl Check<'_> {
    pub(super) fn stage(&self) -> u8 {
        match self {
            Check::NotPinned => 0,
            Check::MissingLabel(..) => 1,
            Check::MissingFeature(_) => 2,
            Check::NotUp(_) => 3,
            Check::AntiAffinity => 4,
            Check::NoRoom { .. } => 5,
            Check::Fits { .. } => 6,
        }
    }
}

/// What a placement looks at, computed once per decision.
pub(super) struct Ctx<'a> {
    pub(super) view: View<'a>,
    pub(super) spec: &'a VmSpec,
    pub(super) need: Resources,
    pub(super) strategy: Strategy,
    pub(super) group: Option<&'a BTreeMap<NodeId, String>>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(view: View<'a>, spec: &'a VmSpec) -> Self {
        let group = spec
            .anti_affinity
            .as_deref()
            .and_then(|g| view.anti_affinity_nodes(g));
        Self {
            view,
            spec,
            need: spec.resources(),
            strategy: strategy_of(view, spec),
            group,
        }
    }

    pub(super) fn group_peer(&self, node: NodeId) -> Option<&'a str> {
        self.group.and_then(|g| g.get(&node)).map(String::as_str)
    }

    pub(super) fn check(&self, w: &Worker) -> Check<'a> {
        let spec = self.spec;
        if spec.node.is_some_and(|p| p != w.id) {
            return Check::NotPinned;
        }
        if let Some((k, v)) = missing_label(spec, w) {
            return Check::MissingLabel(k, v);
        }
        if let Some(f) = missing_feature(spec, w) {
            return Check::MissingFeature(f);
        }
        if w.state != NodeState::Up {
            return Check::NotUp(w.state);
        }
        if self.group_peer(w.id).is_some_and(|peer| peer != spec.name) {
            return Check::AntiAffinity;
        }
        let cap = self.view.settings().effective_capacity(&w.capacity);
        let free = cap.saturating_sub(&w.allocated);
        if !free.fits(&self.need) {
            return Check::NoRoom { free };
        }
        let util = utilization(&cap, &w.allocated.saturating_add(&self.need));
        let score = match self.strategy {
            Strategy::Binpack => util,
            Strategy::Spread => 1000 - util,
        };
        Check::Fits { score }
    }
}
