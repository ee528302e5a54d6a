//! Property tests of placement through `ClusterState::apply`: random clusters and random request
//! sequences; invariants after every apply, determinism, incremental rows equal to a full
//! rewrite, dry runs agreeing with apply, and pending VMs placed once capacity appears.

use std::collections::{BTreeMap, BTreeSet};

use blixard_core::explain;
use blixard_core::{
    ClusterState, Command, Desired, NodeId, NodeState, Reply, Request, Resources, Strategy, VmSpec,
    VmState,
};
use blixard_core::{RestartPolicy, TaskSpec, TaskState};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Op {
    Register {
        id: NodeId,
        vcpus: u32,
        memory_mb: u64,
        disk_gb: u64,
        kvm: bool,
        zone: Option<u8>,
    },
    Remove {
        id: NodeId,
    },
    SetState {
        id: NodeId,
        state: NodeState,
    },
    Create(VmSpec),
    Delete {
        vm: u8,
    },
    Settings {
        strategy: Strategy,
        pct: u32,
    },
    Move {
        vm: u8,
    },
    Desired {
        vm: u8,
        running: bool,
    },
    /// A report for the VM's current placement (`current`) or a stale one.
    Report {
        vm: u8,
        state: VmState,
        current: bool,
    },
    SubmitTask {
        t: u8,
        cpus: u32,
        memory_mb: u64,
        pin: Option<NodeId>,
        max_attempts: u32,
    },
    /// A task start (`state == None`) or result for its current assignment or a stale one.
    TaskReport {
        t: u8,
        state: Option<TaskState>,
        current: bool,
    },
    CancelTask {
        t: u8,
    },
}

fn zone(z: u8) -> String {
    ["a", "b", "c"][usize::from(z % 3)].to_string()
}

fn strategy() -> impl proptest::strategy::Strategy<Value = Strategy> {
    prop_oneof![Just(Strategy::Binpack), Just(Strategy::Spread)]
}

fn spec() -> impl proptest::strategy::Strategy<Value = VmSpec> {
    (
        0u8..24,
        1u32..6,
        prop_oneof![Just(16u64), Just(256), Just(1024), Just(4096)],
        0u64..40,
        proptest::option::weighted(0.3, 0u8..3),
        proptest::option::weighted(0.2, 0u8..3),
        proptest::bool::weighted(0.2),
        proptest::option::weighted(0.1, 1u64..6),
        (
            0u8..=100,
            proptest::bool::weighted(0.3),
            proptest::option::weighted(0.3, strategy()),
            proptest::bool::ANY,
            0u8..3,
        ),
    )
        .prop_map(
            |(
                n,
                vcpus,
                memory_mb,
                disk_gb,
                group,
                zone_c,
                kvm,
                pin,
                (priority, preempt, strategy, start, restart),
            )| {
                let mut s = VmSpec::new(format!("vm-{n}"));
                s.vcpus = vcpus;
                s.memory_mb = memory_mb;
                s.disk_gb = disk_gb;
                s.anti_affinity = group.map(|g| format!("g{g}"));
                if let Some(z) = zone_c {
                    s.constraints.insert("zone".into(), zone(z));
                }
                if kvm {
                    s.features.insert("kvm".into());
                }
                s.node = pin;
                s.priority = priority;
                s.preempt = preempt;
                s.strategy = strategy;
                s.start = start;
                s.restart = [
                    RestartPolicy::Always,
                    RestartPolicy::OnFailure,
                    RestartPolicy::Never,
                ][restart as usize];
                s
            },
        )
}

