//! Property tests of networks and addresses through `ClusterState::apply`, under arbitrary
//! sequences of worker, network and VM commands:
//!
//! - no two VMs ever hold the same address, and no VM holds a node's bridge address;
//! - a VM keeps its address for its whole life (moves, node failures, restarts);
//! - an address whose deleted holder may still run (its placement not confirmed stopped, its
//!   node not fenced) is never handed to another VM; once confirmed, it is free again;
//! - a refused command changes nothing; the state survives rows and snapshots unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use blixard_core::network::{Lease, DEFAULT_NETWORK};
use blixard_core::{ClusterState, Command, NodeId, NodeState, Request, Resources, VmSpec, VmState};
use proptest::prelude::*;

/// CIDRs the tests draw from: some overlap, some are tiny (so pools run out).
const CIDRS: &[&str] = &[
    "10.88.0.0/29",
    "10.88.0.0/16",
    "10.0.0.0/8",
    "192.168.7.0/28",
    "172.16.0.0/29",
    "8.8.8.0/24",
];
const NETS: &[&str] = &["default", "blue", "red"];

#[derive(Debug, Clone)]
enum Op {
    Register {
        id: NodeId,
    },
    Remove {
        id: NodeId,
    },
    SetState {
        id: NodeId,
        state: NodeState,
    },
    CreateNet {
        net: usize,
        cidr: usize,
    },
    EnsureDefault {
        cidr: usize,
    },
    DeleteNet {
        net: usize,
    },
    /// `net`: None uses the default; `ip`: (cidr, offset) of a requested address.
    Create {
        vm: u8,
        net: Option<usize>,
        ip: Option<(usize, u32)>,
    },
    Delete {
        vm: u8,
    },
    Move {
        vm: u8,
    },
    Report {
        vm: u8,
        state: VmState,
    },
    /// The node of a quarantined lease (`pick` chooses which) confirms it stopped, or
    /// (`honest == false`) some node confirms a made-up placement.
    Confirm {
        pick: usize,
        honest: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u64..4).prop_map(|id| Op::Register { id }),
        1 => (1u64..4).prop_map(|id| Op::Remove { id }),
        1 => (1u64..4, prop_oneof![Just(NodeState::Up), Just(NodeState::Down), Just(NodeState::Draining)])
            .prop_map(|(id, state)| Op::SetState { id, state }),
        2 => (0..NETS.len(), 0..CIDRS.len()).prop_map(|(net, cidr)| Op::CreateNet { net, cidr }),
        1 => (0..CIDRS.len()).prop_map(|cidr| Op::EnsureDefault { cidr }),
        1 => (0..NETS.len()).prop_map(|net| Op::DeleteNet { net }),
        6 => (0u8..12, proptest::option::of(0..NETS.len()), proptest::option::weighted(0.3, (0..CIDRS.len(), 0u32..10)))
            .prop_map(|(vm, net, ip)| Op::Create { vm, net, ip }),
        3 => (0u8..12).prop_map(|vm| Op::Delete { vm }),
        1 => (0u8..12).prop_map(|vm| Op::Move { vm }),
        2 => (0u8..12, prop_oneof![Just(VmState::Running), Just(VmState::Stopped), Just(VmState::Failed)])
            .prop_map(|(vm, state)| Op::Report { vm, state }),
        2 => (0usize..8, proptest::bool::weighted(0.8)).prop_map(|(pick, honest)| Op::Confirm { pick, honest }),
    ]
}

fn quarantined(s: &ClusterState) -> Vec<(String, NodeId, u64)> {
    s.networks
        .values()
        .flat_map(|n| n.leases.values())
        .filter_map(|l| match l {
            Lease::Quarantined { name, node, epoch } => Some((name.clone(), *node, *epoch)),
            _ => None,
        })
        .collect()
}

