use std::collections::BTreeMap;

use super::*;
use crate::command::{Command, Outcome, Reply, Request};
use crate::state::{explain, ClusterState, NodeState, VmRecord, VmState};

struct H {
    s: ClusterState,
    i: u64,
}

impl H {
    fn new() -> Self {
        Self {
            s: ClusterState::default(),
            i: 0,
        }
    }
    fn run(&mut self, c: Command) -> Outcome {
        self.i += 1;
        let o = self.s.apply(self.i, &Request::new(c, self.i * 1000));
        self.s.check_invariants().unwrap();
        o
    }
    fn node_full(&mut self, id: NodeId, cap: Resources, kvm: bool, labels: &[(&str, &str)]) {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.run(Command::RegisterWorker {
            id,
            addr: format!("10.0.0.{id}:7000"),
            capacity: cap,
            kvm,
            labels,
        })
        .unwrap();
    }
    fn node(&mut self, id: NodeId, vcpus: u32, memory_mb: u64) {
        self.node_full(id, Resources::new(vcpus, memory_mb, 100), false, &[]);
    }
    fn create(&mut self, spec: VmSpec) -> VmRecord {
        match self.run(Command::CreateVm { spec }) {
            Ok(Reply::Vm(vm)) => vm,
            other => panic!("unexpected {other:?}"),
        }
    }
    fn vm(&self, name: &str) -> &VmRecord {
        &self.s.vms[name]
    }
    fn set_state(&mut self, id: NodeId, state: NodeState) {
        // Down (and back up from down) is the failure detector's verdict.
        let down = self
            .s
            .workers
            .get(&id)
            .is_some_and(|w| w.state == NodeState::Down);
        if state == NodeState::Down || (down && state == NodeState::Up) {
            self.run(Command::LivenessVerdict { id, state, term: 0 })
                .unwrap();
        } else {
            self.run(Command::SetWorkerState { id, state }).unwrap();
        }
    }
    /// The VM's node confirms it stopped it.
    fn stopped(&mut self, name: &str) {
        let vm = self.vm(name).clone();
        let node_id = vm.node_id.expect("placed");
        self.run(Command::ReportVmStatus {
            name: name.into(),
            node_id,
            epoch: vm.epoch,
            state: VmState::Stopped,
            reason: None,
            restarted: false,
        })
        .unwrap();
    }
    fn settings(&mut self, strategy: Strategy, pct: u32) -> Outcome {
        self.run(Command::SetSchedulerSettings {
            strategy,
            vcpu_overcommit_pct: pct,
        })
    }
}

fn vm(name: &str, vcpus: u32, memory_mb: u64) -> VmSpec {
    let mut s = VmSpec::new(name);
    s.vcpus = vcpus;
    s.memory_mb = memory_mb;
    s
}

fn prio(name: &str, vcpus: u32, priority: u8, preempt: bool) -> VmSpec {
    let mut s = vm(name, vcpus, 256);
    s.priority = priority;
    s.preempt = preempt;
    s
}

#[test]
fn binpack_fills_the_fullest_node() {
    let mut h = H::new();
    for id in 1..=3 {
        h.node(id, 8, 8192);
    }
    let a = h.create(vm("a", 2, 1024));
    assert_eq!(a.node_id, Some(1), "all empty: lowest id");
    assert!(
        a.placement
            .as_deref()
            .unwrap()
            .starts_with("binpack: node 1 (score 0.12; 3 nodes eligible"),
        "{:?}",
        a.placement
    );
    let mut pinned = vm("p", 1, 512);
    pinned.node = Some(2);
    assert_eq!(h.create(pinned).node_id, Some(2));
    assert_eq!(
        h.create(vm("b", 2, 1024)).node_id,
        Some(1),
        "node 1 is fuller than node 2"
    );
    assert_eq!(h.create(vm("c", 4, 4096)).node_id, Some(1));
    // Node 1 is now 8/8 vCPUs: the next goes to the fuller of 2 and 3.
    assert_eq!(h.create(vm("d", 1, 256)).node_id, Some(2));
}

#[test]
fn spread_uses_the_emptiest_node_and_vms_can_override() {
    let mut h = H::new();
    for id in 1..=3 {
        h.node(id, 8, 8192);
    }
    h.settings(Strategy::Spread, 100).unwrap();
    let placed: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| h.create(vm(n, 1, 512)).node_id.unwrap())
        .collect();
    assert_eq!(placed, vec![1, 2, 3, 1]);
    assert!(h
        .vm("b")
        .placement
        .as_deref()
        .unwrap()
        .starts_with("spread: node 2"));
    let mut packed = vm("e", 1, 512);
    packed.strategy = Some(Strategy::Binpack);
    assert_eq!(
        h.create(packed).node_id,
        Some(1),
        "per-VM binpack picks the fullest"
    );
    let mut spread = vm("f", 1, 512);
    spread.strategy = Some(Strategy::Spread);
    assert_eq!(h.create(spread).node_id, Some(2));
}