fn node_state() -> impl proptest::strategy::Strategy<Value = NodeState> {
    prop_oneof![
        Just(NodeState::Up),
        Just(NodeState::Down),
        Just(NodeState::Draining),
        Just(NodeState::ShuttingDown)
    ]
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    prop_oneof![
        3 => (1u64..6, 0u32..16, prop_oneof![Just(0u64), Just(2048), Just(8192), Just(16384)], 0u64..100, proptest::bool::ANY, proptest::option::of(0u8..3))
            .prop_map(|(id, vcpus, memory_mb, disk_gb, kvm, zone)| Op::Register { id, vcpus, memory_mb, disk_gb, kvm, zone }),
        1 => (1u64..6).prop_map(|id| Op::Remove { id }),
        2 => (1u64..6, node_state()).prop_map(|(id, state)| Op::SetState { id, state }),
        8 => spec().prop_map(Op::Create),
        3 => (0u8..24).prop_map(|vm| Op::Delete { vm }),
        1 => (strategy(), prop_oneof![Just(50u32), Just(100), Just(150), Just(200), Just(400), Just(1001)])
            .prop_map(|(strategy, pct)| Op::Settings { strategy, pct }),
        2 => (0u8..24).prop_map(|vm| Op::Move { vm }),
        1 => (0u8..24, proptest::bool::ANY).prop_map(|(vm, running)| Op::Desired { vm, running }),
        3 => (0u8..24, prop_oneof![Just(VmState::Starting), Just(VmState::Running), Just(VmState::Stopped), Just(VmState::Failed)], proptest::bool::weighted(0.8))
            .prop_map(|(vm, state, current)| Op::Report { vm, state, current }),
        3 => (0u8..12, 1u32..4, prop_oneof![Just(0u64), Just(512), Just(4096)], proptest::option::weighted(0.2, 1u64..6), 1u32..4)
            .prop_map(|(t, cpus, memory_mb, pin, max_attempts)| Op::SubmitTask { t, cpus, memory_mb, pin, max_attempts }),
        3 => (0u8..12, proptest::option::of(prop_oneof![Just(TaskState::Succeeded), Just(TaskState::Failed), Just(TaskState::TimedOut), Just(TaskState::Cancelled), Just(TaskState::Running)]), proptest::bool::weighted(0.8))
            .prop_map(|(t, state, current)| Op::TaskReport { t, state, current }),
        1 => (0u8..12).prop_map(|t| Op::CancelTask { t }),
    ]
}

fn command(op: &Op, s: &ClusterState) -> Command {
    match op {
        Op::Move { vm } => Command::MoveVm {
            name: format!("vm-{vm}"),
        },
        Op::Desired { vm, running } => Command::SetVmDesired {
            name: format!("vm-{vm}"),
            desired: if *running {
                Desired::Running
            } else {
                Desired::Stopped
            },
        },
        Op::Report { vm, state, current } => {
            let name = format!("vm-{vm}");
            let (node, epoch) = s
                .vms
                .get(&name)
                .map(|v| (v.node_id.unwrap_or(1), v.epoch))
                .unwrap_or((1, 0));
            let epoch = if *current {
                epoch
            } else {
                epoch.saturating_sub(1)
            };
            Command::ReportVmStatus {
                name,
                node_id: node,
                epoch,
                state: *state,
                reason: None,
                restarted: false,
            }
        }
        Op::Register {
            id,
            vcpus,
            memory_mb,
            disk_gb,
            kvm,
            zone: z,
        } => Command::RegisterWorker {
            id: *id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            capacity: Resources::new(*vcpus, *memory_mb, *disk_gb),
            kvm: *kvm,
            labels: z
                .map(|z| ("zone".to_string(), zone(z)))
                .into_iter()
                .collect(),
        },
        Op::Remove { id } => Command::RemoveWorker { id: *id, term: 0 },
        Op::SetState { id, state } => {
            // Down (and up again from down) is the failure detector's verdict; the rest is an
            // operator's command.
            let away = s
                .workers
                .get(id)
                .is_some_and(|w| matches!(w.state, NodeState::Down | NodeState::ShuttingDown));
            if *state == NodeState::ShuttingDown {
                // Only the node itself says so.
                Command::WorkerShuttingDown { id: *id }
            } else if *state == NodeState::Down || (away && *state == NodeState::Up) {
                Command::LivenessVerdict {
                    id: *id,
                    state: *state,
                    term: 0,
                }
            } else {
                Command::SetWorkerState {
                    id: *id,
                    state: *state,
                }
            }
        }
        Op::Create(spec) => Command::CreateVm { spec: spec.clone() },
        Op::Delete { vm } => Command::DeleteVm {
            name: format!("vm-{vm}"),
        },
        Op::Settings { strategy, pct } => Command::SetSchedulerSettings {
            strategy: *strategy,
            vcpu_overcommit_pct: *pct,
        },
        Op::SubmitTask {
            t,
            cpus,
            memory_mb,
            pin,
            max_attempts,
        } => {
            let mut spec = TaskSpec::new(vec!["true".into()]);
            spec.cpus = *cpus;
            spec.memory_mb = *memory_mb;
            spec.node = *pin;
            spec.max_attempts = *max_attempts;
            Command::SubmitTask {
                id: format!("t-{t}"),
                spec,
            }
        }
        Op::TaskReport { t, state, current } => {
            let id = format!("t-{t}");
            let (node, epoch) = s
                .tasks
                .get(&id)
                .map(|t| (t.node_id.unwrap_or(1), t.epoch))
                .unwrap_or((1, 0));
            let epoch = if *current {
                epoch
            } else {
                epoch.saturating_sub(1)
            };
            match state {
                None => Command::ReportTaskStarted {
                    id,
                    node_id: node,
                    epoch,
                },
                Some(st) => Command::ReportTaskResult {
                    id,
                    node_id: node,
                    epoch,
                    state: *st,
                    exit_code: Some(0),
                    duration_ms: Some(5),
                    reason: None,
                },
            }
        }
        Op::CancelTask { t } => Command::CancelTask {
            id: format!("t-{t}"),
        },
    }
}

