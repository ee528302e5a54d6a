//! The task half of the reconcile planner: what a node must do about the one-shot tasks the
//! applied state assigns to it, given what it holds locally.
//!
//! `plan_tasks` is pure, like [`super::plan`] for VMs: desired state is the replicated task
//! table, observed state is this node's local record of attempts (the attempt it is handling
//! now, and the marker `attempt.json` an attempt leaves on disk), and the result is a list of
//! actions the executor performs. The never-twice rule for tasks lives here: an attempt (task,
//! epoch) is started only when this node has no record of it at all, so a daemon restarted
//! mid-attempt finds the marker and stops and reports the old run instead of starting it again.

use std::collections::BTreeMap;

use crate::spec::NodeId;
use crate::task::TaskRecord;

/// What this node holds locally of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskObserved {
    pub id: String,
    /// The epoch of the attempt this daemon is handling now (running it, or stopping and
    /// reporting it).
    pub handling: Option<u64>,
    /// The attempt marker left on disk by the last attempt this node started.
    pub marker: Option<AttemptMarker>,
}

/// What an attempt marker records, as far as planning goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptMarker {
    pub epoch: u64,
    /// Its result was reported.
    pub done: bool,
}

/// One step for the executor about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskAction {
    /// Start the current attempt (`task.epoch`): this node has no record of it.
    Start { task: TaskRecord },
    /// Ask the attempt being handled here to stop: it was cancelled, or it is no longer this
    /// node's current attempt (reassigned, finished or forgotten).
    Signal { id: String },
    /// The current attempt was started by an earlier run of this daemon and not reported:
    /// stop it if it still runs, then report how it ended.
    Resume { task: TaskRecord },
    /// The current attempt was cancelled before it started: report it cancelled.
    CancelUnstarted { task: TaskRecord },
    /// An attempt this node started that is no longer its current one and was never marked
    /// done: stop it if it still runs and mark it done.
    Retire { id: String },
    /// The cluster forgot the task (retention): drop its local directory.
    Forget { id: String },
}

impl TaskAction {
    /// The task the action is about.
    pub fn id(&self) -> &str {
        match self {
            TaskAction::Start { task }
            | TaskAction::Resume { task }
            | TaskAction::CancelUnstarted { task } => &task.id,
            TaskAction::Signal { id } | TaskAction::Retire { id } | TaskAction::Forget { id } => id,
        }
    }
}