#[test]
fn refusal_reasons_name_the_numbers() {
    let mut h = H::new();
    let r = h.create(vm("x", 1, 256));
    assert_eq!(r.node_id, None);
    assert_eq!(r.state, VmState::Pending);
    assert_eq!(r.reason.as_deref(), Some("no workers are registered"));

    let mut h = H::new();
    h.node(1, 1, 8192);
    h.node(2, 1, 8192);
    h.node(3, 2, 8192);
    assert_eq!(
        h.create(vm("big", 4, 256)).reason.as_deref(),
        Some("no node has 4 vCPUs free (largest free: 2 on node 3)")
    );
    assert_eq!(
        h.create(vm("fat", 1, 10_000)).reason.as_deref(),
        Some("no node has 10000 MiB memory free (largest free: 8192 MiB on node 1)")
    );
    let mut disk = vm("disky", 1, 256);
    disk.disk_gb = 500;
    assert_eq!(
        h.create(disk).reason.as_deref(),
        Some("no node has 500 GiB disk free (largest free: 100 GiB on node 1)")
    );

    let mut h = H::new();
    h.node(1, 4, 1024);
    h.node(2, 1, 8192);
    assert_eq!(
        h.create(vm("both", 2, 2048)).reason.as_deref(),
        Some("no node has 2 vCPUs, 2048 MiB memory and 0 GiB disk free at once (2 nodes eligible)")
    );

    let mut h = H::new();
    h.node(1, 8, 8192);
    h.node(2, 8, 8192);
    for n in ["db-1", "db-2", "db-3"] {
        let mut s = vm(n, 1, 256);
        s.anti_affinity = Some("db".into());
        h.create(s);
    }
    assert_eq!(h.vm("db-1").node_id, Some(1));
    assert_eq!(h.vm("db-2").node_id, Some(2));
    assert_eq!(
        h.vm("db-3").reason.as_deref(),
        Some("anti-affinity group db already has a VM on every eligible node (2 nodes)")
    );

    let mut h = H::new();
    h.node(7, 8, 8192);
    h.set_state(7, NodeState::Draining);
    assert_eq!(
        h.create(vm("d", 1, 256)).reason.as_deref(),
        Some("node 7 is draining")
    );
    let mut pinned = vm("p", 1, 256);
    pinned.node = Some(7);
    assert_eq!(
        h.create(pinned).reason.as_deref(),
        Some("node 7 is draining")
    );
    h.node(8, 8, 8192);
    h.set_state(8, NodeState::Down);
    assert_eq!(
        h.create(vm("e", 1, 256)).reason.as_deref(),
        Some("no eligible node is up (node 7 is draining, node 8 is down)")
    );

    let mut h = H::new();
    h.node_full(1, Resources::new(8, 8192, 10), false, &[("zone", "a")]);
    let mut zoned = vm("z", 1, 256);
    zoned.constraints.insert("zone".into(), "b".into());
    assert_eq!(
        h.create(zoned.clone()).reason.as_deref(),
        Some("no node has labels zone=b")
    );
    let mut kvm = vm("k", 1, 256);
    kvm.features.insert("kvm".into());
    assert_eq!(
        h.create(kvm.clone()).reason.as_deref(),
        Some("no node has feature kvm")
    );
    kvm.name = "k2".into();
    kvm.constraints.insert("zone".into(), "a".into());
    assert_eq!(
        h.create(kvm).reason.as_deref(),
        Some("no node with labels zone=a has feature kvm")
    );
    // A node with the labels appears: the pending VM is placed.
    h.node_full(2, Resources::new(8, 8192, 10), true, &[("zone", "b")]);
    assert_eq!(h.vm("z").node_id, Some(2));
    assert_eq!(h.vm("z").reason, None);
    assert_eq!(h.vm("k").node_id, Some(2));
    assert_eq!(h.vm("k2").node_id, None);
}