/// Applies `ops` from index 1; checks the per-apply properties; returns the state and the rows
/// a store would hold after writing only the touched rows.
fn run(ops: &[Op]) -> Result<(ClusterState, BTreeMap<String, Vec<u8>>), TestCaseError> {
    let mut s = ClusterState::default();
    let mut rows: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        let index = i as u64 + 1;
        let dry = match op {
            Op::Create(spec) => Some(explain(&s, spec)),
            _ => None,
        };
        let cmd = command(op, &s);
        let out = s.apply(index, &Request::new(cmd, index * 10));
        if let Err(e) = s.check_invariants() {
            return Err(TestCaseError::fail(format!("after {op:?} at {index}: {e}")));
        }
        // Whatever was placed by this apply went to a node that was up.
        for vm in s.vms.values() {
            if let (Some(n), true) = (vm.node_id, vm.epoch == index) {
                let state = s.workers[&n].state;
                prop_assert_eq!(
                    state,
                    NodeState::Up,
                    "{} placed on {} node {}",
                    vm.spec.name,
                    state.as_str(),
                    n
                );
                prop_assert!(vm.placement.is_some());
            }
            if vm.node_id.is_none() {
                prop_assert!(
                    vm.reason.is_some(),
                    "pending VM {} has no reason",
                    vm.spec.name
                );
            }
        }
        // The dry run agreed with apply.
        if let Some(dry) = dry {
            match (&dry, &out) {
                (Ok(p), Ok(Reply::Vm(vm))) => {
                    prop_assert_eq!(p.node, vm.node_id);
                    if p.node.is_some() {
                        prop_assert_eq!(p.summary.as_str(), vm.placement.as_deref().unwrap_or(""));
                    } else {
                        prop_assert_eq!(Some(p.summary.as_str()), vm.reason.as_deref());
                    }
                    prop_assert_eq!(p.verdicts.len(), s.workers.len());
                }
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                other => {
                    return Err(TestCaseError::fail(format!(
                        "dry run and apply disagree: {other:?}"
                    )))
                }
            }
        }
        for key in s.take_touched() {
            match s.row(&key) {
                Some(v) => rows.insert(key.encode(), v),
                None => rows.remove(&key.encode()),
            };
        }
    }
    Ok((s, rows))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_determinism_and_rows(ops in proptest::collection::vec(op(), 1..80)) {
        let (a, rows) = run(&ops)?;
        let (b, _) = run(&ops)?;
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(&a, &b);

        // Incrementally written rows and a full rewrite both load back to the same state,
        // derived indexes included.
        let from_touched = ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        prop_assert_eq!(&from_touched, &a);
        let all = a.all_rows();
        let from_all = ClusterState::from_rows(all.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        prop_assert_eq!(&from_all, &a);
        let snap: ClusterState = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        let mut snap = snap;
        snap.rebuild_derived();
        prop_assert_eq!(&snap, &a);
    }

    #[test]
    fn pending_vms_are_placed_when_capacity_appears(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut s, _) = run(&ops)?;
        let mut index = ops.len() as u64;
        // Two big kvm workers, one per zone pair, so every unpinned VM has a home.
        for (id, z) in [(100u64, "a"), (101, "b"), (102, "c")] {
            index += 1;
            let cmd = Command::RegisterWorker {
                id,
                addr: format!("10.0.0.{id}:7000"),
                capacity: Resources::new(10_000, 10_000_000, 100_000),
                kvm: true,
                labels: [("zone".to_string(), z.to_string())].into_iter().collect(),
            };
            s.apply(index, &Request::new(cmd, index * 10)).unwrap();
            prop_assert!(s.check_invariants().is_ok());
        }
        // Groups: at most one pending member per group can be guaranteed a new node per zone
        // it accepts; check the unconstrained ones.
        let stuck: BTreeSet<&str> = s
            .vms
            .values()
            .filter(|v| v.node_id.is_none() && v.state != VmState::Lost && v.spec.node.is_none() && v.spec.anti_affinity.is_none())
            .map(|v| v.spec.name.as_str())
            .collect();
        prop_assert!(stuck.is_empty(), "still pending: {:?}", stuck);
    }
}