fn command(op: &Op, s: &ClusterState) -> Command {
    let vm_name = |vm: &u8| format!("vm-{vm}");
    match op {
        Op::Register { id } => Command::RegisterWorker {
            id: *id,
            addr: format!("10.1.0.{id}:7000"),
            capacity: Resources::new(4, 4096, 100),
            kvm: false,
            labels: BTreeMap::new(),
        },
        Op::Remove { id } => Command::RemoveWorker { id: *id, term: 0 },
        Op::SetState { id, state } => {
            // Down (and up again from down) is the failure detector's verdict.
            let down = s
                .workers
                .get(id)
                .is_some_and(|w| w.state == NodeState::Down);
            if *state == NodeState::Down || (down && *state == NodeState::Up) {
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
        Op::CreateNet { net, cidr } => Command::CreateNetwork {
            name: NETS[*net].into(),
            cidr: CIDRS[*cidr].into(),
        },
        Op::EnsureDefault { cidr } => Command::EnsureDefaultNetwork {
            cidr: CIDRS[*cidr].into(),
        },
        Op::DeleteNet { net } => Command::DeleteNetwork {
            name: NETS[*net].into(),
        },
        Op::Create { vm, net, ip } => {
            let mut spec = VmSpec::new(vm_name(vm));
            spec.memory_mb = 512;
            spec.network = net.map(|n| NETS[n].to_string());
            spec.ip = ip.map(|(c, off)| {
                let base: Ipv4Addr = CIDRS[c]
                    .split('/')
                    .next()
                    .unwrap_or("10.0.0.0")
                    .parse()
                    .unwrap_or(Ipv4Addr::UNSPECIFIED);
                Ipv4Addr::from(u32::from(base) + off)
            });
            Command::CreateVm { spec }
        }
        Op::Delete { vm } => Command::DeleteVm { name: vm_name(vm) },
        Op::Move { vm } => Command::MoveVm { name: vm_name(vm) },
        Op::Report { vm, state } => {
            let name = vm_name(vm);
            let (node, epoch) = s
                .vms
                .get(&name)
                .map(|v| (v.node_id.unwrap_or(1), v.epoch))
                .unwrap_or((1, 0));
            Command::ReportVmStatus {
                name,
                node_id: node,
                epoch,
                state: *state,
                reason: None,
                restarted: false,
            }
        }
        Op::Confirm { pick, honest } => {
            let q = quarantined(s);
            match (q.get(pick % q.len().max(1)), honest) {
                (Some((name, node, epoch)), true) => Command::ReleaseAddresses {
                    node_id: *node,
                    vms: vec![(name.clone(), *epoch)],
                },
                (Some((name, node, epoch)), false) => {
                    // The wrong node, or the wrong epoch: must free nothing.
                    Command::ReleaseAddresses {
                        node_id: node % 3 + 1,
                        vms: vec![(name.clone(), epoch + 1)],
                    }
                }
                (None, _) => Command::ReleaseAddresses {
                    node_id: 1,
                    vms: vec![("vm-0".into(), 1)],
                },
            }
        }
    }
}

/// A deleted VM's placement that may still run: (name, node, epoch, address).
type Ghost = (String, NodeId, u64, Ipv4Addr);

fn run(ops: &[Op]) -> Result<ClusterState, TestCaseError> {
    let mut s = ClusterState::default();
    let mut rows: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Our own model of which deleted placements may still run, from the commands alone.
    let mut ghosts: BTreeSet<Ghost> = BTreeSet::new();
    for (i, op) in ops.iter().enumerate() {
        let index = i as u64 + 1;
        let before = s.clone();
        let cmd = command(op, &s);
        let out = s.apply(index, &Request::new(cmd.clone(), index * 10));
        if let Err(e) = s.check_invariants() {
            return Err(TestCaseError::fail(format!("after {op:?} at {index}: {e}")));
        }
        if out.is_err() {
            prop_assert_eq!(
                &s,
                &before,
                "refused {:?} ({:?}) changed the state",
                op,
                out
            );
        }
        // The model: a placed VM deleted may still run; fencing or a matching confirmation ends it.
        // A VM that was placed and is gone now (deleted at once, or once its node confirmed a
        // two-phase delete) may still run there until its node says otherwise.
        for (name, old) in &before.vms {
            if !s.vms.contains_key(name) {
                if let (Some(node), Some(ip)) = (old.node_id, old.ip) {
                    ghosts.insert((name.clone(), node, old.epoch, ip));
                }
            }
        }
        match &cmd {
            Command::RemoveWorker { id, .. } if out.is_ok() => ghosts.retain(|g| g.1 != *id),
            Command::LivenessVerdict {
                id,
                state: NodeState::Down,
                ..
            } if out.is_ok() => ghosts.retain(|g| g.1 != *id),
            Command::ReleaseAddresses { node_id, vms } => ghosts
                .retain(|g| !(g.1 == *node_id && vms.iter().any(|(n, e)| *n == g.0 && *e == g.2))),
            _ => {}
        }
        // Unique addresses, never a node's, never a possibly-running ghost's.
        let mut seen: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        for vm in s.vms.values() {
            if let Some(ip) = vm.ip {
                if let Some(other) = seen.insert(ip, vm.spec.name.clone()) {
                    return Err(TestCaseError::fail(format!(
                        "{ip} held by {other} and {}",
                        vm.spec.name
                    )));
                }
                if let Some(g) = ghosts.iter().find(|g| g.3 == ip && g.0 != vm.spec.name) {
                    return Err(TestCaseError::fail(format!(
                        "{ip} given to {} while {g:?} may still run",
                        vm.spec.name
                    )));
                }
                let net = &s.networks[vm.network.as_deref().unwrap_or("")];
                prop_assert!(
                    !net.node_addresses().values().any(|a| *a == ip),
                    "{} got a bridge address",
                    vm.spec.name
                );
            }
        }
        // Ghost addresses are still quarantined in the state; no other quarantine exists.
        let q: BTreeSet<(String, NodeId, u64)> = quarantined(&s).into_iter().collect();
        let g: BTreeSet<(String, NodeId, u64)> =
            ghosts.iter().map(|g| (g.0.clone(), g.1, g.2)).collect();
        prop_assert_eq!(&q, &g, "quarantine differs from the model after {:?}", op);
        // `ghost_of` (an index) agrees with a scan of the leases, for every name.
        for vm in 0u8..12 {
            let name = format!("vm-{vm}");
            let scanned = quarantined(&s)
                .into_iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, node, _)| node);
            prop_assert_eq!(
                s.ghost_of(&name),
                scanned,
                "ghost_of({}) after {:?}",
                name,
                op
            );
        }
        // A VM keeps its address for its whole life.
        for (name, old) in &before.vms {
            if let Some(now) = s.vms.get(name) {
                prop_assert_eq!(
                    (&old.network, old.ip),
                    (&now.network, now.ip),
                    "{} changed address",
                    name
                );
            }
        }
        // Every node has an address on every network (pools here always have room for 3).
        for n in s.networks.values() {
            if n.cidr.last_host() > 3 + 12 {
                for id in s.workers.keys() {
                    prop_assert!(
                        n.node_address(*id).is_some(),
                        "node {} has no address on {}",
                        id,
                        n.name
                    );
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
    let from_rows =
        ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
    prop_assert_eq!(&from_rows, &s);
    let mut snap: ClusterState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    snap.rebuild_derived();
    prop_assert_eq!(&snap, &s);
    Ok(s)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn addresses_are_unique_stable_and_released_safely(ops in proptest::collection::vec(op(), 1..120)) {
        let a = run(&ops)?;
        let b = run(&ops)?;
        prop_assert_eq!(a.digest(), b.digest());
    }
}

fn apply(s: &mut ClusterState, index: u64, cmd: Command) -> blixard_core::Outcome {
    let out = s.apply(index, &Request::new(cmd, index));
    s.check_invariants().expect("invariants");
    out
}

fn register(s: &mut ClusterState, index: u64, id: NodeId) {
    let cmd = Command::RegisterWorker {
        id,
        addr: format!("10.1.0.{id}:7000"),
        capacity: Resources::new(64, 65536, 100),
        kvm: false,
        labels: BTreeMap::new(),
    };
    apply(s, index, cmd).expect("register");
}

#[test]
fn pool_exhaustion_overlap_and_in_use_are_one_line_refusals() {
    let mut s = ClusterState::default();
    register(&mut s, 1, 1);
    let def = Command::EnsureDefaultNetwork {
        cidr: "192.168.5.0/29".into(),
    };
    apply(&mut s, 2, def.clone()).expect("default");
    // Idempotent.
    apply(&mut s, 3, def).expect("again");
    let net = &s.networks[DEFAULT_NETWORK];
    assert_eq!(net.node_address(1), Some(Ipv4Addr::new(192, 168, 5, 1)));
    // 6 usable addresses, one for node 1: five VMs fit.
    let mut ips = BTreeSet::new();
    for i in 0..5u64 {
        let out = apply(
            &mut s,
            10 + i,
            Command::CreateVm {
                spec: VmSpec::new(format!("v{i}")),
            },
        );
        let Ok(blixard_core::Reply::Vm(vm)) = out else {
            panic!("create v{i}: {out:?}")
        };
        assert_eq!(vm.network.as_deref(), Some(DEFAULT_NETWORK));
        assert!(ips.insert(vm.ip.expect("ip")));
    }
    let err = apply(
        &mut s,
        20,
        Command::CreateVm {
            spec: VmSpec::new("full"),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no free address") && !err.contains('\n'),
        "{err}"
    );
    assert!(!s.vms.contains_key("full"));

    let err = apply(
        &mut s,
        21,
        Command::CreateNetwork {
            name: "b".into(),
            cidr: "192.168.0.0/16".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("overlaps network 'default'"), "{err}");
    let err = apply(
        &mut s,
        22,
        Command::DeleteNetwork {
            name: DEFAULT_NETWORK.into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot be deleted"), "{err}");
    let blue = Command::CreateNetwork {
        name: "blue".into(),
        cidr: "10.5.0.0/24".into(),
    };
    apply(&mut s, 40, blue).expect("blue");
    let mut on_blue = VmSpec::new("b1");
    on_blue.network = Some("blue".into());
    apply(&mut s, 41, Command::CreateVm { spec: on_blue }).expect("b1");
    let err = apply(
        &mut s,
        42,
        Command::DeleteNetwork {
            name: "blue".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("in use by 1 VM(s) (b1)"), "{err}");
    let err = apply(
        &mut s,
        23,
        Command::CreateVm {
            spec: {
                let mut v = VmSpec::new("x");
                v.network = Some("nope".into());
                v
            },
        },
    )
    .unwrap_err()
    .to_string();
    assert_eq!(err, "network 'nope' not found");

    // A VM deleted while placed: its address waits for its node's confirmation.
    let v0 = s.vms["v0"].clone();
    apply(&mut s, 30, Command::DeleteVm { name: "v0".into() }).expect("delete");

    let mut again = VmSpec::new("again");
    again.ip = v0.ip;
    let err = apply(
        &mut s,
        31,
        Command::CreateVm {
            spec: again.clone(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("until node 1 confirms it stopped"), "{err}");
    assert!(
        apply(
            &mut s,
            32,
            Command::CreateVm {
                spec: VmSpec::new("other")
            }
        )
        .is_err(),
        "pool still full"
    );
    // A confirmation for another epoch frees nothing; the right one frees it.
    apply(
        &mut s,
        33,
        Command::ReleaseAddresses {
            node_id: 1,
            vms: vec![("v0".into(), v0.epoch + 1)],
        },
    )
    .expect("noop");
    assert!(apply(
        &mut s,
        34,
        Command::CreateVm {
            spec: again.clone()
        }
    )
    .is_err());
    apply(
        &mut s,
        35,
        Command::ReleaseAddresses {
            node_id: 1,
            vms: vec![("v0".into(), v0.epoch)],
        },
    )
    .expect("release");
    let out =
        apply(&mut s, 36, Command::CreateVm { spec: again }).expect("reuse after confirmation");
    let blixard_core::Reply::Vm(vm) = out else {
        panic!()
    };
    assert_eq!(vm.ip, v0.ip);
}

/// A store written before leases had rows of their own holds every lease inline in its
/// network's row: it loads unchanged, and the rows written next move the leases out.
#[test]
fn inline_leases_of_older_stores_load_and_move_to_rows() {
    let mut s = ClusterState::default();
    register(&mut s, 1, 1);
    let def = Command::EnsureDefaultNetwork {
        cidr: "10.88.0.0/16".into(),
    };
    apply(&mut s, 2, def).expect("default");
    for i in 0..5u64 {
        let spec = VmSpec::new(format!("v{i}"));
        apply(&mut s, 10 + i, Command::CreateVm { spec }).expect("create");
    }
    apply(&mut s, 20, Command::DeleteVm { name: "v1".into() }).expect("delete");
    assert_eq!(s.ghost_of("v1"), Some(1));
    s.take_touched();
    // The older layout: every row as now, but the network row with its leases and no lease rows.
    let mut rows: BTreeMap<String, Vec<u8>> = s
        .all_rows()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("lease/"))
        .collect();
    rows.insert(
        format!("net/{DEFAULT_NETWORK}"),
        serde_json::to_vec(&s.networks[DEFAULT_NETWORK]).unwrap(),
    );
    let mut old = ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .expect("older rows load");
    let touched = old.take_touched();
    assert_eq!(old, s);
    assert_eq!(old.ghost_of("v1"), Some(1));
    // The store writes the touched rows: the network row loses its leases, each lease gets a row.
    for key in touched {
        match old.row(&key) {
            Some(v) => rows.insert(key.encode(), v),
            None => rows.remove(&key.encode()),
        };
    }
    let net_row: serde_json::Value =
        serde_json::from_slice(&rows[&format!("net/{DEFAULT_NETWORK}")]).unwrap();
    assert!(net_row.get("leases").is_none(), "{net_row}");
    assert_eq!(rows.keys().filter(|k| k.starts_with("lease/")).count(), 6);
    let new = ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .expect("new rows load");
    assert_eq!(new, s);
    // A lease row of a network without a row is refused, not dropped.
    rows.remove(&format!("net/{DEFAULT_NETWORK}"));
    let err =
        ClusterState::from_rows(rows.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap_err();
    assert!(err.contains("has no row"), "{err}");
}
