//! Placement: which worker a VM goes to. Runs inside `apply`, so it is deterministic: no hash
//! maps, no randomness, no clock, no floating point; every tie is broken by the lowest node id.
//!
//! A node is *eligible* for a VM when, in this order (the first failing step is the node's
//! verdict):
//! 1. it is the pinned node (`VmSpec.node`), if the VM is pinned;
//! 2. its labels contain every `VmSpec.constraints` pair;
//! 3. it has every `VmSpec.features` entry (`kvm` ⇔ `Worker.kvm`);
//! 4. it is up (down and draining nodes receive nothing new);
//! 5. it has no VM of the VM's anti-affinity group (hard rule, checked in O(log n) with the
//!    group index kept by the state, read through [`View`]);
//! 6. its free resources (capacity, with vCPUs scaled by the cluster's overcommit ratio, minus
//!    what is allocated) hold the VM.
//!
//! Among eligible nodes the strategy scores each one from its utilization *after* the VM is
//! added (the mean, over the resources the node has, of used/capacity, in thousandths):
//! `binpack` scores the utilization itself (fullest node wins), `spread` scores 1000 minus it
//! (emptiest node wins). Highest score wins; ties go to the lowest node id.
//!
//! When nothing is eligible, a VM with `preempt = true` may evict VMs of strictly lower priority
//! from one node ([`plan_preemption`]): the node needing the fewest victims (then the lowest
//! sum of their priorities, then the lowest id) wins.

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;
use crate::model::Worker;
use crate::spec::{NodeId, Resources, Strategy, VmSpec};

mod fit;
mod moves;
#[cfg(test)]
mod tests;
mod text;
mod view;

pub use fit::{constraint_violation, has_feature, unconstrained};
use fit::{Check, Ctx};
pub use moves::move_blocker;
use text::fmt_score;
pub use text::{no_room_text, preempted_reason, preemption_text};
pub use view::View;

/// Lowest accepted vCPU overcommit (100 % = none).
pub const MIN_VCPU_OVERCOMMIT_PCT: u32 = 100;
/// Highest accepted vCPU overcommit (10 vCPUs per physical CPU).
pub const MAX_VCPU_OVERCOMMIT_PCT: u32 = 1000;

/// Cluster-wide scheduler settings, changed only through `Command::SetSchedulerSettings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerSettings {
    /// Strategy for VMs that do not choose one.
    pub strategy: Strategy,
    /// vCPU capacity is scaled by this percentage (100 = no overcommit). Memory and disk are
    /// never overcommitted.
    pub vcpu_overcommit_pct: u32,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Binpack,
            vcpu_overcommit_pct: 100,
        }
    }
}

impl SchedulerSettings {
    pub fn validate(&self) -> Result<(), ApplyError> {
        if !(MIN_VCPU_OVERCOMMIT_PCT..=MAX_VCPU_OVERCOMMIT_PCT).contains(&self.vcpu_overcommit_pct)
        {
            return Err(ApplyError::invalid(format!(
                "vcpu overcommit must be between {MIN_VCPU_OVERCOMMIT_PCT} and {MAX_VCPU_OVERCOMMIT_PCT} percent, got {}",
                self.vcpu_overcommit_pct
            )));
        }
        Ok(())
    }

    /// What the scheduler may allocate on a node of this declared capacity.
    pub fn effective_capacity(&self, capacity: &Resources) -> Resources {
        let vcpus = u64::from(capacity.vcpus) * u64::from(self.vcpu_overcommit_pct) / 100;
        Resources {
            vcpus: u32::try_from(vcpus).unwrap_or(u32::MAX),
            ..*capacity
        }
    }
}

/// The outcome of a placement decision inside `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The chosen node, `None` when the VM stays pending.
    pub node: Option<NodeId>,
    /// When placed: a short explanation (stored in `VmRecord.placement`); otherwise the reason
    /// it cannot be placed now (stored in `VmRecord.reason`).
    pub text: String,
}

/// A preemption plan: evict `victims` from `node`, then place the VM there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    pub node: NodeId,
    /// Names of the VMs to evict, in eviction order.
    pub victims: Vec<String>,
}

/// One node's verdict in a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVerdict {
    pub node: NodeId,
    /// True when the VM fits there without evicting anything.
    pub eligible: bool,
    /// Strategy score in thousandths (higher is better), for eligible nodes.
    pub score: Option<u32>,
    /// Human-readable verdict, e.g. "fits: score 0.81" or "draining".
    pub reason: String,
}

/// A dry run of placing one VM: what `CreateVm` would do, without changing anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node the VM would go to; `None`: it would stay pending.
    pub node: Option<NodeId>,
    pub strategy: Strategy,
    /// The placement explanation when placed, the pending reason otherwise.
    pub summary: String,
    /// VMs that would be evicted to make room (preemption), in eviction order.
    pub preempted: Vec<String>,
    /// One verdict per registered worker, by node id.
    pub verdicts: Vec<NodeVerdict>,
}

