//! Tests of the event derivation and the touched-VM journal.

use super::*;
use crate::command::{Command, Request};
use crate::spec::{Resources, VmSpec};

fn req(time_ms: u64, command: Command) -> Request {
    Request::new(command, time_ms)
}

fn run(st: &mut ClusterState, src: &mut EventSource, index: u64, cmd: Command) {
    st.apply(index, &req(index * 10, cmd)).ok();
    let t = st.take_touched();
    src.observe(index, index * 10, st, &t);
}

fn script() -> Vec<Command> {
    let spec = VmSpec::new("web");
    vec![
        Command::RegisterWorker {
            id: 1,
            addr: "127.0.0.1:1".into(),
            capacity: Resources::new(4, 4096, 10),
            kvm: false,
            labels: Default::default(),
        },
        Command::CreateVm { spec },
        Command::SetWorkerState {
            id: 1,
            state: crate::NodeState::Draining,
        },
        Command::DeleteVm { name: "web".into() },
    ]
}

#[test]
fn same_log_same_events_and_resume_once() {
    let mut a = ClusterState::default();
    let mut src = EventSource::new(&a, 0);
    for (i, c) in script().into_iter().enumerate() {
        run(&mut a, &mut src, i as u64 + 1, c);
    }
    let (all, cursor) = src.since(0, usize::MAX);
    let types: Vec<_> = all.iter().map(|e| e.kind.type_name()).collect();
    assert!(types.contains(&"node_registered"), "{types:?}");
    assert!(types.contains(&"vm_created"), "{types:?}");
    assert!(types.contains(&"vm_placed"), "{types:?}");
    assert!(types.contains(&"node_state"), "{types:?}");
    assert!(types.contains(&"vm_deleted"), "{types:?}");
    assert_eq!(cursor, all.last().unwrap().index);
    // Resuming from every index gives exactly the tail.
    for e in &all {
        let (tail, _) = src.since(e.index, usize::MAX);
        let expect: Vec<_> = all.iter().filter(|x| x.index > e.index).cloned().collect();
        assert_eq!(tail, expect);
    }
    // A second node replaying the same log emits the same events.
    let mut b = ClusterState::default();
    let mut src_b = EventSource::new(&b, 0);
    for (i, c) in script().into_iter().enumerate() {
        run(&mut b, &mut src_b, i as u64 + 1, c);
    }
    assert_eq!(src_b.since(0, usize::MAX).0, all);
    // Paged reads deliver whole indexes and never repeat.
    let mut got = Vec::new();
    let mut cur = 0;
    loop {
        let (page, next) = src.since(cur, 1);
        if page.is_empty() {
            break;
        }
        got.extend(page);
        cur = next;
    }
    assert_eq!(got, all);
}

#[test]
fn below_floor_gets_resync_marker() {
    let mut a = ClusterState::default();
    let mut src = EventSource::new(&a, 0);
    let cmds = script();
    for (i, c) in cmds.iter().take(2).enumerate() {
        run(&mut a, &mut src, i as u64 + 1, c.clone());
    }
    // A node that starts (or installs a snapshot) at index 2.
    let mut b = a.clone();
    let mut late = EventSource::new(&b, 2);
    let (evs, cursor) = late.since(1, usize::MAX);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].kind.type_name(), "resync");
    assert_eq!(cursor, 2);
    for (i, c) in cmds.iter().enumerate().skip(2) {
        run(&mut a, &mut src, i as u64 + 1, c.clone());
        run(&mut b, &mut late, i as u64 + 1, c.clone());
    }
    let (evs, _) = late.since(2, usize::MAX);
    assert!(!evs.is_empty());
    assert_eq!(evs, src.since(2, usize::MAX).0);
}

#[test]
fn touched_vms_journal_is_bounded_and_says_when_it_forgot() {
    let st = ClusterState::default();
    let mut src = EventSource::new(&st, 5);
    let touch = |names: &[&str]| -> BTreeSet<RowKey> {
        names.iter().map(|n| RowKey::Vm(n.to_string())).collect()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
    assert_eq!(src.vms_touched_since(4), None, "below the floor");
    assert_eq!(src.vms_touched_since(5), Some(BTreeSet::new()));
    src.observe(6, 60, &st, &touch(&["a", "b"]));
    // Rows of other kinds are not VMs.
    let mut mixed = touch(&["c"]);
    mixed.insert(RowKey::Worker(1));
    src.observe(7, 70, &st, &mixed);
    assert_eq!(src.vms_touched_since(5), Some(set(&["a", "b", "c"])));
    assert_eq!(src.vms_touched_since(6), Some(set(&["c"])));
    assert_eq!(src.vms_touched_since(7), Some(BTreeSet::new()));
    // Past its capacity the oldest indexes go, whole, and asking below them says so.
    let many: Vec<String> = (0..TOUCHED_CAPACITY).map(|i| format!("m{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    src.observe(8, 80, &st, &touch(&many));
    assert_eq!(src.vms_touched_since(6), None);
    assert_eq!(
        src.vms_touched_since(7).map(|s| s.len()),
        Some(TOUCHED_CAPACITY)
    );
    src.observe(9, 90, &st, &touch(&["x"]));
    assert_eq!(src.vms_touched_since(7), None, "index 8 was partly evicted");
    assert_eq!(src.vms_touched_since(8), Some(set(&["x"])));
    // A reset (snapshot install) forgets everything before its floor.
    src.reset(&st, 20);
    assert_eq!(src.vms_touched_since(9), None);
    assert_eq!(src.vms_touched_since(20), Some(BTreeSet::new()));
}
