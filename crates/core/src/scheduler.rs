//! Placement: which worker a VM goes to. Runs inside `apply`, so it must be deterministic:
//! ties are broken by node id.
//!
//! The rule is capacity-aware and simple: among workers that are up, have room for the VM's
//! resources, satisfy its pin and its anti-affinity group, pick the one with the most free
//! memory (then vCPUs, then the lowest id).

use crate::command::ApplyError;
use crate::spec::{NodeId, VmSpec};
use crate::state::{ClusterState, NodeState};

/// `Ok(Some(node))`: place it there. `Ok(None)`: no node fits now; keep it pending.
/// `Err`: it can never be placed as asked (for example a pin to a node that does not exist).
pub fn place(state: &ClusterState, spec: &VmSpec) -> Result<Option<NodeId>, ApplyError> {
    let need = spec.resources();
    let mut best: Option<(u64, u32, NodeId)> = None;
    for w in state.workers.values() {
        if w.state != NodeState::Up {
            continue;
        }
        if spec.node.is_some_and(|pin| pin != w.id) {
            continue;
        }
        let free = w.capacity.saturating_sub(&w.allocated);
        if !free.fits(&need) {
            continue;
        }
        if let Some(group) = &spec.anti_affinity {
            let taken = state.vms.values().any(|v| {
                v.node_id == Some(w.id) && v.spec.anti_affinity.as_deref() == Some(group) && v.spec.name != spec.name
            });
            if taken {
                continue;
            }
        }
        let key = (free.memory_mb, free.vcpus, w.id);
        let better = match best {
            None => true,
            Some((m, c, id)) => (key.0, key.1) > (m, c) || ((key.0, key.1) == (m, c) && key.2 < id),
        };
        if better {
            best = Some(key);
        }
    }
    Ok(best.map(|(_, _, id)| id))
}