/// A dry run of placing `spec`: the choice `CreateVm` would make (including preemption) and a
/// verdict per node. The refusals come first, from `ClusterState::check_create_vm`: use
/// [`crate::explain`], which runs both.
pub fn dry_run(view: View<'_>, spec: &VmSpec) -> Placement {
    let strategy = strategy_of(view, spec);
    let ctx = Ctx::new(view, spec);
    let verdicts = view
        .workers()
        .map(|w| {
            let c = ctx.check(w);
            let (eligible, score) = match c {
                Check::Fits { score } => (true, Some(score)),
                _ => (false, None),
            };
            NodeVerdict {
                node: w.id,
                eligible,
                score,
                reason: ctx.verdict_text(w, &c),
            }
        })
        .collect();
    let d = decide(view, spec);
    let (node, summary, preempted) = match d.node {
        Some(n) => (Some(n), d.text, Vec::new()),
        None => match spec.preempt.then(|| plan_preemption(view, spec)).flatten() {
            Some(p) => (Some(p.node), preemption_text(spec, &p), p.victims),
            None => (None, d.text, Vec::new()),
        },
    };
    Placement {
        node,
        strategy,
        summary,
        preempted,
        verdicts,
    }
}

/// The strategy that applies to `spec`.
pub fn strategy_of(view: View<'_>, spec: &VmSpec) -> Strategy {
    spec.strategy.unwrap_or(view.settings().strategy)
}

/// Chooses a node without preemption. O(workers · log), independent of the number of VMs.
pub fn decide(view: View<'_>, spec: &VmSpec) -> Decision {
    let ctx = Ctx::new(view, spec);
    let mut best: Option<(u32, NodeId)> = None;
    let mut eligible = 0usize;
    let candidates: Box<dyn Iterator<Item = &Worker>> = match spec.node {
        Some(pin) => Box::new(view.worker(pin).into_iter()),
        None => Box::new(view.workers()),
    };
    for w in candidates {
        if let Check::Fits { score } = ctx.check(w) {
            eligible += 1;
            // Ascending ids: only a strictly higher score replaces, so ties keep the lowest id.
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, w.id));
            }
        }
    }
    match best {
        Some((score, node)) => {
            let pinned = if spec.node.is_some() { "; pinned" } else { "" };
            let text = format!(
                "{}: node {node} (score {}; {eligible} node{} eligible{pinned})",
                ctx.strategy,
                fmt_score(score),
                if eligible == 1 { "" } else { "s" }
            );
            Decision {
                node: Some(node),
                text,
            }
        }
        None => Decision {
            node: None,
            text: ctx.refusal(),
        },
    }
}

/// Finds the cheapest way to make room for `spec` by evicting VMs of strictly lower priority
/// from one node, or `None`. Only nodes that pass the pin, label, feature and state checks are
/// considered; an anti-affinity peer of lower priority on the node is evicted too. Victims are
/// taken lowest priority first (then by name) until the VM fits, then any victim that is not
/// needed is dropped again, so the set is minimal for that node. Cost: per node, proportional
/// to the victims examined, not to the number of VMs in the cluster.
pub fn plan_preemption(view: View<'_>, spec: &VmSpec) -> Option<Preemption> {
    let ctx = Ctx::new(view, spec);
    let need = spec.resources();
    let mut best: Option<((usize, u32, NodeId), Vec<String>)> = None;
    for w in view.workers() {
        if spec.node.is_some_and(|p| p != w.id) {
            continue;
        }
        match ctx.check(w) {
            Check::Fits { .. } | Check::AntiAffinity { .. } | Check::NoRoom { .. } => {}
            _ => continue,
        }
        let cap = view.settings().effective_capacity(&w.capacity);
        if !cap.fits(&w.allocated) {
            // A node that shrank: what leaves it is already spoken for.
            continue;
        }
        let mut free = cap.saturating_sub(&w.allocated);
        let mut victims: Vec<(u8, String, Resources)> = Vec::new();
        let mut mandatory = 0;
        if let Some(peer) = ctx.group_peer(w.id) {
            let Some(vm) = view.vm(peer) else {
                continue;
            };
            if vm.spec.priority >= spec.priority || vm.evacuating {
                continue;
            }
            free = free.saturating_add(&vm.spec.resources());
            victims.push((vm.spec.priority, peer.to_string(), vm.spec.resources()));
            mandatory = 1;
        }
        if !free.fits(&need) {
            for (prio, name) in view.vms_on_node(w.id) {
                if prio >= spec.priority || free.fits(&need) {
                    break;
                }
                if victims.iter().any(|v| v.1 == name) {
                    continue;
                }
                let Some(vm) = view.vm(name) else {
                    continue;
                };
                if vm.evacuating {
                    // Already leaving (and its room promised to whoever waits for it).
                    continue;
                }
                free = free.saturating_add(&vm.spec.resources());
                victims.push((prio, name.to_string(), vm.spec.resources()));
            }
            if !free.fits(&need) {
                continue;
            }
            // Drop victims that turned out unnecessary (latest first; never the mandatory one).
            let mut i = victims.len();
            while i > mandatory {
                i -= 1;
                let without = free.saturating_sub(&victims[i].2);
                if without.fits(&need) {
                    free = without;
                    victims.remove(i);
                }
            }
        }
        if victims.is_empty() {
            // Fits without evicting anything: `decide` would have found it.
            continue;
        }
        let key = (
            victims.len(),
            victims.iter().map(|v| u32::from(v.0)).sum::<u32>(),
            w.id,
        );
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, victims.into_iter().map(|v| v.1).collect()));
        }
    }
    best.map(|((_, _, node), victims)| Preemption { node, victims })
}
