//! The reconcile planner: what an executor must do to make its host match the applied state.
//!
//! `plan` is pure: it compares the VMs the replicated state places on this node (desired)
//! with what the driver observes on the host, and returns actions. The executor performs them
//! (idempotently, retrying with backoff) and reports what it then observes; it keeps no other
//! state. Every action carries the placement epoch it acts for, and a VM observed with another
//! epoch than its current placement is a stale copy: it is stopped and removed.

use std::collections::{BTreeMap, BTreeSet};

mod tasks;
pub use tasks::{plan_tasks, AttemptMarker, TaskAction, TaskObserved};

use crate::model::{Desired, VmRecord, VmState};
use crate::spec::{NodeId, RestartPolicy, VmSpec};
use crate::state::ClusterState;

/// What the driver sees of one VM on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    /// The epoch the VM was started for.
    pub epoch: u64,
    pub run: RunState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// The VMM process is up; the guest has not signalled readiness yet.
    Starting,
    /// The guest signalled readiness.
    Running,
    /// The process ended. `requested` when the executor asked it to stop.
    Exited {
        code: Option<i32>,
        requested: bool,
        reason: Option<String>,
    },
}

impl RunState {
    pub fn alive(&self) -> bool {
        matches!(self, RunState::Starting | RunState::Running)
    }
}

/// One step for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few actions per reconcile pass; `Start` is the common one"
)]
pub enum Action {
    /// Boot the VM for `epoch` (replacing any exited run of it).
    Start {
        spec: VmSpec,
        epoch: u64,
        restart: bool,
    },
    /// Stop the VM gracefully (then forcibly after the grace period).
    Stop { name: String },
    /// Forget an exited VM's local run state.
    Remove { name: String },
    /// Propose what was observed, through Raft.
    Report {
        name: String,
        epoch: u64,
        state: VmState,
        reason: Option<String>,
    },
}

/// Plans the actions for node `me`.
///
/// A VM placed here by preemption is not started while one of its victims is still being
/// stopped here (`evacuating` with `preempted_by` naming it): the node never runs both.
pub fn plan<'a>(
    me: NodeId,
    vms: impl IntoIterator<Item = &'a VmRecord>,
    observed: &[Observed],
) -> Vec<Action> {
    let mine: Vec<&VmRecord> = vms.into_iter().filter(|v| v.node_id == Some(me)).collect();
    let waiting: BTreeSet<&str> = mine
        .iter()
        .filter(|v| v.evacuating)
        .filter_map(|v| v.preempted_by.as_deref())
        .collect();
    plan_with(mine, observed.iter(), &waiting)
}

/// [`plan`] for the VMs named in `names` only: exactly the actions of `plan(me,
/// state.vms.values(), observed)` that name one of them, in the same order, at a cost that
/// grows with `names` (and the VMs leaving this node), not with every VM of the state.
///
/// The executor plans this way after an applied change, for the VMs the change touched
/// (`EventSource::vms_touched_since`); a periodic full [`plan`] covers what only the host
/// observed (a VM process that exited).
pub fn plan_changed(
    state: &ClusterState,
    me: NodeId,
    names: &BTreeSet<String>,
    observed: &[Observed],
) -> Vec<Action> {
    let mine = names
        .iter()
        .filter_map(|n| state.vms.get(n))
        .filter(|v| v.node_id == Some(me));
    // Whether a preemptor waits depends on its victims, which may not have changed: from the
    // index of the VMs leaving this node, not from `names`.
    let waiting: BTreeSet<&str> = state
        .vms_leaving(me)
        .filter_map(|v| v.preempted_by.as_deref())
        .collect();
    plan_with(
        mine,
        observed.iter().filter(|o| names.contains(&o.name)),
        &waiting,
    )
}

