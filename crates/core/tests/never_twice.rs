//! "A workload never runs twice", in `apply`: a workload leaves a node that may still run it
//! only once that node confirmed it stopped it, or once the node's lease provably expired (a
//! liveness verdict of the leader of the entry's own term). One test per path that used to
//! re-place at once, plus the rules around them (client `down` refused, verdicts bound to their
//! term, lease settings, ids never reused, a failed VM started again).

use blixard_core::planner::{plan, Action, Observed, RunState};
use blixard_core::{
    ApplyError, ClusterState, Command, Desired, NodeState, Reply, Request, Resources, TaskSpec,
    TaskState, VmSpec, VmState,
};
use blixard_testkit::apply::Applier;
use proptest::prelude::*;

/// The test kit's apply fixture, with this file's shorthands ([`Shorthands`]).
type H = Applier;

trait Shorthands {
    fn new(nodes: &[(u64, u32)]) -> Self;
    fn create(&mut self, name: &str, vcpus: u32, priority: u8, preempt: bool);
    fn report(&mut self, name: &str, state: VmState) -> Result<Reply, ApplyError>;
    fn running(&mut self, name: &str);
    fn node_of(&self, name: &str) -> Option<u64>;
}

impl Shorthands for Applier {
    /// Workers `(id, vcpus)` with 8 GiB each.
    fn new(nodes: &[(u64, u32)]) -> Self {
        let nodes: Vec<(u64, u32, u64)> = nodes.iter().map(|&(id, v)| (id, v, 8192)).collect();
        Applier::with_workers(&nodes)
    }

    fn create(&mut self, name: &str, vcpus: u32, priority: u8, preempt: bool) {
        let mut spec = VmSpec::new(name);
        spec.vcpus = vcpus;
        spec.priority = priority;
        spec.preempt = preempt;
        self.ok(Command::CreateVm { spec });
    }

    fn report(&mut self, name: &str, state: VmState) -> Result<Reply, ApplyError> {
        let vm = self.s.vms[name].clone();
        self.apply(Command::ReportVmStatus {
            name: name.into(),
            node_id: vm.node_id.expect("placed"),
            epoch: vm.epoch,
            state,
            reason: None,
            restarted: false,
        })
    }

    fn running(&mut self, name: &str) {
        self.report(name, VmState::Running).unwrap();
    }

    fn node_of(&self, name: &str) -> Option<u64> {
        self.s.vms[name].node_id
    }
}

#[test]
fn preemption_waits_for_the_victim_to_stop_on_its_node() {
    let mut h = H::new(&[(1, 2)]);
    h.create("low", 2, 10, false);
    h.running("low");
    h.create("high", 2, 90, true);
    // high holds the room on node 1, but its node must not start it while low runs there.
    assert_eq!(h.node_of("high"), Some(1));
    assert_eq!(h.node_of("low"), Some(1));
    assert!(h.s.vms["low"].evacuating);
    let observed = [Observed {
        name: "low".into(),
        epoch: h.s.vms["low"].epoch,
        run: RunState::Running,
    }];
    let actions = plan(1, h.s.vms.values(), &observed);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Stop { name } if name == "low")),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Start { .. })),
        "{actions:?}"
    );
    // The victim's old epoch is still current: its node can report it stopped.
    h.report("low", VmState::Stopping).unwrap();
    h.report("low", VmState::Stopped).unwrap();
    assert_eq!(h.node_of("low"), None);
    let actions = plan(1, h.s.vms.values(), &[]);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Start { spec, .. } if spec.name == "high")),
        "{actions:?}"
    );
}

