//! Why a placed VM will not move off its node (a drain that does not finish): the checks of
//! [`decide`], read for a VM that is already placed. The drain itself moves a VM only when
//! `decide` finds it a node, so this is the same rule, told.

use super::decide;
use super::fit::{Check, Ctx};
use super::text::fmt_labels;
use super::View;

/// Why VM `name` cannot move off its node now; `None` when it can (or is not placed): pinned
/// to the node (`--node`), pinned by its labels or features (no other node has them), or the
/// scheduler's own reason (no room elsewhere, and for which resource; anti-affinity; no other
/// node up).
pub fn move_blocker(view: View<'_>, name: &str) -> Option<String> {
    let vm = view.vm(name)?;
    let from = vm.node_id?;
    let spec = &vm.spec;
    let d = decide(view, spec);
    if d.node.is_some() {
        return None;
    }
    if spec.node == Some(from) {
        return Some(format!(
            "pinned to node {from} (--node): it may run on no other node"
        ));
    }
    let ctx = Ctx::new(view, spec);
    let others: Vec<Check> = view
        .workers()
        .filter(|w| w.id != from)
        .map(|w| ctx.check(w))
        .collect();
    if others.is_empty() {
        return Some(format!("no node other than {from} is registered"));
    }
    let past_constraints = Check::NotUp(crate::NodeState::Up).stage();
    if others.iter().all(|c| c.stage() < past_constraints) {
        let mut wants = Vec::new();
        if !spec.constraints.is_empty() {
            wants.push(format!("labels {}", fmt_labels(&spec.constraints)));
        }
        if !spec.features.is_empty() {
            let fs: Vec<&str> = spec.features.iter().map(String::as_str).collect();
            wants.push(format!("features {}", fs.join(",")));
        }
        return Some(format!(
            "pinned by its constraints: no node other than {from} has {}",
            wants.join(" and ")
        ));
    }
    Some(d.text)
}
