//! Why a VM will not move off a draining node: pinned (`--node`), pinned by its labels, or no
//! room elsewhere (naming the resource) — the scheduler's own checks, not a second rule.

use blixard_core::scheduler::{decide, move_blocker};
use blixard_core::{ClusterState, Command, NodeState, Request, Resources, VmSpec};

fn cluster() -> (ClusterState, u64) {
    let mut s = ClusterState::default();
    let mut index = 0;
    for (id, vcpus, zone) in [(1u64, 8u32, "a"), (2, 2, "b")] {
        index += 1;
        s.apply(
            index,
            &Request::new(
                Command::RegisterWorker {
                    id,
                    addr: format!("127.0.0.1:{id}"),
                    capacity: Resources::new(vcpus, 8192, 100),
                    kvm: false,
                    labels: [("zone".to_string(), zone.to_string())].into(),
                },
                index,
            ),
        )
        .unwrap();
    }
    (s, index)
}

fn create(s: &mut ClusterState, index: &mut u64, spec: VmSpec) {
    *index += 1;
    s.apply(*index, &Request::new(Command::CreateVm { spec }, *index))
        .unwrap();
}

#[test]
fn pinned_labelled_and_too_big_vms_say_why_they_stay() {
    let (mut s, mut index) = cluster();
    let mut pinned = VmSpec::new("pinned");
    pinned.vcpus = 1;
    pinned.node = Some(1);
    let mut zoned = VmSpec::new("zoned");
    zoned.vcpus = 1;
    zoned.constraints.insert("zone".into(), "a".into());
    let mut big = VmSpec::new("big");
    big.vcpus = 4;
    big.node = None;
    let mut small = VmSpec::new("small");
    small.vcpus = 1;
    for spec in [pinned, zoned, big, small] {
        create(&mut s, &mut index, spec);
    }
    // Binpack put everything on node 1 (the pinned and zoned ones had to go there).
    for name in ["pinned", "zoned", "big"] {
        assert_eq!(s.vms[name].node_id, Some(1), "{name}");
    }
    // Before the drain: all could stay or move; none is blocked while node 1 is up.
    assert_eq!(move_blocker(s.placement_view(), "small"), None);
    index += 1;
    s.apply(
        index,
        &Request::new(
            Command::SetWorkerState {
                id: 1,
                state: NodeState::Draining,
            },
            index,
        ),
    )
    .unwrap();

    let pinned = move_blocker(s.placement_view(), "pinned").unwrap();
    assert!(pinned.contains("pinned to node 1"), "{pinned}");
    let zoned = move_blocker(s.placement_view(), "zoned").unwrap();
    assert!(
        zoned.contains("pinned by its constraints") && zoned.contains("zone=a"),
        "{zoned}"
    );
    let big = move_blocker(s.placement_view(), "big").unwrap();
    assert!(big.contains("vCPU"), "names the resource: {big}");
    // The same rule the drain follows: blocked exactly when `decide` finds no node.
    for name in ["pinned", "zoned", "big", "small"] {
        let vm = &s.vms[name];
        assert_eq!(
            move_blocker(s.placement_view(), name).is_none(),
            decide(s.placement_view(), &vm.spec).node.is_some(),
            "{name}"
        );
    }
    assert_eq!(move_blocker(s.placement_view(), "no-such-vm"), None);
}