/// The plan for the VMs `mine` (placed on this node) against `observed`, with the preemptors
/// in `waiting` held back; observed VMs not in `mine` are cleaned up.
fn plan_with<'a, 'o>(
    mine: impl IntoIterator<Item = &'a VmRecord>,
    observed: impl Iterator<Item = &'o Observed>,
    waiting: &BTreeSet<&str>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut obs: BTreeMap<&str, &Observed> = observed.map(|o| (o.name.as_str(), o)).collect();
    let blocked = |name: &str| waiting.contains(name);
    for vm in mine {
        // Borrowed: a pass over many settled VMs allocates nothing for them.
        let name: &str = &vm.spec.name;
        let mut stale_alive = false;
        let mine = match obs.remove(name) {
            Some(o) if o.epoch == vm.epoch => Some(o),
            Some(stale) => {
                // A copy from an older placement: never let it run beside the current one.
                stale_alive = stale.run.alive();
                clean_up(&mut actions, stale);
                None
            }
            None => None,
        };
        let report = |actions: &mut Vec<Action>, state: VmState, reason: Option<String>| {
            // While an older copy still runs here, nothing is reported: a "stopped" now would
            // let the VM leave (or be placed elsewhere) while that copy runs.
            if stale_alive {
                return;
            }
            if vm.state != state || vm.reason != reason {
                actions.push(Action::Report {
                    name: name.to_string(),
                    epoch: vm.epoch,
                    state,
                    reason,
                });
            }
        };
        // A VM being moved off this node is stopped here whatever its desired state.
        let desired = if vm.evacuating {
            Desired::Stopped
        } else {
            vm.desired
        };
        match (desired, mine.map(|o| &o.run)) {
            (Desired::Running, None) if blocked(name) => {
                // Placed by preemption: its victims still stop here first.
            }
            (Desired::Running, None) => {
                actions.push(Action::Start {
                    spec: vm.spec.clone(),
                    epoch: vm.epoch,
                    restart: false,
                });
            }
            (Desired::Running, Some(RunState::Starting)) => {
                report(&mut actions, VmState::Starting, None)
            }
            (Desired::Running, Some(RunState::Running)) => {
                report(&mut actions, VmState::Running, None)
            }
            (
                Desired::Running,
                Some(RunState::Exited {
                    requested: true, ..
                }),
            ) => {
                // It was stopped on request and is wanted again.
                actions.push(Action::Start {
                    spec: vm.spec.clone(),
                    epoch: vm.epoch,
                    restart: false,
                });
            }
            (
                Desired::Running,
                Some(RunState::Exited {
                    code,
                    requested: false,
                    reason,
                }),
            ) => {
                let failed = *code != Some(0);
                let (state, why) = if failed {
                    (
                        VmState::Failed,
                        Some(reason.clone().unwrap_or_else(|| exit_reason(*code))),
                    )
                } else {
                    (VmState::Stopped, Some("the guest shut down".to_string()))
                };
                report(&mut actions, state, why);
                let again = match vm.spec.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => failed,
                    RestartPolicy::Never => false,
                };
                if again {
                    actions.push(Action::Start {
                        spec: vm.spec.clone(),
                        epoch: vm.epoch,
                        restart: true,
                    });
                }
            }
            (Desired::Stopped, Some(run)) if run.alive() => {
                actions.push(Action::Stop {
                    name: name.to_string(),
                });
                report(&mut actions, VmState::Stopping, None);
            }
            (
                Desired::Stopped,
                Some(RunState::Exited {
                    code,
                    requested,
                    reason,
                }),
            ) => {
                if !requested && *code != Some(0) && vm.state == VmState::Failed {
                    // Keep the recorded failure.
                } else {
                    let _ = reason;
                    report(&mut actions, VmState::Stopped, None);
                }
            }
            (Desired::Stopped, _) => {
                if vm.state != VmState::Failed {
                    report(&mut actions, VmState::Stopped, None);
                }
            }
        }
    }
    // Whatever is left is not placed here (deleted, moved, or never ours): stop and forget it.
    for o in obs.into_values() {
        clean_up(&mut actions, o);
    }
    actions
}

fn clean_up(actions: &mut Vec<Action>, o: &Observed) {
    if o.run.alive() {
        actions.push(Action::Stop {
            name: o.name.clone(),
        });
    } else {
        actions.push(Action::Remove {
            name: o.name.clone(),
        });
    }
}

