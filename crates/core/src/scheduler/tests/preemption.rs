//! Preemption, placement of pending VMs by priority, and evictions on re-registration.

use super::*;

#[test]
fn preemption_evicts_the_fewest_lowest_priority_vms() {
    let mut h = H::new();
    h.node(1, 4, 8192);
    h.create(prio("low-a", 2, 10, false));
    h.create(prio("low-b", 2, 20, false));
    let hi = h.create(prio("high", 2, 90, true));
    // Two phases: high holds the room at once, but the victim stops on its node first
    // (the planner starts high only then).
    assert_eq!(hi.node_id, Some(1));
    assert_eq!(
        hi.placement.as_deref(),
        Some("preempt: node 1 (priority 90 evicted 1 lower-priority VM: low-a)")
    );
    assert_eq!(
        hi.reason.as_deref(),
        Some("waiting for low-a to stop on node 1 before it starts")
    );
    let a = h.vm("low-a").clone();
    assert_eq!(
        (a.node_id, a.evacuating, a.preempted_by.as_deref()),
        (Some(1), true, Some("high"))
    );
    assert_eq!(
        a.reason.as_deref(),
        Some("preempted by VM high (priority 90)")
    );
    h.stopped("low-a");
    assert_eq!(h.vm("high").node_id, Some(1));
    let a = h.vm("low-a");
    assert_eq!(
        (a.node_id, a.state, a.evacuating),
        (None, VmState::Pending, false)
    );
    assert_eq!(
        a.reason.as_deref(),
        Some("preempted by VM high (priority 90)")
    );
    assert_eq!(h.vm("low-b").node_id, Some(1));
    // Equal or higher priority is never evicted; without preempt nothing is evicted.
    assert_eq!(h.create(prio("peer", 2, 20, true)).node_id, None);
    assert_eq!(h.create(prio("polite", 2, 99, false)).node_id, None);
    assert_eq!(h.vm("low-b").node_id, Some(1));

    // Fewest victims wins: node 2 has four 1-vCPU VMs, node 3 one 4-vCPU VM.
    let mut h = H::new();
    h.node(2, 4, 8192);
    h.node(3, 4, 8192);
    for i in 0..4 {
        let mut s = prio(&format!("small-{i}"), 1, 10, false);
        s.node = Some(2);
        h.create(s);
    }
    let mut s = prio("large", 4, 40, false);
    s.node = Some(3);
    h.create(s);
    assert_eq!(h.create(prio("urgent", 4, 50, true)).node_id, Some(3));
    assert_eq!(
        h.vm("large").reason.as_deref(),
        Some("preempted by VM urgent (priority 50)")
    );
    assert_eq!(h.s.vms.values().filter(|v| v.evacuating).count(), 1);
    h.stopped("large");
    assert_eq!(h.vm("urgent").node_id, Some(3));
    assert_eq!(h.s.vms.values().filter(|v| v.node_id.is_none()).count(), 1);
}

