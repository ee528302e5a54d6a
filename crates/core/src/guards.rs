//! The `--force` guards of destructive requests: one rule each, checked by the node for every
//! client (gRPC, HTTP, the dashboard) before anything changes. Without `force` a request that
//! would surprise is refused with the reason; with it, it goes ahead.
//!
//! - Deleting a VM whose process runs (or is being started or stopped) stops it at once.
//! - Removing the leader interrupts the cluster until a new leader is elected.
//! - Removing (or leaving as) a voter when the voters and learners left could not lose one more
//!   node and keep a quorum.

use crate::{VmRecord, VmState};

/// What to add to a refusal so both the CLI and HTTP callers know how to override it.
pub const FORCE_HINT: &str = "pass --force (HTTP: force=true) to go ahead anyway";

/// Why deleting `vm` needs `force`, if it does: its process runs, or is being started or
/// stopped.
pub fn delete_vm_risk(vm: &VmRecord) -> Option<String> {
    matches!(
        vm.state,
        VmState::Running | VmState::Starting | VmState::Stopping
    )
    .then(|| {
        let name = &vm.spec.name;
        format!(
            "VM '{name}' is {} (desired {}): deleting it stops it at once. Stop it first (`blixard vm stop {name}`) or {FORCE_HINT}",
            vm.state.as_str(),
            vm.desired.as_str(),
        )
    })
}

/// Why removing `leaving` from a cluster with these voters (and this many learners, which can
/// be promoted in its place) needs `force`, if it does: the voters left could not lose one more
/// node and keep a quorum.
pub fn quorum_risk(voters: &[u64], learners: usize, leaving: u64) -> Option<String> {
    if !voters.contains(&leaving) {
        return None;
    }
    let left = voters.len() - 1;
    // With v voters a quorum is v/2+1; the cluster survives a failure iff v >= 3.
    (left + learners < 3).then(|| {
        format!(
            "node {leaving} is one of {} voters: without it {left} voter{} would remain, and losing one more node would stop the cluster (no quorum); {FORCE_HINT}",
            voters.len(),
            if left == 1 { "" } else { "s" }
        )
    })
}

/// Why removing node `id` needs `force`, if it does: it is the leader, or removing it risks
/// the quorum ([`quorum_risk`]). `leaving`: the node removes itself (`cluster leave`), where
/// only the quorum matters (a leaving leader hands over as part of the change).
pub fn remove_risk(
    voters: &[u64],
    learners: usize,
    leader: Option<u64>,
    id: u64,
    leaving: bool,
) -> Option<String> {
    if !leaving && leader == Some(id) {
        return Some(format!(
            "node {id} is the leader: removing it interrupts the cluster until a new leader is elected; {FORCE_HINT}"
        ));
    }
    quorum_risk(voters, learners, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn removing_the_leader_or_the_third_voter_needs_force() {
        assert!(remove_risk(&[1, 2, 3], 0, Some(1), 1, false)
            .unwrap()
            .contains("is the leader"));
        // Leaving as the leader only risks the quorum.
        assert!(remove_risk(&[1, 2, 3, 4], 0, Some(1), 1, true).is_none());
        assert!(remove_risk(&[1, 2, 3], 0, Some(1), 2, false)
            .unwrap()
            .contains("2 voters would remain"));
        assert!(remove_risk(&[1, 2, 3], 1, Some(1), 2, false).is_none());
        assert!(remove_risk(&[1, 2, 3], 0, Some(1), 9, false).is_none());
        assert!(quorum_risk(&[1, 2], 0, 2)
            .unwrap()
            .contains("1 voter would remain"));
    }

    #[test]
    fn quorum_risk_counts_voters_left_and_learners() {
        let three = [1, 2, 3];
        assert!(quorum_risk(&three, 0, 2).is_some(), "3 -> 2 voters");
        assert!(quorum_risk(&three, 0, 9).is_none(), "not a voter");
        assert!(quorum_risk(&three, 1, 2).is_none(), "a learner can step in");
        assert!(quorum_risk(&[1, 2, 3, 4], 0, 2).is_none(), "4 -> 3 voters");
        assert!(quorum_risk(&[1], 0, 1).is_some(), "the last voter");
    }

    proptest! {
        /// The quorum rule: refused exactly when a voter leaves and fewer than three voters
        /// (counting learners that can be promoted) would remain.
        #[test]
        fn quorum_risk_iff_fewer_than_three_remain(n in 1usize..8, learners in 0usize..4, pick in 0u64..10) {
            let voters: Vec<u64> = (1..=n as u64).collect();
            let risky = quorum_risk(&voters, learners, pick).is_some();
            let is_voter = voters.contains(&pick);
            prop_assert_eq!(risky, is_voter && n - 1 + learners < 3);
        }
    }
}