#[test]
fn a_client_cannot_declare_a_node_down_or_bring_it_back() {
    let mut h = H::new(&[(1, 4), (2, 4)]);
    h.create("a", 1, 0, false);
    let on = h.node_of("a").unwrap();
    let err = h
        .apply(Command::SetWorkerState {
            id: on,
            state: NodeState::Down,
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("only by the failure detector"),
        "{err}"
    );
    assert_eq!(h.node_of("a"), Some(on));
    // The detector's verdict in the current term moves it.
    h.ok(Command::LivenessVerdict {
        id: on,
        state: NodeState::Down,
        term: 1,
    });
    assert_ne!(h.node_of("a"), Some(on));
    let err = h
        .apply(Command::SetWorkerState {
            id: on,
            state: NodeState::Up,
        })
        .unwrap_err();
    assert!(err.to_string().contains("comes back up by itself"), "{err}");
    h.ok(Command::LivenessVerdict {
        id: on,
        state: NodeState::Up,
        term: 1,
    });
    assert_eq!(h.s.workers[&on].state, NodeState::Up);
    // Draining and undraining stay operator commands.
    h.ok(Command::SetWorkerState {
        id: on,
        state: NodeState::Draining,
    });
    h.ok(Command::SetWorkerState {
        id: on,
        state: NodeState::Up,
    });
}

#[test]
fn a_verdict_of_another_term_is_void() {
    let mut h = H::new(&[(1, 4), (2, 4)]);
    h.create("a", 1, 0, false);
    let on = h.node_of("a").unwrap();
    // Decided by the leader of term 1 (frozen, woken up), committed by the leader of term 2.
    h.term = 2;
    let err = h
        .apply(Command::LivenessVerdict {
            id: on,
            state: NodeState::Down,
            term: 1,
        })
        .unwrap_err();
    assert_eq!(
        err,
        ApplyError::StaleTerm {
            decided: 1,
            committed: 2
        }
    );
    assert_eq!(h.s.workers[&on].state, NodeState::Up);
    assert_eq!(h.node_of("a"), Some(on));
    let err = h
        .apply(Command::RemoveWorker { id: on, term: 1 })
        .unwrap_err();
    assert!(matches!(err, ApplyError::StaleTerm { .. }));
    assert!(h.s.workers.contains_key(&on));
}

#[test]
fn re_registration_with_less_capacity_stops_before_moving_and_never_moves_tasks() {
    let mut h = H::new(&[(1, 4), (2, 4)]);
    let mut pin = VmSpec::new("v");
    pin.vcpus = 2;
    pin.node = None;
    h.ok(Command::CreateVm { spec: pin });
    let on = h.node_of("v").unwrap();
    h.running("v");
    let mut spec = TaskSpec::new(vec!["sleep".into(), "60".into()]);
    spec.cpus = 2;
    spec.node = Some(on);
    h.ok(Command::SubmitTask {
        id: "t".into(),
        spec,
    });
    h.ok(Command::ReportTaskStarted {
        id: "t".into(),
        node_id: on,
        epoch: h.s.tasks["t"].epoch,
    });
    // The node comes back with 1 vCPU: neither fits, but the VM only leaves once stopped and
    // the task is left to finish (a one-shot command cannot move without running twice).
    h.register(on, 1, 8192);
    assert_eq!(h.node_of("v"), Some(on));
    assert!(h.s.vms["v"].evacuating);
    assert_eq!(
        (h.s.tasks["t"].node_id, h.s.tasks["t"].state),
        (Some(on), TaskState::Running)
    );
    h.report("v", VmState::Stopped).unwrap();
    assert_ne!(h.node_of("v"), Some(on));
}

#[test]
fn lease_settings_are_replicated_validated_and_judged_by_the_longer_lease() {
    let mut h = H::new(&[(1, 4)]);
    assert_eq!(h.s.liveness.lease_ms, 10_000);
    for bad in [
        Command::SetLivenessSettings {
            lease_ms: None,
            grace_ms: Some(0),
            heartbeat_ms: None,
        },
        Command::SetLivenessSettings {
            lease_ms: Some(1500),
            grace_ms: None,
            heartbeat_ms: None,
        },
        Command::SetLivenessSettings {
            lease_ms: None,
            grace_ms: None,
            heartbeat_ms: Some(6000),
        },
    ] {
        h.apply(bad).unwrap_err();
    }
    h.ok(Command::SetLivenessSettings {
        lease_ms: Some(4000),
        grace_ms: Some(1000),
        heartbeat_ms: Some(500),
    });
    let l = h.s.liveness;
    assert_eq!((l.lease_ms, l.grace_ms, l.heartbeat_ms), (4000, 1000, 500));
    // A node may still hold a 10 s lease granted before the change; once every such lease
    // has ended (10 s after the change, plus grace), the new lease is the measure.
    assert_eq!(l.down_after_ms(l.changed_ms), 11_000);
    assert_eq!(l.down_after_ms(l.changed_ms + 10_999), 11_000);
    assert_eq!(l.down_after_ms(l.changed_ms + 11_000), 5_000);
}

#[test]
fn node_ids_are_never_reused_and_only_members_register() {
    let mut h = H::new(&[]);
    h.s.note_membership([1, 2]);
    h.register(1, 4, 8192);
    h.s.note_membership([1]);
    assert!(h.s.id_was_used(2));
    assert!(!h.s.id_was_used(1) && !h.s.id_was_used(3));
    let err = h
        .apply(Command::RegisterWorker {
            id: 666,
            addr: "10.0.0.66:7000".into(),
            capacity: Resources::new(100_000, 1 << 30, 1 << 20),
            kvm: true,
            labels: Default::default(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
    // Kept across a reload from rows.
    let rows = h.s.all_rows();
    let back =
        ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
    assert!(back.id_was_used(2));
}

#[test]
fn a_failed_vm_starts_again_under_a_new_epoch_and_restarts_are_counted() {
    let mut h = H::new(&[(1, 4)]);
    let mut spec = VmSpec::new("f");
    spec.restart = blixard_core::RestartPolicy::Never;
    h.ok(Command::CreateVm { spec });
    h.running("f");
    h.report("f", VmState::Failed).unwrap();
    let e0 = h.s.vms["f"].epoch;
    // `vm start` (desired was already running) asks for a fresh run.
    h.ok(Command::SetVmDesired {
        name: "f".into(),
        desired: Desired::Running,
    });
    let vm = h.s.vms["f"].clone();
    assert!(vm.epoch > e0);
    assert_eq!((vm.node_id, vm.state), (Some(1), VmState::Pending));
    // The executor counts its own restarts, one per restart.
    for _ in 0..3 {
        let vm = h.s.vms["f"].clone();
        h.ok(Command::ReportVmStatus {
            name: "f".into(),
            node_id: 1,
            epoch: vm.epoch,
            state: VmState::Starting,
            reason: None,
            restarted: true,
        });
    }
    assert_eq!(h.s.vms["f"].restarts, 3);
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        vm: u8,
        vcpus: u32,
        priority: u8,
        preempt: bool,
    },
    Report {
        vm: u8,
        state: VmState,
    },
    Register {
        node: u64,
        vcpus: u32,
    },
    Verdict {
        node: u64,
        down: bool,
    },
    Drain {
        node: u64,
    },
    Move {
        vm: u8,
    },
    Delete {
        vm: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 1u32..4, 0u8..100, any::<bool>()).prop_map(|(vm, vcpus, priority, preempt)| {
            Op::Create {
                vm,
                vcpus,
                priority,
                preempt,
            }
        }),
        (
            0u8..6,
            prop_oneof![
                Just(VmState::Running),
                Just(VmState::Stopped),
                Just(VmState::Failed),
                Just(VmState::Starting)
            ]
        )
            .prop_map(|(vm, state)| Op::Report { vm, state }),
        (1u64..4, 0u32..6).prop_map(|(node, vcpus)| Op::Register { node, vcpus }),
        (1u64..4, any::<bool>()).prop_map(|(node, down)| Op::Verdict { node, down }),
        (1u64..4).prop_map(|node| Op::Drain { node }),
        (0u8..6).prop_map(|vm| Op::Move { vm }),
        (0u8..6).prop_map(|vm| Op::Delete { vm }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever happens, a VM is never taken off a node that may still run it unless that node
    /// confirmed the stop or was declared down: a placed VM that its node reported running,
    /// starting or stopping, keeps its node until then.
    #[test]
    fn a_vm_leaves_a_node_only_after_a_stop_or_a_down_verdict(ops in proptest::collection::vec(op(), 1..80)) {
        let mut h = H::new(&[(1, 4), (2, 4), (3, 4)]);
        for op in ops {
            let before = h.s.clone();
            let cmd = match &op {
                Op::Create { vm, vcpus, priority, preempt } => {
                    let mut spec = VmSpec::new(format!("vm-{vm}"));
                    spec.vcpus = *vcpus;
                    spec.priority = *priority;
                    spec.preempt = *preempt;
                    Command::CreateVm { spec }
                }
                Op::Report { vm, state } => {
                    let name = format!("vm-{vm}");
                    let Some(v) = h.s.vms.get(&name) else { continue };
                    let Some(node_id) = v.node_id else { continue };
                    Command::ReportVmStatus { name, node_id, epoch: v.epoch, state: *state, reason: None, restarted: false }
                }
                Op::Register { node, vcpus } => Command::RegisterWorker {
                    id: *node,
                    addr: format!("127.0.0.1:{node}"),
                    capacity: Resources::new(*vcpus, 8192, 100),
                    kvm: false,
                    labels: Default::default(),
                },
                Op::Verdict { node, down } => Command::LivenessVerdict {
                    id: *node,
                    state: if *down { NodeState::Down } else { NodeState::Up },
                    term: h.term,
                },
                Op::Drain { node } => Command::SetWorkerState { id: *node, state: NodeState::Draining },
                Op::Move { vm } => Command::MoveVm { name: format!("vm-{vm}") },
                Op::Delete { vm } => Command::DeleteVm { name: format!("vm-{vm}") },
            };
            let down_verdict = matches!(op, Op::Verdict { down: true, .. });
            let deleted = match &op { Op::Delete { vm } => Some(format!("vm-{vm}")), _ => None };
            let confirmed = match &op {
                Op::Report { vm, state: VmState::Stopped | VmState::Failed } => Some(format!("vm-{vm}")),
                _ => None,
            };
            let _ = h.apply(cmd);
            for (name, old) in &before.vms {
                let Some(node) = old.node_id else { continue };
                let may_run = matches!(old.state, VmState::Running | VmState::Starting | VmState::Stopping | VmState::Pending)
                    && old.desired == Desired::Running;
                if !may_run || deleted.as_deref() == Some(name.as_str()) || confirmed.as_deref() == Some(name.as_str()) {
                    continue;
                }
                let now = h.s.vms.get(name).and_then(|v| v.node_id);
                let node_went_down = down_verdict && before.workers.get(&node).is_some_and(|w| w.state != NodeState::Down);
                prop_assert!(
                    now == Some(node) || node_went_down,
                    "{} left node {} (state {:?}) after {:?} without a stop or a down verdict", name, node, old.state, op
                );
            }
        }
    }
}

#[test]
fn byte_budgets_bound_the_state_and_refusals_change_nothing() {
    let mut h = H::new(&[(1, 4)]);
    // Tasks: about 30 KiB each, never placed (64 vCPUs): the budget stops them, not the count.
    let big = "x".repeat(15 * 1024);
    let mut accepted = 0;
    let refused = loop {
        let mut spec = TaskSpec::new(vec!["echo".into(), big.clone()]);
        spec.cpus = 64;
        spec.env.insert("V".into(), "v".repeat(15 * 1024));
        h.index += 1;
        // (Straight to apply: the harness's per-apply digest would dominate the test's time.)
        let r = Request::new(
            Command::SubmitTask {
                id: format!("t-{accepted}"),
                spec: spec.clone(),
            },
            h.index,
        );
        match h.s.apply_at(h.term, h.index, &r) {
            Ok(_) => accepted += 1,
            Err(_) => {
                break h
                    .apply(Command::SubmitTask {
                        id: format!("t-{accepted}"),
                        spec,
                    })
                    .unwrap_err()
            }
        }
        assert!(accepted < 5_000, "no budget");
    };
    assert!(matches!(refused, ApplyError::LimitReached(_)), "{refused}");
    assert!(accepted * 30 * 1024 <= blixard_core::budget::MAX_TASK_SPEC_BYTES);
    assert!(accepted > 500, "{accepted}");
    // Remembered outcomes: each retry-able reply carries a task; the table stays in budget.
    for i in 0..200 {
        let r = Request::new(
            Command::CancelTask {
                id: format!("t-{i}"),
            },
            1,
        )
        .with_id(format!("req-{i}"));
        h.index += 1;
        h.s.apply_at(h.term, h.index, &r).unwrap();
    }
    let kept: usize =
        h.s.requests
            .iter()
            .map(|(k, v)| k.len() + serde_json::to_vec(v).unwrap().len())
            .sum();
    assert!(kept <= blixard_core::budget::MAX_DEDUP_BYTES, "{kept}");
}