#[test]
fn victims_move_elsewhere_but_do_not_preempt_in_the_same_apply() {
    let mut h = H::new();
    h.node(1, 2, 8192);
    h.node(2, 2, 8192);
    // mid (priority 60, may preempt) on node 1; low (priority 10) fills node 2.
    assert_eq!(h.create(prio("mid", 2, 60, true)).node_id, Some(1));
    let mut low = prio("low", 2, 10, false);
    low.node = Some(2);
    h.create(low);
    let mut top = prio("top", 2, 90, true);
    top.node = Some(1);
    assert_eq!(h.create(top).node_id, Some(1));
    assert!(h.vm("mid").evacuating);
    h.stopped("mid");
    assert_eq!(h.vm("top").node_id, Some(1));
    // mid, off its node, preempts low on node 2 in turn (again in two phases: it holds
    // the room while low stops there).
    assert_eq!(h.vm("mid").node_id, Some(2));
    assert_eq!(
        (h.vm("low").node_id, h.vm("low").evacuating),
        (Some(2), true)
    );
    h.stopped("low");
    assert_eq!(h.vm("mid").node_id, Some(2));
    assert_eq!(
        h.vm("low").reason.as_deref(),
        Some("preempted by VM mid (priority 60)")
    );

    // A victim that fits elsewhere is re-placed in the same apply.
    let mut h = H::new();
    h.node(1, 2, 8192);
    h.node(2, 2, 8192);
    let mut low = prio("low", 2, 10, false);
    low.node = None;
    h.create(low);
    assert_eq!(h.vm("low").node_id, Some(1));
    let mut top = prio("top", 2, 90, true);
    top.node = Some(1);
    // Node 2 is empty, but top is pinned to 1.
    assert_eq!(h.create(top).node_id, Some(1));
    h.stopped("low");
    assert_eq!(h.vm("top").node_id, Some(1));
    assert_eq!(h.vm("low").node_id, Some(2));

    // A victim that is stopped (and stays so) is not running: no need to wait for it.
    let mut h = H::new();
    h.node(1, 2, 8192);
    h.create(prio("idle", 2, 10, false));
    h.run(Command::SetVmDesired {
        name: "idle".into(),
        desired: crate::state::Desired::Stopped,
    })
    .unwrap();
    h.stopped("idle");
    assert_eq!(h.create(prio("now", 2, 90, true)).node_id, Some(1));
    assert_eq!(h.vm("idle").node_id, None);
}

#[test]
fn pending_vms_are_placed_by_priority_when_capacity_appears() {
    let mut h = H::new();
    h.create(prio("early-low", 2, 10, false));
    h.create(prio("late-high", 2, 80, false));
    h.create(prio("mid", 2, 50, false));
    assert_eq!(
        h.s.pending_vms().collect::<Vec<_>>(),
        vec!["late-high", "mid", "early-low"]
    );
    h.node(1, 4, 8192);
    assert_eq!(h.vm("late-high").node_id, Some(1));
    assert_eq!(h.vm("mid").node_id, Some(1));
    assert_eq!(h.vm("early-low").node_id, None);
    assert_eq!(
        h.vm("early-low").reason.as_deref(),
        Some("no node has 2 vCPUs free (largest free: 0 on node 1)")
    );
    h.run(Command::DeleteVm { name: "mid".into() }).unwrap();
    assert_eq!(h.vm("early-low").node_id, Some(1));
    assert!(h.vm("early-low").reason.is_none());
}

#[test]
fn re_registration_evicts_what_no_longer_fits() {
    let mut h = H::new();
    h.node_full(1, Resources::new(4, 8192, 10), true, &[("zone", "a")]);
    let mut zoned = prio("zoned", 1, 90, false);
    zoned.constraints.insert("zone".into(), "a".into());
    h.create(zoned);
    h.create(prio("low", 1, 10, false));
    h.create(prio("high", 2, 90, false));
    h.node_full(1, Resources::new(2, 8192, 10), true, &[("zone", "b")]);
    assert_eq!(
        h.vm("zoned").reason.as_deref(),
        Some("node 1 no longer has label zone=a")
    );
    assert_eq!(h.vm("high").node_id, Some(1));
    // They leave in two phases: stopped on node 1 first.
    assert!(h.vm("zoned").evacuating && h.vm("low").evacuating);
    assert_eq!(h.vm("low").node_id, Some(1));
    h.stopped("zoned");
    assert_eq!(
        h.vm("zoned").reason.as_deref(),
        Some("node 1 no longer has label zone=a")
    );
    h.stopped("low");
    assert_eq!(
        h.vm("zoned").reason.as_deref(),
        Some("no node has labels zone=a")
    );
    assert_eq!(h.vm("low").node_id, None);
    assert_eq!(
        h.vm("low").reason.as_deref(),
        Some("node 1 re-registered with less capacity (2 vCPUs, 8192 MiB memory, 10 GiB disk)")
    );
}