fn observed_run(k: u8) -> blixard_core::planner::RunState {
    use blixard_core::planner::RunState;
    match k % 5 {
        0 => RunState::Starting,
        1 => RunState::Running,
        2 => RunState::Exited {
            code: Some(0),
            requested: true,
            reason: None,
        },
        3 => RunState::Exited {
            code: Some(1),
            requested: false,
            reason: Some("crashed".into()),
        },
        _ => RunState::Exited {
            code: Some(0),
            requested: false,
            reason: None,
        },
    }
}

fn action_name(a: &blixard_core::planner::Action) -> &str {
    use blixard_core::planner::Action;
    match a {
        Action::Start { spec, .. } => &spec.name,
        Action::Stop { name } | Action::Remove { name } | Action::Report { name, .. } => name,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// What the executor relies on to plan only what changed: (1) the events journal names
    /// every VM whose record changed (or appeared, or went) after a cursor; (2) planning only
    /// a set of VMs gives exactly the full plan's actions for them, preemptors held back by
    /// victims that did not change included (the `leaving` index).
    #[test]
    fn planning_what_changed_equals_the_full_plan_for_it(
        ops in proptest::collection::vec(op(), 1..80),
        cut in 0usize..80,
        extra in proptest::collection::btree_set(0u8..24, 0..4),
        seen in proptest::collection::vec((0u8..24, proptest::bool::weighted(0.7), 0u8..5), 0..10),
    ) {
        use blixard_core::planner::{plan, plan_changed, Observed};
        let cut = cut.min(ops.len());
        let mut s = ClusterState::default();
        let mut src = blixard_core::EventSource::new(&s, 0);
        let mut at_cut = s.clone();
        for (i, op) in ops.iter().enumerate() {
            let index = i as u64 + 1;
            let cmd = command(op, &s);
            let _ = s.apply(index, &Request::new(cmd, index * 10));
            let touched = s.take_touched();
            src.observe(index, index * 10, &s, &touched);
            if i + 1 == cut {
                at_cut = s.clone();
            }
        }
        let mut names = src.vms_touched_since(cut as u64).expect("the journal keeps these");
        let every: BTreeSet<&String> = at_cut.vms.keys().chain(s.vms.keys()).collect();
        for n in every {
            if at_cut.vms.get(n) != s.vms.get(n) {
                prop_assert!(names.contains(n), "{} changed after {} but is not in the journal {:?}", n, cut, names);
            }
        }
        names.extend(extra.iter().map(|n| format!("vm-{n}")));
        let observed: Vec<Observed> = seen
            .iter()
            .map(|(n, current, run)| {
                let name = format!("vm-{n}");
                let epoch = match (current, s.vms.get(&name)) {
                    (true, Some(v)) => v.epoch,
                    _ => 1_000,
                };
                Observed { name, epoch, run: observed_run(*run) }
            })
            .map(|o| (o.name.clone(), o))
            .collect::<BTreeMap<String, Observed>>()
            .into_values()
            .collect();
        for me in 1u64..6 {
            let full: Vec<_> = plan(me, s.vms.values(), &observed)
                .into_iter()
                .filter(|a| names.contains(action_name(a)))
                .collect();
            let some = plan_changed(&s, me, &names, &observed);
            prop_assert_eq!(some, full, "node {}", me);
        }
    }
}
