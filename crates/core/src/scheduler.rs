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
//!    group index kept by [`ClusterState`]);
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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;
use crate::spec::{NodeId, Resources, Strategy, VmSpec, MAX_VMS};
use crate::state::{ClusterState, NodeState, Worker};

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

/// `Ok(Some(node))`: place it there. `Ok(None)`: no node fits now; keep it pending.
/// `Err`: it can never be placed as asked (a pin to a node that does not exist).
/// Does not consider preemption; see [`explain`] for the full decision.
pub fn place(state: &ClusterState, spec: &VmSpec) -> Result<Option<NodeId>, ApplyError> {
    if let Some(pin) = spec.node {
        if !state.workers.contains_key(&pin) {
            return Err(ApplyError::not_found("node", pin));
        }
    }
    Ok(decide(state, spec).node)
}

/// A dry run of `CreateVm { spec }` against `state`: the same validation and refusals, the same
/// choice (including preemption), and a verdict per node. Pure; the node can serve
/// `vm create --dry-run` with it without proposing anything.
pub fn explain(state: &ClusterState, spec: &VmSpec) -> Result<Placement, ApplyError> {
    spec.validate()?;
    state.check_new_vm_name(&spec.name)?;
    if state.vms.len() >= MAX_VMS {
        return Err(ApplyError::LimitReached(format!(
            "the cluster already holds {MAX_VMS} VMs"
        )));
    }
    if let Some(pin) = spec.node {
        if !state.workers.contains_key(&pin) {
            return Err(ApplyError::not_found("node", pin));
        }
    }
    let strategy = strategy_of(state, spec);
    let ctx = Ctx::new(state, spec);
    let verdicts = state
        .workers
        .values()
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
    let d = decide(state, spec);
    let (node, summary, preempted) = match d.node {
        Some(n) => (Some(n), d.text, Vec::new()),
        None => match spec.preempt.then(|| plan_preemption(state, spec)).flatten() {
            Some(p) => (Some(p.node), preemption_text(spec, &p), p.victims),
            None => (None, d.text, Vec::new()),
        },
    };
    Ok(Placement {
        node,
        strategy,
        summary,
        preempted,
        verdicts,
    })
}

/// The strategy that applies to `spec`.
pub fn strategy_of(state: &ClusterState, spec: &VmSpec) -> Strategy {
    spec.strategy.unwrap_or(state.settings.strategy)
}

