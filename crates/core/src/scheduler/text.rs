//! The words of placement: per-node verdicts, refusals and placement explanations.

use std::collections::BTreeMap;

use super::fit::{Check, Ctx};
use super::Preemption;
use crate::model::Worker;
use crate::spec::{NodeId, Resources, VmSpec};

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

pub(super) fn fmt_score(permille: u32) -> String {
    format!("{}.{:02}", permille / 1000, (permille % 1000) / 10)
}

pub(super) fn fmt_labels(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

impl Ctx<'_> {
    pub(super) fn verdict_text(&self, w: &Worker, c: &Check) -> String {
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
    pub(super) fn shortfall(&self, free: &Resources) -> String {
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
    pub(super) fn refusal(&self) -> String {
        let spec = self.spec;
        let view = self.view;
        if let Some(pin) = spec.node {
            let Some(w) = view.worker(pin) else {
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
        if view.workers().next().is_none() {
            return "no workers are registered".to_string();
        }
        let checks: Vec<(NodeId, Check)> = view.workers().map(|w| (w.id, self.check(w))).collect();
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
