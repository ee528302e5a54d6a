//! Scheduler benchmark: 10,000 VMs placed across 100 nodes through `apply(CreateVm)`, one
//! apply at a time, with a mix of sizes, anti-affinity groups, label constraints and required
//! features. Reports placements per second and the mean time per placement for the first and
//! the last 1,000 placements, to show that one placement's cost does not grow with the number
//! of VMs already placed. Then times a `place_pending` round (a worker registering while 1,000
//! VMs wait). Plain `Instant` timing; run with `cargo bench -p blixard-core`.

// `is_multiple_of` is newer than the workspace's rust-version.
#![allow(clippy::manual_is_multiple_of)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use blixard_core::{ClusterState, Command, Request, Resources, Strategy, VmSpec};

const NODES: u64 = 100;
const VMS: usize = 10_000;
const WINDOW: usize = 1_000;

fn register(id: u64, capacity: Resources) -> Command {
    Command::RegisterWorker {
        id,
        addr: format!("10.0.{}.{}:7000", id / 256, id % 256),
        capacity,
        kvm: id % 2 == 0,
        labels: [("zone".to_string(), format!("z{}", id % 4))]
            .into_iter()
            .collect(),
    }
}

fn vm(i: usize) -> VmSpec {
    let mut s = VmSpec::new(format!("vm-{i}"));
    s.vcpus = 1 + u32::try_from(i % 4).expect("below 4");
    s.memory_mb = 256 * (1 + (i % 8) as u64);
    s.disk_gb = (i % 5) as u64 * 2;
    s.priority = u8::try_from(i % 101).expect("below 101");
    if i % 5 == 0 {
        // 2,000 VMs in 400 groups of 5.
        s.anti_affinity = Some(format!("group-{}", i % 400));
    }
    if i % 10 == 3 {
        s.constraints.insert("zone".into(), format!("z{}", i % 4));
    }
    if i % 10 == 7 {
        s.features.insert("kvm".into());
    }
    s
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn median(d: &[Duration]) -> Duration {
    let mut v = d.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn place_all(strategy: Strategy) {
    let mut s = ClusterState::default();
    let mut index = 0u64;
    let mut apply = |s: &mut ClusterState, c: Command| {
        index += 1;
        s.apply(index, &Request::new(c, index))
    };
    for id in 1..=NODES {
        apply(&mut s, register(id, Resources::new(128, 256 * 1024, 4096))).unwrap();
    }
    apply(
        &mut s,
        Command::SetSchedulerSettings {
            strategy,
            vcpu_overcommit_pct: 400,
        },
    )
    .unwrap();

    let mut times = Vec::with_capacity(VMS);
    let total = Instant::now();
    for i in 0..VMS {
        let cmd = Command::CreateVm { spec: vm(i) };
        let t = Instant::now();
        let out = apply(&mut s, cmd);
        times.push(t.elapsed());
        black_box(out.unwrap());
        // What the store does after each batch (untimed: it is the store's work).
        black_box(s.take_touched());
    }
    let total = total.elapsed();
    let placed = s.vms.values().filter(|v| v.node_id.is_some()).count();
    s.check_invariants().expect("invariants hold");
    let first: Duration = times[..WINDOW].iter().sum();
    let last: Duration = times[VMS - WINDOW..].iter().sum();
    let (first_med, last_med) = (median(&times[..WINDOW]), median(&times[VMS - WINDOW..]));
    let mut sorted = times.clone();
    sorted.sort();
    let p99 = sorted[VMS * 99 / 100];
    println!(
        "{:<8} {VMS} VMs on {NODES} nodes: {placed} placed, {:.0} placements/s; per placement, first {WINDOW} vs last {WINDOW}: mean {:.2} vs {:.2} us, median {:.2} vs {:.2} us (ratio {:.2}); p99 {:.2} us",
        strategy.as_str(),
        VMS as f64 / total.as_secs_f64(),
        per_op(first, WINDOW),
        per_op(last, WINDOW),
        first_med.as_secs_f64() * 1e6,
        last_med.as_secs_f64() * 1e6,
        last_med.as_secs_f64() / first_med.as_secs_f64(),
        p99.as_secs_f64() * 1e6,
    );
}

/// 10,000 VMs in the cluster of which 1,000 wait (they need 32 vCPUs, nodes have 16 free);
/// time one `DeleteVm` that lets none in, and one `RegisterWorker` (512 vCPUs) that lets 16 in.
fn pending_round() {
    let mut s = ClusterState::default();
    let mut index = 0u64;
    let mut apply = |s: &mut ClusterState, c: Command| {
        index += 1;
        s.apply(index, &Request::new(c, index))
    };
    for id in 1..=NODES {
        apply(
            &mut s,
            register(id, Resources::new(106, 1024 * 1024, 100_000)),
        )
        .unwrap();
    }
    // Spread the small VMs so every node keeps 16 vCPUs free: too few for the big ones.
    apply(
        &mut s,
        Command::SetSchedulerSettings {
            strategy: Strategy::Spread,
            vcpu_overcommit_pct: 100,
        },
    )
    .unwrap();
    for i in 0..9_000 {
        let mut spec = VmSpec::new(format!("small-{i}"));
        spec.vcpus = 1;
        apply(&mut s, Command::CreateVm { spec }).unwrap();
    }
    for i in 0..1_000 {
        let mut spec = VmSpec::new(format!("big-{i}"));
        spec.vcpus = 32;
        spec.priority = (i % 101) as u8;
        apply(&mut s, Command::CreateVm { spec }).unwrap();
    }
    s.take_touched();
    let pending = s.pending_vms().count();
    let t = Instant::now();
    apply(
        &mut s,
        Command::DeleteVm {
            name: "small-0".into(),
        },
    )
    .unwrap();
    let delete = t.elapsed();
    let t = Instant::now();
    apply(
        &mut s,
        register(NODES + 1, Resources::new(512, 1024 * 1024, 100_000)),
    )
    .unwrap();
    let register = t.elapsed();
    s.check_invariants().expect("invariants hold");
    println!(
        "pending  {pending} of {} VMs waiting: DeleteVm (places none) {:.1} us; RegisterWorker (places {}) {:.1} us",
        s.vms.len(),
        delete.as_secs_f64() * 1e6,
        pending - s.pending_vms().count(),
        register.as_secs_f64() * 1e6,
    );
}

fn main() {
    // `cargo test --benches` runs this too; keep that fast.
    if std::env::args().any(|a| a == "--test") {
        println!("scheduler bench: skipped under cargo test");
        return;
    }
    // Three rounds: the test machine is shared, so look at the steadiest one.
    for _ in 0..3 {
        for strategy in [Strategy::Binpack, Strategy::Spread] {
            place_all(strategy);
        }
        pending_round();
    }
}