/// Chooses a node without preemption. O(workers · log), independent of the number of VMs.
pub fn decide(state: &ClusterState, spec: &VmSpec) -> Decision {
    let ctx = Ctx::new(state, spec);
    let mut best: Option<(u32, NodeId)> = None;
    let mut eligible = 0usize;
    let candidates: Box<dyn Iterator<Item = &Worker>> = match spec.node {
        Some(pin) => Box::new(state.workers.get(&pin).into_iter()),
        None => Box::new(state.workers.values()),
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
pub fn plan_preemption(state: &ClusterState, spec: &VmSpec) -> Option<Preemption> {
    let ctx = Ctx::new(state, spec);
    let need = spec.resources();
    let mut best: Option<((usize, u32, NodeId), Vec<String>)> = None;
    for w in state.workers.values() {
        if spec.node.is_some_and(|p| p != w.id) {
            continue;
        }
        match ctx.check(w) {
            Check::Fits { .. } | Check::AntiAffinity { .. } | Check::NoRoom { .. } => {}
            _ => continue,
        }
        let cap = state.settings.effective_capacity(&w.capacity);
        if !cap.fits(&w.allocated) {
            // A node that shrank: what leaves it is already spoken for.
            continue;
        }
        let mut free = cap.saturating_sub(&w.allocated);
        let mut victims: Vec<(u8, String, Resources)> = Vec::new();
        let mut mandatory = 0;
        if let Some(peer) = ctx.group_peer(w.id) {
            let Some(vm) = state.vms.get(peer) else {
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
            for (prio, name) in state.vms_on_node(w.id) {
                if prio >= spec.priority || free.fits(&need) {
                    break;
                }
                if victims.iter().any(|v| v.1 == name) {
                    continue;
                }
                let Some(vm) = state.vms.get(name) else {
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

/// The placement explanation of a VM placed by preemption.
pub fn preemption_text(spec: &VmSpec, p: &Preemption) -> String {
    format!(
        "preempt: node {} (priority {} evicted {} lower-priority VM{}: {})",
        p.node,
        spec.priority,
        p.victims.len(),
        if p.victims.len() == 1 { "" } else { "s" },
        p.victims.join(", ")
    )
}

/// The pending reason recorded on a VM evicted by `by`.
pub fn preempted_reason(by: &VmSpec) -> String {
    format!("preempted by VM {} (priority {})", by.name, by.priority)
}

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

fn missing_label<'a>(spec: &'a VmSpec, w: &Worker) -> Option<(&'a str, &'a str)> {
    spec.constraints
        .iter()
        .find(|(k, v)| w.labels.get(*k) != Some(*v))
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

fn missing_feature<'a>(spec: &'a VmSpec, w: &Worker) -> Option<&'a str> {
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

/// The refusal when no node has enough of one resource: `largest` holds, per resource (vCPUs,
/// MiB memory, GiB disk), the largest free amount among the candidate nodes and the lowest id
/// having it. `None` when every resource is available somewhere (just not all on one node).
pub fn no_room_text(need: &Resources, largest: &[(u64, NodeId); 3]) -> Option<String> {
    let [(cpu, cpu_node), (mem, mem_node), (disk, disk_node)] = *largest;
    if u64::from(need.vcpus) > cpu {
        Some(format!(
            "no node has {} vCPUs free (largest free: {cpu} on node {cpu_node})",
            need.vcpus
        ))
    } else if need.memory_mb > mem {
        Some(format!(
            "no node has {} MiB memory free (largest free: {mem} MiB on node {mem_node})",
            need.memory_mb
        ))
    } else if need.disk_gb > disk {
        Some(format!(
            "no node has {} GiB disk free (largest free: {disk} GiB on node {disk_node})",
            need.disk_gb
        ))
    } else {
        None
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

fn fmt_score(permille: u32) -> String {
    format!("{}.{:02}", permille / 1000, (permille % 1000) / 10)
}

fn fmt_labels(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Utilization after adding `need`, in thousandths, averaged over the resources the node has.
fn utilization(cap: &Resources, used: &Resources) -> u32 {
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
enum Check<'a> {
    NotPinned,
    MissingLabel(&'a str, &'a str),
    MissingFeature(&'a str),
    NotUp(NodeState),
    AntiAffinity,
    NoRoom { free: Resources },
    Fits { score: u32 },
}

impl Check<'_> {
    fn stage(&self) -> u8 {
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
struct Ctx<'a> {
    state: &'a ClusterState,
    spec: &'a VmSpec,
    need: Resources,
    strategy: Strategy,
    group: Option<&'a BTreeMap<NodeId, String>>,
}

impl<'a> Ctx<'a> {
    fn new(state: &'a ClusterState, spec: &'a VmSpec) -> Self {
        let group = spec
            .anti_affinity
            .as_deref()
            .and_then(|g| state.anti_affinity_nodes(g));
        Self {
            state,
            spec,
            need: spec.resources(),
            strategy: strategy_of(state, spec),
            group,
        }
    }

    fn group_peer(&self, node: NodeId) -> Option<&'a str> {
        self.group.and_then(|g| g.get(&node)).map(String::as_str)
    }

    fn check(&self, w: &Worker) -> Check<'a> {
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
        let cap = self.state.settings.effective_capacity(&w.capacity);
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

    fn verdict_text(&self, w: &Worker, c: &Check) -> String {
        match c {
            Check::NotPinned => {
                format!("not the pinned node {}", self.spec.node.unwrap_or_default())
            }
            Check::MissingLabel(k, v) => format!("no label {k}={v}"),
            Check::MissingFeature(f) => format!("no feature {f}"),
            Check::NotUp(s) => s.as_str().to_string(),
            Check::AntiAffinity => format!(
                "anti-affinity group {} already has VM {} here",
                self.spec.anti_affinity.as_deref().unwrap_or_default(),
                self.group_peer(w.id).unwrap_or_default()
            ),
            Check::NoRoom { free } => format!("no room: {}", self.shortfall(free)),
            Check::Fits { score } => format!("fits: score {}", fmt_score(*score)),
        }
    }

    /// "needs 4 vCPUs, 2 free; needs 4096 MiB memory, 1024 free"
    fn shortfall(&self, free: &Resources) -> String {
        let n = &self.need;
        let mut parts = Vec::new();
        if n.vcpus > free.vcpus {
            parts.push(format!("needs {} vCPUs, {} free", n.vcpus, free.vcpus));
        }
        if n.memory_mb > free.memory_mb {
            parts.push(format!(
                "needs {} MiB memory, {} free",
                n.memory_mb, free.memory_mb
            ));
        }
        if n.disk_gb > free.disk_gb {
            parts.push(format!(
                "needs {} GiB disk, {} free",
                n.disk_gb, free.disk_gb
            ));
        }
        parts.join("; ")
    }

    /// Why no node is eligible: the reason of the nodes that got furthest through the checks.
    fn refusal(&self) -> String {
        let spec = self.spec;
        let state = self.state;
        if let Some(pin) = spec.node {
            let Some(w) = state.workers.get(&pin) else {
                return format!("pinned node {pin} is not registered");
            };
            return match self.check(w) {
                Check::MissingLabel(k, v) => {
                    format!("pinned node {pin} does not have label {k}={v}")
                }
                Check::MissingFeature(f) => format!("pinned node {pin} does not have feature {f}"),
                Check::NotUp(s) => format!("node {pin} is {}", s.as_str()),
                Check::AntiAffinity => format!(
                    "anti-affinity group {} already has a VM on pinned node {pin}",
                    spec.anti_affinity.as_deref().unwrap_or_default()
                ),
                Check::NoRoom { free } => {
                    format!("pinned node {pin} has no room: {}", self.shortfall(&free))
                }
                Check::NotPinned | Check::Fits { .. } => {
                    format!("pinned node {pin} cannot take it")
                }
            };
        }
        if state.workers.is_empty() {
            return "no workers are registered".to_string();
        }
        let checks: Vec<(NodeId, Check)> = state
            .workers
            .values()
            .map(|w| (w.id, self.check(w)))
            .collect();
        let furthest = checks.iter().map(|(_, c)| c.stage()).max().unwrap_or(0);
        let at: Vec<&(NodeId, Check)> = checks
            .iter()
            .filter(|(_, c)| c.stage() == furthest)
            .collect();
        let with_labels = if spec.constraints.is_empty() {
            String::new()
        } else {
            format!(" with labels {}", fmt_labels(&spec.constraints))
        };
        match at.first().map(|(_, c)| *c) {
            Some(Check::MissingLabel(..)) => {
                format!("no node has labels {}", fmt_labels(&spec.constraints))
            }
            Some(Check::MissingFeature(_)) => {
                let fs: Vec<&str> = spec.features.iter().map(String::as_str).collect();
                format!(
                    "no node{with_labels} has feature{} {}",
                    if fs.len() == 1 { "" } else { "s" },
                    fs.join(",")
                )
            }
            Some(Check::NotUp(_)) => {
                let list: Vec<String> = at
                    .iter()
                    .take(5)
                    .filter_map(|(id, c)| match c {
                        Check::NotUp(s) => Some(format!("node {id} is {}", s.as_str())),
                        _ => None,
                    })
                    .collect();
                if at.len() == 1 {
                    list.join("")
                } else {
                    let more = if at.len() > 5 {
                        format!(", {} more", at.len() - 5)
                    } else {
                        String::new()
                    };
                    format!("no eligible node is up ({}{more})", list.join(", "))
                }
            }
            Some(Check::AntiAffinity) => format!(
                "anti-affinity group {} already has a VM on every eligible node ({})",
                spec.anti_affinity.as_deref().unwrap_or_default(),
                plural(at.len(), "node", "nodes")
            ),
            Some(Check::NoRoom { .. }) => {
                // Largest free amount of each resource among the nodes that passed every other
                // check; ties go to the lowest id.
                let mut best: [Option<(u64, NodeId)>; 3] = [None; 3];
                for (id, c) in &at {
                    if let Check::NoRoom { free } = c {
                        for (i, v) in [u64::from(free.vcpus), free.memory_mb, free.disk_gb]
                            .into_iter()
                            .enumerate()
                        {
                            if best[i].is_none_or(|(b, _)| v > b) {
                                best[i] = Some((v, *id));
                            }
                        }
                    }
                }
                let best = best.map(|b| b.unwrap_or_default());
                let n = self.need;
                match no_room_text(&n, &best) {
                    Some(text) => text,
                    None => format!(
                        "no node has {} vCPUs, {} MiB memory and {} GiB disk free at once ({} eligible)",
                        n.vcpus,
                        n.memory_mb,
                        n.disk_gb,
                        plural(at.len(), "node", "nodes")
                    ),
                }
            }
            Some(Check::NotPinned) | Some(Check::Fits { .. }) | None => {
                "no node can take it".to_string()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::command::{Command, Outcome, Reply, Request};
    use crate::state::{VmRecord, VmState};

    struct H {
        s: ClusterState,
        i: u64,
    }

    impl H {
        fn new() -> Self {
            Self {
                s: ClusterState::default(),
                i: 0,
            }
        }
        fn run(&mut self, c: Command) -> Outcome {
            self.i += 1;
            let o = self.s.apply(self.i, &Request::new(c, self.i * 1000));
            self.s.check_invariants().unwrap();
            o
        }
        fn node_full(&mut self, id: NodeId, cap: Resources, kvm: bool, labels: &[(&str, &str)]) {
            let labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            self.run(Command::RegisterWorker {
                id,
                addr: format!("10.0.0.{id}:7000"),
                capacity: cap,
                kvm,
                labels,
            })
            .unwrap();
        }
        fn node(&mut self, id: NodeId, vcpus: u32, memory_mb: u64) {
            self.node_full(id, Resources::new(vcpus, memory_mb, 100), false, &[]);
        }
        fn create(&mut self, spec: VmSpec) -> VmRecord {
            match self.run(Command::CreateVm { spec }) {
                Ok(Reply::Vm(vm)) => vm,
                other => panic!("unexpected {other:?}"),
            }
        }
        fn vm(&self, name: &str) -> &VmRecord {
            &self.s.vms[name]
        }
        fn set_state(&mut self, id: NodeId, state: NodeState) {
            // Down (and back up from down) is the failure detector's verdict.
            let down = self
                .s
                .workers
                .get(&id)
                .is_some_and(|w| w.state == NodeState::Down);
            if state == NodeState::Down || (down && state == NodeState::Up) {
                self.run(Command::LivenessVerdict { id, state, term: 0 })
                    .unwrap();
            } else {
                self.run(Command::SetWorkerState { id, state }).unwrap();
            }
        }
        /// The VM's node confirms it stopped it.
        fn stopped(&mut self, name: &str) {
            let vm = self.vm(name).clone();
            let node_id = vm.node_id.expect("placed");
            self.run(Command::ReportVmStatus {
                name: name.into(),
                node_id,
                epoch: vm.epoch,
                state: VmState::Stopped,
                reason: None,
                restarted: false,
            })
            .unwrap();
        }
        fn settings(&mut self, strategy: Strategy, pct: u32) -> Outcome {
            self.run(Command::SetSchedulerSettings {
                strategy,
                vcpu_overcommit_pct: pct,
            })
        }
    }

    fn vm(name: &str, vcpus: u32, memory_mb: u64) -> VmSpec {
        let mut s = VmSpec::new(name);
        s.vcpus = vcpus;
        s.memory_mb = memory_mb;
        s
    }

    fn prio(name: &str, vcpus: u32, priority: u8, preempt: bool) -> VmSpec {
        let mut s = vm(name, vcpus, 256);
        s.priority = priority;
        s.preempt = preempt;
        s
    }

    #[test]
    fn binpack_fills_the_fullest_node() {
        let mut h = H::new();
        for id in 1..=3 {
            h.node(id, 8, 8192);
        }
        let a = h.create(vm("a", 2, 1024));
        assert_eq!(a.node_id, Some(1), "all empty: lowest id");
        assert!(
            a.placement
                .as_deref()
                .unwrap()
                .starts_with("binpack: node 1 (score 0.12; 3 nodes eligible"),
            "{:?}",
            a.placement
        );
        let mut pinned = vm("p", 1, 512);
        pinned.node = Some(2);
        assert_eq!(h.create(pinned).node_id, Some(2));
        assert_eq!(
            h.create(vm("b", 2, 1024)).node_id,
            Some(1),
            "node 1 is fuller than node 2"
        );
        assert_eq!(h.create(vm("c", 4, 4096)).node_id, Some(1));
        // Node 1 is now 8/8 vCPUs: the next goes to the fuller of 2 and 3.
        assert_eq!(h.create(vm("d", 1, 256)).node_id, Some(2));
    }

    #[test]
    fn spread_uses_the_emptiest_node_and_vms_can_override() {
        let mut h = H::new();
        for id in 1..=3 {
            h.node(id, 8, 8192);
        }
        h.settings(Strategy::Spread, 100).unwrap();
        let placed: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| h.create(vm(n, 1, 512)).node_id.unwrap())
            .collect();
        assert_eq!(placed, vec![1, 2, 3, 1]);
        assert!(h
            .vm("b")
            .placement
            .as_deref()
            .unwrap()
            .starts_with("spread: node 2"));
        let mut packed = vm("e", 1, 512);
        packed.strategy = Some(Strategy::Binpack);
        assert_eq!(
            h.create(packed).node_id,
            Some(1),
            "per-VM binpack picks the fullest"
        );
        let mut spread = vm("f", 1, 512);
        spread.strategy = Some(Strategy::Spread);
        assert_eq!(h.create(spread).node_id, Some(2));
    }

    #[test]
    fn refusal_reasons_name_the_numbers() {
        let mut h = H::new();
        let r = h.create(vm("x", 1, 256));
        assert_eq!(r.node_id, None);
        assert_eq!(r.state, VmState::Pending);
        assert_eq!(r.reason.as_deref(), Some("no workers are registered"));

        let mut h = H::new();
        h.node(1, 1, 8192);
        h.node(2, 1, 8192);
        h.node(3, 2, 8192);
        assert_eq!(
            h.create(vm("big", 4, 256)).reason.as_deref(),
            Some("no node has 4 vCPUs free (largest free: 2 on node 3)")
        );
        assert_eq!(
            h.create(vm("fat", 1, 10_000)).reason.as_deref(),
            Some("no node has 10000 MiB memory free (largest free: 8192 MiB on node 1)")
        );
        let mut disk = vm("disky", 1, 256);
        disk.disk_gb = 500;
        assert_eq!(
            h.create(disk).reason.as_deref(),
            Some("no node has 500 GiB disk free (largest free: 100 GiB on node 1)")
        );

        let mut h = H::new();
        h.node(1, 4, 1024);
        h.node(2, 1, 8192);
        assert_eq!(
            h.create(vm("both", 2, 2048)).reason.as_deref(),
            Some("no node has 2 vCPUs, 2048 MiB memory and 0 GiB disk free at once (2 nodes eligible)")
        );

        let mut h = H::new();
        h.node(1, 8, 8192);
        h.node(2, 8, 8192);
        for n in ["db-1", "db-2", "db-3"] {
            let mut s = vm(n, 1, 256);
            s.anti_affinity = Some("db".into());
            h.create(s);
        }
        assert_eq!(h.vm("db-1").node_id, Some(1));
        assert_eq!(h.vm("db-2").node_id, Some(2));
        assert_eq!(
            h.vm("db-3").reason.as_deref(),
            Some("anti-affinity group db already has a VM on every eligible node (2 nodes)")
        );

        let mut h = H::new();
        h.node(7, 8, 8192);
        h.set_state(7, NodeState::Draining);
        assert_eq!(
            h.create(vm("d", 1, 256)).reason.as_deref(),
            Some("node 7 is draining")
        );
        let mut pinned = vm("p", 1, 256);
        pinned.node = Some(7);
        assert_eq!(
            h.create(pinned).reason.as_deref(),
            Some("node 7 is draining")
        );
        h.node(8, 8, 8192);
        h.set_state(8, NodeState::Down);
        assert_eq!(
            h.create(vm("e", 1, 256)).reason.as_deref(),
            Some("no eligible node is up (node 7 is draining, node 8 is down)")
        );

        let mut h = H::new();
        h.node_full(1, Resources::new(8, 8192, 10), false, &[("zone", "a")]);
        let mut zoned = vm("z", 1, 256);
        zoned.constraints.insert("zone".into(), "b".into());
        assert_eq!(
            h.create(zoned.clone()).reason.as_deref(),
            Some("no node has labels zone=b")
        );
        let mut kvm = vm("k", 1, 256);
        kvm.features.insert("kvm".into());
        assert_eq!(
            h.create(kvm.clone()).reason.as_deref(),
            Some("no node has feature kvm")
        );
        kvm.name = "k2".into();
        kvm.constraints.insert("zone".into(), "a".into());
        assert_eq!(
            h.create(kvm).reason.as_deref(),
            Some("no node with labels zone=a has feature kvm")
        );
        // A node with the labels appears: the pending VM is placed.
        h.node_full(2, Resources::new(8, 8192, 10), true, &[("zone", "b")]);
        assert_eq!(h.vm("z").node_id, Some(2));
        assert_eq!(h.vm("z").reason, None);
        assert_eq!(h.vm("k").node_id, Some(2));
        assert_eq!(h.vm("k2").node_id, None);
    }

    #[test]
    fn invalid_requests_are_refused() {
        let mut h = H::new();
        h.node(1, 8, 8192);
        let mut s = vm("gpu", 1, 256);
        s.features.insert("gpu".into());
        let e = h.run(Command::CreateVm { spec: s }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown feature 'gpu': known features are kvm"
        );
        let mut s = vm("p", 1, 256);
        s.priority = 101;
        assert_eq!(
            h.run(Command::CreateVm { spec: s })
                .unwrap_err()
                .to_string(),
            "priority must be between 0 and 100, got 101"
        );
        let mut s = vm("pin", 1, 256);
        s.node = Some(9);
        assert_eq!(
            h.run(Command::CreateVm { spec: s })
                .unwrap_err()
                .to_string(),
            "node '9' not found"
        );
        let mut s = vm("c", 1, 256);
        s.constraints.insert("bad key!".into(), "x".into());
        assert!(h
            .run(Command::CreateVm { spec: s })
            .unwrap_err()
            .to_string()
            .starts_with("invalid node constraint"));
        assert_eq!(
            h.settings(Strategy::Binpack, 50).unwrap_err().to_string(),
            "vcpu overcommit must be between 100 and 1000 percent, got 50"
        );
        assert!(h.s.vms.is_empty());
    }

    #[test]
    fn vcpu_overcommit_scales_only_vcpus_and_cannot_strand_allocations() {
        let mut h = H::new();
        h.node(1, 4, 8192);
        h.settings(Strategy::Binpack, 200).unwrap();
        for i in 0..8 {
            assert_eq!(h.create(vm(&format!("v{i}"), 1, 256)).node_id, Some(1));
        }
        assert_eq!(
            h.create(vm("v8", 1, 256)).reason.as_deref(),
            Some("no node has 1 vCPUs free (largest free: 0 on node 1)")
        );
        // Memory is not overcommitted.
        h.settings(Strategy::Binpack, 1000).unwrap();
        assert_eq!(
            h.vm("v8").node_id,
            Some(1),
            "raising the ratio places pending VMs"
        );
        assert_eq!(h.create(vm("m", 1, 8192)).node_id, None);
        assert_eq!(
            h.settings(Strategy::Binpack, 100).unwrap_err().to_string(),
            "cannot set vcpu overcommit to 100%: node 1 has 9 vCPUs allocated, above its limit of 4 at that ratio"
        );
        assert_eq!(h.s.settings.vcpu_overcommit_pct, 1000);
    }

    #[test]
    fn preemption_evicts_the_fewest_lowest_priority_vms() {
        let mut h = H::new();
        h.node(1, 4, 8192);
        h.create(prio("low-a", 2, 10, false));
        h.create(prio("low-b", 2, 20, false));
        let hi = h.create(prio("high", 2, 90, true));
        // Two phases: high holds the room at once, but the victim stops on its node first
        // (the planner starts high only then).
        assert_eq!(hi.node_id, Some(1));
        assert_eq!(
            hi.placement.as_deref(),
            Some("preempt: node 1 (priority 90 evicted 1 lower-priority VM: low-a)")
        );
        assert_eq!(
            hi.reason.as_deref(),
            Some("waiting for low-a to stop on node 1 before it starts")
        );
        let a = h.vm("low-a").clone();
        assert_eq!(
            (a.node_id, a.evacuating, a.preempted_by.as_deref()),
            (Some(1), true, Some("high"))
        );
        assert_eq!(
            a.reason.as_deref(),
            Some("preempted by VM high (priority 90)")
        );
        h.stopped("low-a");
        assert_eq!(h.vm("high").node_id, Some(1));
        let a = h.vm("low-a");
        assert_eq!(
            (a.node_id, a.state, a.evacuating),
            (None, VmState::Pending, false)
        );
        assert_eq!(
            a.reason.as_deref(),
            Some("preempted by VM high (priority 90)")
        );
        assert_eq!(h.vm("low-b").node_id, Some(1));
        // Equal or higher priority is never evicted; without preempt nothing is evicted.
        assert_eq!(h.create(prio("peer", 2, 20, true)).node_id, None);
        assert_eq!(h.create(prio("polite", 2, 99, false)).node_id, None);
        assert_eq!(h.vm("low-b").node_id, Some(1));

        // Fewest victims wins: node 2 has four 1-vCPU VMs, node 3 one 4-vCPU VM.
        let mut h = H::new();
        h.node(2, 4, 8192);
        h.node(3, 4, 8192);
        for i in 0..4 {
            let mut s = prio(&format!("small-{i}"), 1, 10, false);
            s.node = Some(2);
            h.create(s);
        }
        let mut s = prio("large", 4, 40, false);
        s.node = Some(3);
        h.create(s);
        assert_eq!(h.create(prio("urgent", 4, 50, true)).node_id, Some(3));
        assert_eq!(
            h.vm("large").reason.as_deref(),
            Some("preempted by VM urgent (priority 50)")
        );
        assert_eq!(h.s.vms.values().filter(|v| v.evacuating).count(), 1);
        h.stopped("large");
        assert_eq!(h.vm("urgent").node_id, Some(3));
        assert_eq!(h.s.vms.values().filter(|v| v.node_id.is_none()).count(), 1);
    }

    #[test]
    fn victims_move_elsewhere_but_do_not_preempt_in_the_same_apply() {
        let mut h = H::new();
        h.node(1, 2, 8192);
        h.node(2, 2, 8192);
        // mid (priority 60, may preempt) on node 1; low (priority 10) fills node 2.
        assert_eq!(h.create(prio("mid", 2, 60, true)).node_id, Some(1));
        let mut low = prio("low", 2, 10, false);
        low.node = Some(2);
        h.create(low);
        let mut top = prio("top", 2, 90, true);
        top.node = Some(1);
        assert_eq!(h.create(top).node_id, Some(1));
        assert!(h.vm("mid").evacuating);
        h.stopped("mid");
        assert_eq!(h.vm("top").node_id, Some(1));
        // mid, off its node, preempts low on node 2 in turn (again in two phases: it holds
        // the room while low stops there).
        assert_eq!(h.vm("mid").node_id, Some(2));
        assert_eq!(
            (h.vm("low").node_id, h.vm("low").evacuating),
            (Some(2), true)
        );
        h.stopped("low");
        assert_eq!(h.vm("mid").node_id, Some(2));
        assert_eq!(
            h.vm("low").reason.as_deref(),
            Some("preempted by VM mid (priority 60)")
        );

        // A victim that fits elsewhere is re-placed in the same apply.
        let mut h = H::new();
        h.node(1, 2, 8192);
        h.node(2, 2, 8192);
        let mut low = prio("low", 2, 10, false);
        low.node = None;
        h.create(low);
        assert_eq!(h.vm("low").node_id, Some(1));
        let mut top = prio("top", 2, 90, true);
        top.node = Some(1);
        // Node 2 is empty, but top is pinned to 1.
        assert_eq!(h.create(top).node_id, Some(1));
        h.stopped("low");
        assert_eq!(h.vm("top").node_id, Some(1));
        assert_eq!(h.vm("low").node_id, Some(2));

        // A victim that is stopped (and stays so) is not running: no need to wait for it.
        let mut h = H::new();
        h.node(1, 2, 8192);
        h.create(prio("idle", 2, 10, false));
        h.run(Command::SetVmDesired {
            name: "idle".into(),
            desired: crate::state::Desired::Stopped,
        })
        .unwrap();
        h.stopped("idle");
        assert_eq!(h.create(prio("now", 2, 90, true)).node_id, Some(1));
        assert_eq!(h.vm("idle").node_id, None);
    }

    #[test]
    fn pending_vms_are_placed_by_priority_when_capacity_appears() {
        let mut h = H::new();
        h.create(prio("early-low", 2, 10, false));
        h.create(prio("late-high", 2, 80, false));
        h.create(prio("mid", 2, 50, false));
        assert_eq!(
            h.s.pending_vms().collect::<Vec<_>>(),
            vec!["late-high", "mid", "early-low"]
        );
        h.node(1, 4, 8192);
        assert_eq!(h.vm("late-high").node_id, Some(1));
        assert_eq!(h.vm("mid").node_id, Some(1));
        assert_eq!(h.vm("early-low").node_id, None);
        assert_eq!(
            h.vm("early-low").reason.as_deref(),
            Some("no node has 2 vCPUs free (largest free: 0 on node 1)")
        );
        h.run(Command::DeleteVm { name: "mid".into() }).unwrap();
        assert_eq!(h.vm("early-low").node_id, Some(1));
        assert!(h.vm("early-low").reason.is_none());
    }

    #[test]
    fn re_registration_evicts_what_no_longer_fits() {
        let mut h = H::new();
        h.node_full(1, Resources::new(4, 8192, 10), true, &[("zone", "a")]);
        let mut zoned = prio("zoned", 1, 90, false);
        zoned.constraints.insert("zone".into(), "a".into());
        h.create(zoned);
        h.create(prio("low", 1, 10, false));
        h.create(prio("high", 2, 90, false));
        h.node_full(1, Resources::new(2, 8192, 10), true, &[("zone", "b")]);
        assert_eq!(
            h.vm("zoned").reason.as_deref(),
            Some("node 1 no longer has label zone=a")
        );
        assert_eq!(h.vm("high").node_id, Some(1));
        // They leave in two phases: stopped on node 1 first.
        assert!(h.vm("zoned").evacuating && h.vm("low").evacuating);
        assert_eq!(h.vm("low").node_id, Some(1));
        h.stopped("zoned");
        assert_eq!(
            h.vm("zoned").reason.as_deref(),
            Some("node 1 no longer has label zone=a")
        );
        h.stopped("low");
        assert_eq!(
            h.vm("zoned").reason.as_deref(),
            Some("no node has labels zone=a")
        );
        assert_eq!(h.vm("low").node_id, None);
        assert_eq!(
            h.vm("low").reason.as_deref(),
            Some("node 1 re-registered with less capacity (2 vCPUs, 8192 MiB memory, 10 GiB disk)")
        );
    }

    #[test]
    fn explain_is_a_pure_dry_run_of_create() {
        let mut h = H::new();
        h.node(1, 4, 8192);
        h.node(2, 8, 8192);
        h.node(3, 8, 8192);
        h.set_state(3, NodeState::Draining);
        h.create(vm("a", 2, 1024));
        let before = h.s.digest();
        let p = explain(&h.s, &vm("b", 4, 1024)).unwrap();
        assert_eq!(h.s.digest(), before);
        assert_eq!(p.node, Some(2));
        assert_eq!(p.strategy, Strategy::Binpack);
        let reasons: BTreeMap<NodeId, (bool, String)> = p
            .verdicts
            .iter()
            .map(|v| (v.node, (v.eligible, v.reason.clone())))
            .collect();
        assert_eq!(
            reasons[&1],
            (false, "no room: needs 4 vCPUs, 2 free".to_string())
        );
        assert_eq!(reasons[&2], (true, "fits: score 0.20".to_string()));
        assert_eq!(reasons[&3], (false, "draining".to_string()));
        assert_eq!(p.summary, "binpack: node 2 (score 0.20; 1 node eligible)");
        assert_eq!(
            h.create(vm("b", 4, 1024)).placement.as_deref(),
            Some(p.summary.as_str())
        );
        assert_eq!(
            explain(&h.s, &vm("b", 1, 256)).unwrap_err().to_string(),
            "VM 'b' already exists"
        );

        let p = explain(&h.s, &prio("urgent", 6, 90, true)).unwrap();
        assert_eq!(p.node, Some(2));
        assert_eq!(p.preempted, vec!["b".to_string()]);
        let urgent = h.create(prio("urgent", 6, 90, true));
        assert_eq!(
            (urgent.node_id, urgent.placement),
            (p.node, Some(p.summary))
        );
        h.stopped("b");
        assert_eq!(h.vm("urgent").node_id, p.node);
        assert_eq!(h.vm("b").node_id, None);
    }

    #[test]
    fn rows_round_trip_with_settings_and_indexes() {
        let mut h = H::new();
        h.node(1, 4, 8192);
        h.settings(Strategy::Spread, 300).unwrap();
        let mut g = vm("g", 1, 256);
        g.anti_affinity = Some("grp".into());
        h.create(g);
        h.create(vm("pending", 64, 256));
        h.s.take_touched();
        let rows = h.s.all_rows();
        let back =
            ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        assert_eq!(back, h.s);
        assert_eq!(back.settings.vcpu_overcommit_pct, 300);
        assert_eq!(back.anti_affinity_nodes("grp").map(|m| m.len()), Some(1));
    }

    #[test]
    fn a_down_node_reschedules_its_vms_with_new_epochs_and_loses_the_never_ones() {
        let mut h = H::new();
        h.node(1, 4, 4096);
        let mut a = VmSpec::new("a");
        a.restart = crate::spec::RestartPolicy::Always;
        let mut n = VmSpec::new("n");
        n.restart = crate::spec::RestartPolicy::Never;
        let a0 = h.create(a);
        h.create(n);
        h.node(2, 4, 4096);
        h.set_state(1, NodeState::Down);
        let a1 = h.vm("a").clone();
        assert_eq!(a1.node_id, Some(2), "rescheduled on the healthy node");
        assert!(a1.epoch > a0.epoch, "with a new epoch");
        let lost = h.vm("n").clone();
        assert_eq!((lost.node_id, lost.state), (None, VmState::Lost));
        assert!(lost.reason.unwrap().contains("node 1 went down"));
        // A stale report from the old node is refused.
        let stale = h.run(Command::ReportVmStatus {
            name: "a".into(),
            node_id: 1,
            epoch: a0.epoch,
            state: VmState::Running,
            reason: None,
            restarted: false,
        });
        assert!(matches!(stale, Err(crate::ApplyError::StaleEpoch { .. })));
        // Lost VMs are not placed again by themselves, but on request.
        h.set_state(1, NodeState::Up);
        assert_eq!(h.vm("n").state, VmState::Lost);
        h.run(Command::SetVmDesired {
            name: "n".into(),
            desired: crate::state::Desired::Running,
        })
        .unwrap();
        assert!(h.vm("n").node_id.is_some());
    }

    #[test]
    fn moving_a_running_vm_stops_it_first_then_places_it_elsewhere() {
        let mut h = H::new();
        h.node(1, 4, 4096);
        let v0 = h.create(VmSpec::new("m"));
        h.run(Command::ReportVmStatus {
            name: "m".into(),
            node_id: 1,
            epoch: v0.epoch,
            state: VmState::Running,
            reason: None,
            restarted: false,
        })
        .unwrap();
        h.node(2, 4, 4096);
        h.set_state(1, NodeState::Draining);
        h.run(Command::MoveVm { name: "m".into() }).unwrap();
        let v1 = h.vm("m").clone();
        assert_eq!(
            (v1.node_id, v1.evacuating),
            (Some(1), true),
            "still on node 1 until stopped there"
        );
        h.run(Command::ReportVmStatus {
            name: "m".into(),
            node_id: 1,
            epoch: v0.epoch,
            state: VmState::Stopped,
            reason: None,
            restarted: false,
        })
        .unwrap();
        let v2 = h.vm("m").clone();
        assert_eq!(v2.node_id, Some(2));
        assert!(v2.epoch > v0.epoch);
        assert!(!v2.evacuating);
        assert_eq!(
            v2.desired,
            crate::state::Desired::Running,
            "it is started there"
        );
    }
}