fn exit_reason(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("the VM process exited with status {c}"),
        None => "the VM process was killed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_copy_still_running_holds_back_every_report() {
        // Placed here again under a newer epoch and now leaving: while the older copy runs,
        // the planner stops it and reports nothing (no "stopped" that would let it go).
        let mut v = vm("a", 1, 9, Desired::Running, VmState::Running);
        v.evacuating = true;
        let old = Observed {
            name: "a".into(),
            epoch: 4,
            run: RunState::Running,
        };
        let a = plan(1, [&v], std::slice::from_ref(&old));
        assert_eq!(a, vec![Action::Stop { name: "a".into() }]);
        // Once it has exited, the report follows.
        let gone = Observed {
            run: RunState::Exited {
                code: Some(0),
                requested: true,
                reason: None,
            },
            ..old
        };
        let a = plan(1, [&v], &[gone]);
        assert!(
            a.iter().any(|x| matches!(
                x,
                Action::Report {
                    state: VmState::Stopped,
                    epoch: 9,
                    ..
                }
            )),
            "{a:?}"
        );
    }

    fn vm(name: &str, node: u64, epoch: u64, desired: Desired, state: VmState) -> VmRecord {
        VmRecord {
            spec: VmSpec::new(name),
            node_id: Some(node),
            desired,
            state,
            epoch,
            reason: None,
            created_ms: 0,
            updated_ms: 0,
            restarts: 0,
            placement: None,
            evacuating: false,
            preempted_by: None,
            network: None,
            ip: None,
            created_by: None,
        }
    }

    fn obs(name: &str, epoch: u64, run: RunState) -> Observed {
        Observed {
            name: name.into(),
            epoch,
            run,
        }
    }

    #[test]
    fn starts_what_should_run_and_reports_progress() {
        let v = vm("a", 1, 5, Desired::Running, VmState::Pending);
        assert!(matches!(
            plan(1, [&v], &[])[..],
            [Action::Start {
                epoch: 5,
                restart: false,
                ..
            }]
        ));
        let a = plan(1, [&v], &[obs("a", 5, RunState::Running)]);
        assert_eq!(
            a,
            vec![Action::Report {
                name: "a".into(),
                epoch: 5,
                state: VmState::Running,
                reason: None
            }]
        );
        let running = vm("a", 1, 5, Desired::Running, VmState::Running);
        assert!(
            plan(1, [&running], &[obs("a", 5, RunState::Running)]).is_empty(),
            "steady state plans nothing"
        );
    }

    #[test]
    fn ignores_vms_placed_elsewhere_and_cleans_up_foreign_ones() {
        let v = vm("a", 2, 5, Desired::Running, VmState::Running);
        assert!(plan(1, [&v], &[]).is_empty());
        let a = plan(1, [&v], &[obs("a", 5, RunState::Running)]);
        assert_eq!(a, vec![Action::Stop { name: "a".into() }]);
        let a = plan(
            1,
            [&v],
            &[obs(
                "a",
                5,
                RunState::Exited {
                    code: Some(0),
                    requested: true,
                    reason: None,
                },
            )],
        );
        assert_eq!(a, vec![Action::Remove { name: "a".into() }]);
    }

    #[test]
    fn stale_epoch_copy_is_stopped_before_the_current_one_starts() {
        let v = vm("a", 1, 9, Desired::Running, VmState::Pending);
        let a = plan(1, [&v], &[obs("a", 4, RunState::Running)]);
        assert_eq!(a[0], Action::Stop { name: "a".into() });
        assert!(matches!(a[1], Action::Start { epoch: 9, .. }));
    }

    #[test]
    fn restart_policy_decides_after_a_crash() {
        let crashed = obs(
            "a",
            5,
            RunState::Exited {
                code: Some(1),
                requested: false,
                reason: None,
            },
        );
        let clean = obs(
            "a",
            5,
            RunState::Exited {
                code: Some(0),
                requested: false,
                reason: None,
            },
        );
        let mut v = vm("a", 1, 5, Desired::Running, VmState::Running);
        for (policy, o, restarts) in [
            (RestartPolicy::Always, &crashed, true),
            (RestartPolicy::Always, &clean, true),
            (RestartPolicy::OnFailure, &crashed, true),
            (RestartPolicy::OnFailure, &clean, false),
            (RestartPolicy::Never, &crashed, false),
        ] {
            v.spec.restart = policy;
            let a = plan(1, [&v], std::slice::from_ref(o));
            assert!(
                matches!(a[0], Action::Report { .. }),
                "{policy:?}: report first"
            );
            assert_eq!(
                a.iter()
                    .any(|x| matches!(x, Action::Start { restart: true, .. })),
                restarts,
                "{policy:?}"
            );
        }
    }

    #[test]
    fn stopping_is_graceful_and_reported() {
        let v = vm("a", 1, 5, Desired::Stopped, VmState::Running);
        let a = plan(1, [&v], &[obs("a", 5, RunState::Running)]);
        assert_eq!(a[0], Action::Stop { name: "a".into() });
        let a = plan(
            1,
            [&v],
            &[obs(
                "a",
                5,
                RunState::Exited {
                    code: Some(0),
                    requested: true,
                    reason: None,
                },
            )],
        );
        assert_eq!(
            a,
            vec![Action::Report {
                name: "a".into(),
                epoch: 5,
                state: VmState::Stopped,
                reason: None
            }]
        );
    }
}
