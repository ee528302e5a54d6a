//! A node stopping gracefully says so (`Command::WorkerShuttingDown`): nothing new is placed on
//! it while it is `shutting-down`, its workloads stay, it is `up` again once the failure
//! detector sees it back, and only the node itself puts it in that state.

use std::collections::BTreeSet;

use blixard_core::{
    ApplyError, ClusterState, Command, EventKind, EventSource, NodeState, Reply, Request,
    Resources, TaskSpec, VmSpec,
};
use proptest::prelude::*;

/// The VMs and tasks on one node.
type OnNode = (BTreeSet<String>, BTreeSet<String>);

struct H {
    s: ClusterState,
    index: u64,
}

impl H {
    fn new(nodes: &[u64]) -> Self {
        let mut h = H {
            s: ClusterState::default(),
            index: 0,
        };
        for id in nodes {
            h.apply(register(*id)).unwrap();
        }
        h
    }

    fn apply(&mut self, c: Command) -> Result<Reply, ApplyError> {
        self.index += 1;
        let before = self.s.clone();
        let out = self
            .s
            .apply_at(1, self.index, &Request::new(c, self.index * 100));
        self.s
            .check_invariants()
            .unwrap_or_else(|e| panic!("invariant broken: {e}"));
        if out.is_err() {
            assert_eq!(
                before.digest(),
                self.s.digest(),
                "a refusal changed the state"
            );
        }
        out
    }

    fn state(&self, id: u64) -> NodeState {
        self.s.workers[&id].state
    }

    fn on(&self, id: u64) -> OnNode {
        let vms = self
            .s
            .vms
            .values()
            .filter(|v| v.node_id == Some(id))
            .map(|v| v.spec.name.clone())
            .collect();
        let tasks = self
            .s
            .tasks
            .values()
            .filter(|t| t.node_id == Some(id))
            .map(|t| t.id.clone())
            .collect();
        (vms, tasks)
    }
}

fn register(id: u64) -> Command {
    Command::RegisterWorker {
        id,
        addr: format!("127.0.0.1:{id}"),
        capacity: Resources::new(4, 8192, 100),
        kvm: false,
        labels: Default::default(),
    }
}

fn vm(name: &str, node: Option<u64>) -> Command {
    let mut spec = VmSpec::new(name);
    spec.vcpus = 1;
    spec.memory_mb = 256;
    spec.node = node;
    Command::CreateVm { spec }
}

#[test]
fn shutting_down_takes_nothing_new_keeps_its_vms_and_comes_back_up() {
    let mut h = H::new(&[1]);
    h.apply(vm("a", None)).unwrap();
    assert_eq!(h.s.vms["a"].node_id, Some(1));

    h.apply(Command::WorkerShuttingDown { id: 1 }).unwrap();
    assert_eq!(h.state(1), NodeState::ShuttingDown);
    assert_eq!(h.s.vms["a"].node_id, Some(1), "its VMs stay where they are");
    // Nothing new: a VM and a task pinned to it wait, with a reason naming the state.
    h.apply(vm("b", Some(1))).unwrap();
    assert_eq!(h.s.vms["b"].node_id, None);
    let reason = h.s.vms["b"].reason.clone().unwrap_or_default();
    assert!(reason.contains("shutting-down"), "{reason}");
    h.apply(Command::SubmitTask {
        id: "t".into(),
        spec: TaskSpec::new(vec!["true".into()]),
    })
    .unwrap();
    assert_eq!(h.s.tasks["t"].node_id, None);

    // Operators cannot undrain it nor set the state themselves.
    assert!(h
        .apply(Command::SetWorkerState {
            id: 1,
            state: NodeState::Up
        })
        .is_err());
    assert!(h
        .apply(Command::SetWorkerState {
            id: 1,
            state: NodeState::ShuttingDown
        })
        .is_err());
    // Saying it twice changes nothing.
    let digest = h.s.digest();
    h.apply(Command::WorkerShuttingDown { id: 1 }).unwrap();
    assert_eq!(digest, h.s.digest());

    // Back: the detector's verdict makes it up, and what waited is placed.
    h.apply(Command::LivenessVerdict {
        id: 1,
        state: NodeState::Up,
        term: 1,
    })
    .unwrap();
    assert_eq!(h.state(1), NodeState::Up);
    assert_eq!(h.s.vms["b"].node_id, Some(1));
    assert_eq!(h.s.tasks["t"].node_id, Some(1));
}