/// Plans the task actions of node `me` from the replicated task table and what it observes.
///
/// Starting is not gated here: the executor drops every start (VM or task) while the node
/// cannot prove its lease, in one place.
pub fn plan_tasks(
    me: NodeId,
    tasks: &BTreeMap<String, TaskRecord>,
    observed: &[TaskObserved],
) -> Vec<TaskAction> {
    let mut actions = Vec::new();
    let current = |id: &str| {
        tasks
            .get(id)
            .filter(|t| t.node_id == Some(me) && !t.state.is_finished())
    };
    let obs: BTreeMap<&str, &TaskObserved> = observed.iter().map(|o| (o.id.as_str(), o)).collect();

    // What this node holds: stop what is no longer current, retire and forget leftovers.
    for o in observed {
        let cur = current(&o.id);
        if let Some(epoch) = o.handling {
            match cur {
                Some(t) if t.epoch == epoch => {
                    if t.cancel_requested {
                        actions.push(TaskAction::Signal { id: o.id.clone() });
                    }
                }
                _ => actions.push(TaskAction::Signal { id: o.id.clone() }),
            }
            // Its handler retires it when it is over.
            continue;
        }
        let is_current = matches!((cur, o.marker), (Some(t), Some(m)) if m.epoch == t.epoch);
        if is_current {
            continue;
        }
        if o.marker.is_some_and(|m| !m.done) {
            actions.push(TaskAction::Retire { id: o.id.clone() });
        }
        if !tasks.contains_key(&o.id) {
            actions.push(TaskAction::Forget { id: o.id.clone() });
        }
    }

    // The current attempts assigned here.
    for t in tasks
        .values()
        .filter(|t| t.node_id == Some(me) && !t.state.is_finished())
    {
        let o = obs.get(t.id.as_str());
        if o.is_some_and(|o| o.handling.is_some()) {
            continue;
        }
        match o.and_then(|o| o.marker) {
            Some(m) if m.epoch == t.epoch && m.done => {}
            Some(m) if m.epoch == t.epoch => actions.push(TaskAction::Resume { task: t.clone() }),
            _ if t.cancel_requested => {
                actions.push(TaskAction::CancelUnstarted { task: t.clone() })
            }
            _ => actions.push(TaskAction::Start { task: t.clone() }),
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{TaskSpec, TaskState};
    use proptest::prelude::*;

    fn task(id: &str, node: Option<NodeId>, epoch: u64, state: TaskState) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            spec: TaskSpec::new(vec!["true".into()]),
            node_id: node,
            state,
            attempt: 1,
            epoch,
            exit_code: None,
            duration_ms: None,
            reason: None,
            cancel_requested: false,
            submitted_ms: 0,
            started_ms: None,
            finished_ms: None,
            finished_index: None,
            updated_ms: 0,
            created_by: None,
        }
    }

    fn table(ts: Vec<TaskRecord>) -> BTreeMap<String, TaskRecord> {
        ts.into_iter().map(|t| (t.id.clone(), t)).collect()
    }

    fn obs(id: &str, handling: Option<u64>, marker: Option<(u64, bool)>) -> TaskObserved {
        TaskObserved {
            id: id.into(),
            handling,
            marker: marker.map(|(epoch, done)| AttemptMarker { epoch, done }),
        }
    }

    #[test]
    fn a_new_assignment_starts_once() {
        let t = table(vec![task("a", Some(1), 5, TaskState::Pending)]);
        let a = plan_tasks(1, &t, &[]);
        assert_eq!(
            a,
            vec![TaskAction::Start {
                task: t["a"].clone()
            }]
        );
        // Being handled, or with a marker of that epoch (started before a restart): no start.
        assert!(plan_tasks(1, &t, &[obs("a", Some(5), None)]).is_empty());
        assert_eq!(
            plan_tasks(1, &t, &[obs("a", None, Some((5, false)))]),
            vec![TaskAction::Resume {
                task: t["a"].clone()
            }]
        );
        assert!(plan_tasks(1, &t, &[obs("a", None, Some((5, true)))]).is_empty());
        // Another node's task: nothing.
        assert!(plan_tasks(2, &t, &[]).is_empty());
    }

    #[test]
    fn a_reassigned_attempt_is_stopped_and_retired_and_the_new_one_starts() {
        let t = table(vec![task("a", Some(1), 9, TaskState::Pending)]);
        // The old attempt (epoch 5) is still handled here: signal it, start nothing yet.
        assert_eq!(
            plan_tasks(1, &t, &[obs("a", Some(5), Some((5, false)))]),
            vec![TaskAction::Signal { id: "a".into() }]
        );
        // Its handler is gone but its marker was never finished: retire it, then start.
        assert_eq!(
            plan_tasks(1, &t, &[obs("a", None, Some((5, false)))]),
            vec![
                TaskAction::Retire { id: "a".into() },
                TaskAction::Start {
                    task: t["a"].clone()
                }
            ]
        );
    }

    #[test]
    fn cancellation_reaches_running_and_unstarted_attempts() {
        let mut t = task("a", Some(1), 5, TaskState::Running);
        t.cancel_requested = true;
        let t = table(vec![t]);
        assert_eq!(
            plan_tasks(1, &t, &[obs("a", Some(5), Some((5, false)))]),
            vec![TaskAction::Signal { id: "a".into() }]
        );
        assert_eq!(
            plan_tasks(1, &t, &[]),
            vec![TaskAction::CancelUnstarted {
                task: t["a"].clone()
            }]
        );
    }

    #[test]
    fn forgotten_tasks_are_dropped_and_finished_ones_kept() {
        let t = table(vec![task("done", Some(1), 5, TaskState::Succeeded)]);
        let a = plan_tasks(
            1,
            &t,
            &[
                obs("done", None, Some((5, true))),
                obs("gone", None, Some((3, false))),
            ],
        );
        assert_eq!(
            a,
            vec![
                TaskAction::Retire { id: "gone".into() },
                TaskAction::Forget { id: "gone".into() }
            ]
        );
    }

    fn arb_state() -> impl Strategy<Value = TaskState> {
        prop_oneof![
            Just(TaskState::Pending),
            Just(TaskState::Running),
            Just(TaskState::Succeeded),
            Just(TaskState::Failed),
            Just(TaskState::Cancelled),
            Just(TaskState::Lost),
        ]
    }

    proptest! {
        /// Never twice, for tasks: a start only for a current attempt of this node that is
        /// not cancelled, not handled here and of which no marker exists; and at most one of
        /// start / resume / cancel-unstarted per task.
        #[test]
        fn starts_only_unrecorded_current_attempts(
            rows in proptest::collection::vec(
                (0usize..6, proptest::option::of(1u64..4), 1u64..4, arb_state(), any::<bool>()),
                0..8,
            ),
            locals in proptest::collection::vec(
                (0usize..8, proptest::option::of(1u64..4), proptest::option::of((1u64..4, any::<bool>()))),
                0..8,
            ),
        ) {
            let me = 1;
            let tasks = table(rows.iter().map(|(i, node, epoch, state, cancel)| {
                let mut t = task(&format!("t{i}"), *node, *epoch, *state);
                t.cancel_requested = *cancel;
                t
            }).collect());
            let mut seen = std::collections::BTreeSet::new();
            let observed: Vec<TaskObserved> = locals
                .iter()
                .filter(|(i, ..)| seen.insert(*i))
                .map(|(i, h, m)| obs(&format!("t{i}"), *h, *m))
                .collect();
            let actions = plan_tasks(me, &tasks, &observed);
            let local = |id: &str| observed.iter().find(|o| o.id == id);
            let mut decided = std::collections::BTreeSet::new();
            for a in &actions {
                match a {
                    TaskAction::Start { task } => {
                        let t = &tasks[&task.id];
                        prop_assert_eq!(t.node_id, Some(me));
                        prop_assert!(!t.state.is_finished());
                        prop_assert!(!t.cancel_requested);
                        prop_assert!(local(&t.id).is_none_or(|o| o.handling.is_none()
                            && o.marker.is_none_or(|m| m.epoch != t.epoch)));
                    }
                    TaskAction::Resume { task } => {
                        let o = local(&task.id).unwrap();
                        prop_assert_eq!(o.handling, None);
                        prop_assert_eq!(o.marker, Some(AttemptMarker { epoch: task.epoch, done: false }));
                    }
                    TaskAction::CancelUnstarted { task } => {
                        prop_assert!(task.cancel_requested);
                        prop_assert!(local(&task.id).is_none_or(|o| o.handling.is_none()));
                    }
                    TaskAction::Signal { id } => prop_assert!(local(id).unwrap().handling.is_some()),
                    TaskAction::Retire { id } => {
                        let o = local(id).unwrap();
                        prop_assert_eq!(o.handling, None);
                        prop_assert!(o.marker.is_some_and(|m| !m.done));
                    }
                    TaskAction::Forget { id } => {
                        prop_assert!(!tasks.contains_key(id));
                        prop_assert_eq!(local(id).unwrap().handling, None);
                    }
                }
                if matches!(a, TaskAction::Start { .. } | TaskAction::Resume { .. } | TaskAction::CancelUnstarted { .. }) {
                    prop_assert!(decided.insert(a.id().to_string()), "two decisions for {}", a.id());
                }
            }
            // Every attempt handled here that is no longer current is told to stop.
            for o in &observed {
                if let Some(e) = o.handling {
                    let current = tasks.get(&o.id).is_some_and(|t| t.node_id == Some(me) && !t.state.is_finished() && t.epoch == e);
                    if !current {
                        let signal = TaskAction::Signal { id: o.id.clone() };
                        prop_assert!(actions.contains(&signal), "{} not signalled", o.id);
                    }
                }
            }
        }
    }
}