#[test]
fn invalid_requests_are_refused() {
    let mut h = H::new();
    h.node(1, 8, 8192);
    let mut s = vm("gpu", 1, 256);
    s.features.insert("gpu".into());
    let e = h.run(Command::CreateVm { spec: s }).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown feature 'gpu': known features are kvm"
    );
    let mut s = vm("p", 1, 256);
    s.priority = 101;
    assert_eq!(
        h.run(Command::CreateVm { spec: s })
            .unwrap_err()
            .to_string(),
        "priority must be between 0 and 100, got 101"
    );
    let mut s = vm("pin", 1, 256);
    s.node = Some(9);
    assert_eq!(
        h.run(Command::CreateVm { spec: s })
            .unwrap_err()
            .to_string(),
        "node '9' not found"
    );
    let mut s = vm("c", 1, 256);
    s.constraints.insert("bad key!".into(), "x".into());
    assert!(h
        .run(Command::CreateVm { spec: s })
        .unwrap_err()
        .to_string()
        .starts_with("invalid node constraint"));
    assert_eq!(
        h.settings(Strategy::Binpack, 50).unwrap_err().to_string(),
        "vcpu overcommit must be between 100 and 1000 percent, got 50"
    );
    assert!(h.s.vms.is_empty());
}

#[test]
fn vcpu_overcommit_scales_only_vcpus_and_cannot_strand_allocations() {
    let mut h = H::new();
    h.node(1, 4, 8192);
    h.settings(Strategy::Binpack, 200).unwrap();
    for i in 0..8 {
        assert_eq!(h.create(vm(&format!("v{i}"), 1, 256)).node_id, Some(1));
    }
    assert_eq!(
        h.create(vm("v8", 1, 256)).reason.as_deref(),
        Some("no node has 1 vCPUs free (largest free: 0 on node 1)")
    );
    // Memory is not overcommitted.
    h.settings(Strategy::Binpack, 1000).unwrap();
    assert_eq!(
        h.vm("v8").node_id,
        Some(1),
        "raising the ratio places pending VMs"
    );
    assert_eq!(h.create(vm("m", 1, 8192)).node_id, None);
    assert_eq!(
        h.settings(Strategy::Binpack, 100).unwrap_err().to_string(),
        "cannot set vcpu overcommit to 100%: node 1 has 9 vCPUs allocated, above its limit of 4 at that ratio"
    );
    assert_eq!(h.s.settings.vcpu_overcommit_pct, 1000);
}

#[test]
fn explain_is_a_pure_dry_run_of_create() {
    let mut h = H::new();
    h.node(1, 4, 8192);
    h.node(2, 8, 8192);
    h.node(3, 8, 8192);
    h.set_state(3, NodeState::Draining);
    h.create(vm("a", 2, 1024));
    let before = h.s.digest();
    let p = explain(&h.s, &vm("b", 4, 1024)).unwrap();
    assert_eq!(h.s.digest(), before);
    assert_eq!(p.node, Some(2));
    assert_eq!(p.strategy, Strategy::Binpack);
    let reasons: BTreeMap<NodeId, (bool, String)> = p
        .verdicts
        .iter()
        .map(|v| (v.node, (v.eligible, v.reason.clone())))
        .collect();
    assert_eq!(
        reasons[&1],
        (false, "no room: needs 4 vCPUs, 2 free".to_string())
    );
    assert_eq!(reasons[&2], (true, "fits: score 0.20".to_string()));
    assert_eq!(reasons[&3], (false, "draining".to_string()));
    assert_eq!(p.summary, "binpack: node 2 (score 0.20; 1 node eligible)");
    assert_eq!(
        h.create(vm("b", 4, 1024)).placement.as_deref(),
        Some(p.summary.as_str())
    );
    assert_eq!(
        explain(&h.s, &vm("b", 1, 256)).unwrap_err().to_string(),
        "VM 'b' already exists"
    );

    let p = explain(&h.s, &prio("urgent", 6, 90, true)).unwrap();
    assert_eq!(p.node, Some(2));
    assert_eq!(p.preempted, vec!["b".to_string()]);
    let urgent = h.create(prio("urgent", 6, 90, true));
    assert_eq!(
        (urgent.node_id, urgent.placement),
        (p.node, Some(p.summary))
    );
    h.stopped("b");
    assert_eq!(h.vm("urgent").node_id, p.node);
    assert_eq!(h.vm("b").node_id, None);
}