#[test]
fn a_draining_or_down_node_keeps_its_state_and_a_silent_one_goes_down() {
    let mut h = H::new(&[1, 2, 3]);
    h.apply(Command::SetWorkerState {
        id: 1,
        state: NodeState::Draining,
    })
    .unwrap();
    h.apply(Command::WorkerShuttingDown { id: 1 }).unwrap();
    assert_eq!(h.state(1), NodeState::Draining);
    h.apply(Command::LivenessVerdict {
        id: 2,
        state: NodeState::Down,
        term: 1,
    })
    .unwrap();
    h.apply(Command::WorkerShuttingDown { id: 2 }).unwrap();
    assert_eq!(h.state(2), NodeState::Down);
    assert!(h.apply(Command::WorkerShuttingDown { id: 9 }).is_err());

    // Shutting down, then silent past its lease: down, and its VMs move.
    h.apply(vm("c", None)).unwrap();
    let node = h.s.vms["c"].node_id.unwrap();
    assert_eq!(node, 3);
    h.apply(Command::WorkerShuttingDown { id: 3 }).unwrap();
    h.apply(Command::LivenessVerdict {
        id: 3,
        state: NodeState::Down,
        term: 1,
    })
    .unwrap();
    assert_eq!(h.state(3), NodeState::Down);
    assert_ne!(h.s.vms["c"].node_id, Some(3));
}

#[test]
fn every_node_emits_the_same_shutting_down_event() {
    let mut s = ClusterState::default();
    let mut src = EventSource::new(&s, 0);
    for (i, c) in [register(1), Command::WorkerShuttingDown { id: 1 }]
        .into_iter()
        .enumerate()
    {
        let index = i as u64 + 1;
        s.apply(index, &Request::new(c, index * 10)).unwrap();
        let t = s.take_touched();
        src.observe(index, index * 10, &s, &t);
    }
    let (events, _) = src.since(0, usize::MAX);
    assert!(
        events.iter().any(|e| matches!(
            &e.kind,
            EventKind::NodeState { node: 1, to, .. } if to == "shutting-down"
        ) && e.index == 2),
        "{events:?}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Vm { n: u8, pin: Option<u64> },
    Task { n: u8 },
    ShuttingDown { node: u64 },
    Verdict { node: u64, up: bool },
    Drain { node: u64 },
    Undrain { node: u64 },
    Register { node: u64 },
    Delete { n: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..12, proptest::option::of(1u64..4)).prop_map(|(n, pin)| Op::Vm { n, pin }),
        2 => (0u8..8).prop_map(|n| Op::Task { n }),
        2 => (1u64..4).prop_map(|node| Op::ShuttingDown { node }),
        2 => (1u64..4, any::<bool>()).prop_map(|(node, up)| Op::Verdict { node, up }),
        1 => (1u64..4).prop_map(|node| Op::Drain { node }),
        1 => (1u64..4).prop_map(|node| Op::Undrain { node }),
        1 => (1u64..4).prop_map(|node| Op::Register { node }),
        1 => (0u8..12).prop_map(|n| Op::Delete { n }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever happens, a node that is shutting down before and after a command got no new
    /// VM and no new task from it; and only the node itself (or the detector, back to up or
    /// down) moves it in or out of that state.
    #[test]
    fn nothing_new_lands_on_a_node_shutting_down(ops in proptest::collection::vec(op(), 1..80)) {
        let mut h = H::new(&[1, 2, 3]);
        for op in ops {
            let cmd = match &op {
                Op::Vm { n, pin } => vm(&format!("vm-{n}"), *pin),
                Op::Task { n } => {
                    let mut spec = TaskSpec::new(vec!["true".into()]);
                    spec.cpus = 1;
                    Command::SubmitTask { id: format!("t-{n}"), spec }
                }
                Op::ShuttingDown { node } => Command::WorkerShuttingDown { id: *node },
                Op::Verdict { node, up } => Command::LivenessVerdict {
                    id: *node,
                    state: if *up { NodeState::Up } else { NodeState::Down },
                    term: 1,
                },
                Op::Drain { node } => Command::SetWorkerState { id: *node, state: NodeState::Draining },
                Op::Undrain { node } => Command::SetWorkerState { id: *node, state: NodeState::Up },
                Op::Register { node } => register(*node),
                Op::Delete { n } => Command::DeleteVm { name: format!("vm-{n}") },
            };
            let before: Vec<(u64, NodeState, OnNode)> =
                (1..4).map(|id| (id, h.state(id), h.on(id))).collect();
            let _ = h.apply(cmd);
            for (id, was, (vms, tasks)) in before {
                let now = h.state(id);
                if was == NodeState::ShuttingDown && now == NodeState::ShuttingDown {
                    let (vms_after, tasks_after) = h.on(id);
                    prop_assert!(vms_after.is_subset(&vms), "new VM on node {} shutting down after {:?}", id, op);
                    prop_assert!(tasks_after.is_subset(&tasks), "new task on node {} shutting down after {:?}", id, op);
                }
                if now == NodeState::ShuttingDown && was != NodeState::ShuttingDown {
                    prop_assert!(
                        matches!(op, Op::ShuttingDown { node } if node == id) && was == NodeState::Up,
                        "node {} became shutting-down from {:?} after {:?}", id, was, op
                    );
                }
                if was == NodeState::ShuttingDown && now != NodeState::ShuttingDown {
                    prop_assert!(
                        matches!(op, Op::Verdict { node, .. } | Op::Drain { node } if node == id),
                        "node {} left shutting-down after {:?}", id, op
                    );
                }
            }
        }
    }
}
