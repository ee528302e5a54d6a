//! Apply rules of one-shot tasks: placement with capacity accounting, stale attempts refused,
//! retries on node loss, cancellation, retention and validation.

use blixard_core::task::{MAX_FINISHED_TASKS, MAX_TASK_ARGS};
use blixard_core::{
    ApplyError, ClusterState, Command, NodeState, Reply, Resources, TaskRecord, TaskSpec, TaskState,
};
use blixard_testkit::apply::Applier;

/// The test kit's apply fixture (at term 0: the verdicts below carry term 0), with this
/// file's shorthands ([`Shorthands`]).
type T = Applier;

trait Shorthands {
    fn new(nodes: &[(u64, u32, u64)]) -> Self;
    fn submit(&mut self, id: &str, cpus: u32, mem: u64) -> TaskRecord;
    fn task(&self, id: &str) -> &TaskRecord;
    fn result(
        &mut self,
        id: &str,
        node: u64,
        epoch: u64,
        state: TaskState,
        code: i32,
    ) -> Result<Reply, ApplyError>;
}

impl Shorthands for Applier {
    fn new(nodes: &[(u64, u32, u64)]) -> Self {
        let mut a = Applier::with_workers(nodes);
        a.term = 0;
        a
    }

    fn submit(&mut self, id: &str, cpus: u32, mem: u64) -> TaskRecord {
        let mut spec = TaskSpec::new(vec!["sleep".into(), "1".into()]);
        spec.cpus = cpus;
        spec.memory_mb = mem;
        match self.ok(Command::SubmitTask {
            id: id.into(),
            spec,
        }) {
            Reply::Task(t) => *t,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn task(&self, id: &str) -> &TaskRecord {
        &self.s.tasks[id]
    }

    fn result(
        &mut self,
        id: &str,
        node: u64,
        epoch: u64,
        state: TaskState,
        code: i32,
    ) -> Result<Reply, ApplyError> {
        self.apply(Command::ReportTaskResult {
            id: id.into(),
            node_id: node,
            epoch,
            state,
            exit_code: Some(code),
            duration_ms: Some(10),
            reason: None,
        })
    }
}

#[test]
fn placement_accounts_capacity_and_frees_it_at_the_end() {
    let mut t = T::new(&[(1, 2, 1024)]);
    let a = t.submit("a", 2, 512);
    assert_eq!(a.node_id, Some(1));
    assert_eq!(a.attempt, 1);
    assert_eq!(t.s.workers[&1].allocated, Resources::new(2, 512, 0));
    // No room: waits, with a reason.
    let b = t.submit("b", 1, 256);
    assert_eq!(b.node_id, None);
    assert_eq!(b.state, TaskState::Pending);
    assert!(
        b.reason.as_deref().unwrap_or("").contains("waiting"),
        "{:?}",
        b.reason
    );
    let ep = t.task("a").epoch;
    t.ok(Command::ReportTaskStarted {
        id: "a".into(),
        node_id: 1,
        epoch: ep,
    });
    assert_eq!(t.task("a").state, TaskState::Running);
    t.result("a", 1, ep, TaskState::Succeeded, 0).unwrap();
    assert_eq!(t.task("a").state, TaskState::Succeeded);
    assert_eq!(t.task("a").exit_code, Some(0));
    // Freed: b is placed at once.
    assert_eq!(t.task("b").node_id, Some(1));
    assert_eq!(t.s.workers[&1].allocated, Resources::new(1, 256, 0));
}

#[test]
fn stale_attempt_results_are_refused() {
    let mut t = T::new(&[(1, 4, 4096), (2, 4, 4096)]);
    let a = t.submit("a", 1, 64);
    let first = a.node_id.unwrap();
    let ep = a.epoch;
    t.ok(Command::ReportTaskStarted {
        id: "a".into(),
        node_id: first,
        epoch: ep,
    });
    t.ok(Command::LivenessVerdict {
        id: first,
        state: NodeState::Down,
        term: 0,
    });
    let a = t.task("a").clone();
    assert_eq!(a.attempt, 2);
    assert_ne!(a.node_id, Some(first));
    assert!(a.epoch > ep);
    // The old node comes back and reports its attempt: refused.
    let err = t.result("a", first, ep, TaskState::Failed, 1).unwrap_err();
    assert!(matches!(err, ApplyError::StaleAttempt { .. }), "{err}");
    let err = t
        .apply(Command::ReportTaskStarted {
            id: "a".into(),
            node_id: first,
            epoch: ep,
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::StaleAttempt { .. }));
    // The current attempt's result counts; a second result is refused.
    let second = a.node_id.unwrap();
    t.result("a", second, a.epoch, TaskState::Succeeded, 0)
        .unwrap();
    assert!(t
        .result("a", second, a.epoch, TaskState::Failed, 1)
        .is_err());
    assert_eq!(t.task("a").state, TaskState::Succeeded);
}

#[test]
fn node_loss_retries_then_loses() {
    let mut t = T::new(&[(1, 4, 4096), (2, 4, 4096), (3, 4, 4096)]);
    let mut spec = TaskSpec::new(vec!["x".into()]);
    spec.max_attempts = 2;
    t.ok(Command::SubmitTask {
        id: "a".into(),
        spec,
    });
    let n1 = t.task("a").node_id.unwrap();
    t.ok(Command::LivenessVerdict {
        id: n1,
        state: NodeState::Down,
        term: 0,
    });
    assert_eq!(t.task("a").attempt, 2);
    let n2 = t.task("a").node_id.unwrap();
    assert_ne!(n1, n2);
    t.ok(Command::LivenessVerdict {
        id: n2,
        state: NodeState::Down,
        term: 0,
    });
    let a = t.task("a");
    assert_eq!(a.state, TaskState::Lost);
    assert!(a.reason.as_deref().unwrap().contains("no attempt left"));
    for w in t.s.workers.values() {
        assert_eq!(w.allocated, Resources::default());
    }
}

#[test]
fn pinned_tasks_wait_for_their_node() {
    let mut t = T::new(&[(1, 4, 4096), (2, 4, 4096)]);
    t.ok(Command::LivenessVerdict {
        id: 2,
        state: NodeState::Down,
        term: 0,
    });
    let mut spec = TaskSpec::new(vec!["x".into()]);
    spec.node = Some(2);
    t.ok(Command::SubmitTask {
        id: "p".into(),
        spec: spec.clone(),
    });
    assert_eq!(t.task("p").node_id, None);
    assert!(t.task("p").reason.as_deref().unwrap().contains("node 2"));
    t.ok(Command::LivenessVerdict {
        id: 2,
        state: NodeState::Up,
        term: 0,
    });
    assert_eq!(t.task("p").node_id, Some(2));
    spec.node = Some(9);
    assert!(matches!(
        t.apply(Command::SubmitTask {
            id: "q".into(),
            spec
        }),
        Err(ApplyError::NotFound { .. })
    ));
}

#[test]
fn cancel_pending_at_once_and_assigned_through_the_node() {
    let mut t = T::new(&[(1, 1, 4096)]);
    t.submit("a", 1, 64);
    t.submit("b", 1, 64);
    assert_eq!(t.task("b").node_id, None);
    t.ok(Command::CancelTask { id: "b".into() });
    assert_eq!(t.task("b").state, TaskState::Cancelled);
    t.ok(Command::CancelTask { id: "a".into() });
    let a = t.task("a").clone();
    assert!(a.cancel_requested);
    assert_eq!(a.state, TaskState::Pending);
    t.result("a", 1, a.epoch, TaskState::Cancelled, -1).unwrap();
    assert_eq!(t.task("a").state, TaskState::Cancelled);
    assert!(matches!(
        t.apply(Command::CancelTask { id: "a".into() }),
        Err(ApplyError::Invalid(_))
    ));
    assert!(matches!(
        t.apply(Command::CancelTask { id: "zz".into() }),
        Err(ApplyError::NotFound { .. })
    ));
}

#[test]
fn retention_evicts_the_oldest_finished() {
    let mut t = T::new(&[(1, 4, 4096)]);
    for i in 0..MAX_FINISHED_TASKS + 5 {
        let id = format!("t{i}");
        let r = t.submit(&id, 1, 0);
        t.result(&id, 1, r.epoch, TaskState::Succeeded, 0).unwrap();
    }
    assert_eq!(t.s.tasks.len(), MAX_FINISHED_TASKS);
    for i in 0..5 {
        assert!(!t.s.tasks.contains_key(&format!("t{i}")));
    }
    assert!(t.s.tasks.contains_key("t5"));
    // Rows round-trip.
    let rows = t.s.all_rows();
    let back =
        ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
    assert_eq!(back.digest(), t.s.digest());
    back.check_invariants().unwrap();
}

#[test]
fn validation_refuses_bad_specs_and_ids() {
    let mut t = T::new(&[(1, 4, 4096)]);
    let bad = |f: &dyn Fn(&mut TaskSpec)| {
        let mut s = TaskSpec::new(vec!["x".into()]);
        f(&mut s);
        s
    };
    let cases = [
        bad(&|s| s.command.clear()),
        bad(&|s| s.command = vec![String::new()]),
        bad(&|s| s.command = vec!["a".into(); MAX_TASK_ARGS + 1]),
        bad(&|s| s.command = vec!["a".repeat(20_000)]),
        bad(&|s| s.timeout_secs = 0),
        bad(&|s| s.cpus = 0),
        bad(&|s| s.max_attempts = 0),
        bad(&|s| {
            s.env.insert("1BAD".into(), "v".into());
        }),
    ];
    for spec in cases {
        assert!(matches!(
            t.apply(Command::SubmitTask {
                id: "a".into(),
                spec
            }),
            Err(ApplyError::Invalid(_))
        ));
    }
    let spec = TaskSpec::new(vec!["x".into()]);
    assert!(t
        .apply(Command::SubmitTask {
            id: "Bad Id".into(),
            spec: spec.clone()
        })
        .is_err());
    t.ok(Command::SubmitTask {
        id: "a".into(),
        spec: spec.clone(),
    });
    assert!(matches!(
        t.apply(Command::SubmitTask {
            id: "a".into(),
            spec
        }),
        Err(ApplyError::AlreadyExists { .. })
    ));
}

#[test]
fn vms_and_tasks_share_capacity() {
    let mut t = T::new(&[(1, 2, 1024)]);
    t.submit("a", 2, 512);
    let mut vm = blixard_core::VmSpec::new("v");
    vm.vcpus = 1;
    vm.memory_mb = 256;
    let Reply::Vm(v) = t.ok(Command::CreateVm { spec: vm }) else {
        panic!()
    };
    assert_eq!(v.node_id, None, "the task holds the vCPUs");
    let ep = t.task("a").epoch;
    t.result("a", 1, ep, TaskState::Failed, 3).unwrap();
    assert_eq!(t.s.vms["v"].node_id, Some(1), "placed once the task ended");
    assert_eq!(t.task("a").exit_code, Some(3));
}