#[test]
fn explain_refuses_what_create_refuses_including_addresses() {
    let mut h = H::new();
    h.node(1, 8, 8192);
    h.run(Command::CreateNetwork {
        name: "net".into(),
        cidr: "10.9.0.0/29".into(),
    })
    .unwrap();
    let on = |name: &str, ip: Option<&str>| {
        let mut s = vm(name, 1, 256);
        s.network = Some("net".into());
        s.ip = ip.map(|ip| ip.parse().unwrap());
        s
    };
    h.create(on("a", Some("10.9.0.3")));
    let cases = [
        on("b", Some("10.9.0.3")), // taken
        on("b", Some("10.9.1.1")), // outside the network
        on("b", Some("10.9.0.7")), // broadcast
        {
            let mut s = vm("b", 1, 256);
            s.network = Some("nope".into());
            s
        },
    ];
    for spec in cases {
        let before = h.s.digest();
        let dry = explain(&h.s, &spec).expect_err("dry run accepted it");
        let real = h
            .run(Command::CreateVm { spec: spec.clone() })
            .expect_err("create accepted it");
        assert_eq!(dry, real);
        assert_eq!(h.s.digest(), before, "a refused create changed the state");
    }
    // The network's six host addresses: node 1's bridge, a, and four more; then it is full.
    for name in ["c", "d", "e", "f"] {
        assert!(explain(&h.s, &on(name, None)).is_ok());
        h.create(on(name, None));
    }
    let full = explain(&h.s, &on("g", None)).unwrap_err();
    assert!(matches!(full, ApplyError::NoCapacity(_)), "{full}");
    assert_eq!(
        h.run(Command::CreateVm {
            spec: on("g", None)
        })
        .unwrap_err(),
        full
    );
}

#[test]
fn rows_round_trip_with_settings_and_indexes() {
    let mut h = H::new();
    h.node(1, 4, 8192);
    h.settings(Strategy::Spread, 300).unwrap();
    let mut g = vm("g", 1, 256);
    g.anti_affinity = Some("grp".into());
    h.create(g);
    h.create(vm("pending", 64, 256));
    h.s.take_touched();
    let rows = h.s.all_rows();
    let back =
        ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
    assert_eq!(back, h.s);
    assert_eq!(back.settings.vcpu_overcommit_pct, 300);
    assert_eq!(back.anti_affinity_nodes("grp").map(|m| m.len()), Some(1));
}

#[test]
fn a_down_node_reschedules_its_vms_with_new_epochs_and_loses_the_never_ones() {
    let mut h = H::new();
    h.node(1, 4, 4096);
    let mut a = VmSpec::new("a");
    a.restart = crate::spec::RestartPolicy::Always;
    let mut n = VmSpec::new("n");
    n.restart = crate::spec::RestartPolicy::Never;
    let a0 = h.create(a);
    h.create(n);
    h.node(2, 4, 4096);
    h.set_state(1, NodeState::Down);
    let a1 = h.vm("a").clone();
    assert_eq!(a1.node_id, Some(2), "rescheduled on the healthy node");
    assert!(a1.epoch > a0.epoch, "with a new epoch");
    let lost = h.vm("n").clone();
    assert_eq!((lost.node_id, lost.state), (None, VmState::Lost));
    assert!(lost.reason.unwrap().contains("node 1 went down"));
    // A stale report from the old node is refused.
    let stale = h.run(Command::ReportVmStatus {
        name: "a".into(),
        node_id: 1,
        epoch: a0.epoch,
        state: VmState::Running,
        reason: None,
        restarted: false,
    });
    assert!(matches!(stale, Err(crate::ApplyError::StaleEpoch { .. })));
    // Lost VMs are not placed again by themselves, but on request.
    h.set_state(1, NodeState::Up);
    assert_eq!(h.vm("n").state, VmState::Lost);
    h.run(Command::SetVmDesired {
        name: "n".into(),
        desired: crate::state::Desired::Running,
    })
    .unwrap();
    assert!(h.vm("n").node_id.is_some());
}

#[test]
fn moving_a_running_vm_stops_it_first_then_places_it_elsewhere() {
    let mut h = H::new();
    h.node(1, 4, 4096);
    let v0 = h.create(VmSpec::new("m"));
    h.run(Command::ReportVmStatus {
        name: "m".into(),
        node_id: 1,
        epoch: v0.epoch,
        state: VmState::Running,
        reason: None,
        restarted: false,
    })
    .unwrap();
    h.node(2, 4, 4096);
    h.set_state(1, NodeState::Draining);
    h.run(Command::MoveVm { name: "m".into() }).unwrap();
    let v1 = h.vm("m").clone();
    assert_eq!(
        (v1.node_id, v1.evacuating),
        (Some(1), true),
        "still on node 1 until stopped there"
    );
    h.run(Command::ReportVmStatus {
        name: "m".into(),
        node_id: 1,
        epoch: v0.epoch,
        state: VmState::Stopped,
        reason: None,
        restarted: false,
    })
    .unwrap();
    let v2 = h.vm("m").clone();
    assert_eq!(v2.node_id, Some(2));
    assert!(v2.epoch > v0.epoch);
    assert!(!v2.evacuating);
    assert_eq!(
        v2.desired,
        crate::state::Desired::Running,
        "it is started there"
    );
}

mod preemption;
