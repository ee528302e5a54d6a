//! The nemesis schedule: generated up front from the seed, so one seed is one schedule.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One fault. Nodes are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Node `node` cut off from every other node (a minority of one; the rest keep a majority).
    /// Clients still reach it: reads sent there must not be stale.
    Isolate { node: usize },
    /// Whoever leads when the fault starts is cut off from the others.
    IsolateLeader,
    /// Two halves that cannot talk: `side` against the rest (with 3 nodes, the same as Isolate).
    Partition { side: Vec<usize> },
    /// `kill -9` the daemon; restart it (same data dir) when the fault ends.
    Kill { node: usize },
    /// `SIGSTOP` the daemon; `SIGCONT` when the fault ends.
    Pause { node: usize },
    /// tc netem delay and loss on the node's link (skipped when the kernel lacks netem).
    Netem {
        node: usize,
        delay_ms: u64,
        loss_pct: u64,
    },
    /// Membership change: remove the node in slot `node` through Raft, then start a new node
    /// (fresh data dir, new id) in the same namespace that joins the cluster.
    Replace { node: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Start, in ms after the workload started.
    pub at_ms: u64,
    /// How long the fault lasts before it is healed.
    pub dur_ms: u64,
    pub fault: Fault,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub seed: u64,
    pub nodes: usize,
    pub duration_ms: u64,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// Faults one at a time, each 1.5-5 s (longer than the election timeout), separated by
    /// 1-3 s of healthy network. The first fault always isolates one node for at least 3 s, so
    /// every run exercises reads served by a node cut off from the quorum.
    pub fn generate(seed: u64, nodes: usize, duration_ms: u64) -> Schedule {
        Self::generate_with(seed, nodes, duration_ms, true)
    }

    /// `replace`: whether membership changes may be scheduled (when not, a kill takes their
    /// place, so the rest of the schedule stays the same).
    pub fn generate_with(seed: u64, nodes: usize, duration_ms: u64, replace: bool) -> Schedule {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut steps = Vec::new();
        let mut t = rng.gen_range(1_000..2_500);
        let end = duration_ms.saturating_sub(2_000);
        let mut first = true;
        let mut replaced = false;
        while t + 1_500 < end {
            let node = rng.gen_range(1..=nodes);
            let fault = if first {
                Fault::Isolate { node }
            } else {
                match rng.gen_range(0..7) {
                    0 => Fault::Isolate { node },
                    1 => Fault::IsolateLeader,
                    2 => {
                        let mut side: Vec<usize> =
                            (1..=nodes).filter(|_| rng.gen_bool(0.5)).collect();
                        if side.is_empty() || side.len() == nodes {
                            side = vec![node];
                        }
                        Fault::Partition { side }
                    }
                    3 => Fault::Kill { node },
                    4 => Fault::Pause { node },
                    6 if replace && !replaced => {
                        replaced = true;
                        Fault::Replace { node }
                    }
                    6 => Fault::Kill { node },
                    _ => Fault::Netem {
                        node,
                        delay_ms: rng.gen_range(20..200),
                        loss_pct: rng.gen_range(0..20),
                    },
                }
            };
            let min = if first { 3_000 } else { 1_500 };
            let dur = rng.gen_range(min..5_000).min(end - t);
            steps.push(Step {
                at_ms: t,
                dur_ms: dur,
                fault,
            });
            t += dur + rng.gen_range(1_000..3_000);
            first = false;
        }
        Schedule {
            seed,
            nodes,
            duration_ms,
            steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule() {
        let a = Schedule::generate(42, 3, 40_000);
        assert_eq!(a, Schedule::generate(42, 3, 40_000));
        assert_ne!(a, Schedule::generate(43, 3, 40_000));
        assert!(a.steps.len() >= 4, "{a:?}");
        assert!(matches!(a.steps[0].fault, Fault::Isolate { .. }));
        for w in a.steps.windows(2) {
            assert!(
                w[0].at_ms + w[0].dur_ms < w[1].at_ms,
                "faults overlap: {w:?}"
            );
        }
        assert!(a.steps.iter().all(|s| s.at_ms + s.dur_ms <= 38_000));
        for seed in 0..50 {
            let s = Schedule::generate_with(seed, 3, 40_000, false);
            assert!(!s
                .steps
                .iter()
                .any(|s| matches!(s.fault, Fault::Replace { .. })));
            assert_eq!(
                s.steps.len(),
                Schedule::generate(seed, 3, 40_000).steps.len()
            );
        }
    }
}
