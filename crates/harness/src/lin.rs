//! Linearizability of the VM registry, per key, by the Wing-Gong-Lowe search (as in porcupine):
//! take the operations in real-time order, try to linearize a pending call next, backtrack when
//! a return is reached whose call could not be placed; memoize (linearized set, state) pairs.
//!
//! Model per VM name: absent | present{desired running} | present{desired stopped}. The search
//! tracks a *set* of possible states (a 3-bit mask), which makes operations with an unknown
//! outcome deterministic steps: "took effect or not" is the union of both successors. Unknown
//! outcomes never return (their return is placed at the end of time). Reads with an unknown
//! outcome carry no information and are dropped.
//!
//! Sound for this model: a reported violation is a real one. List results are checked per key
//! (a projection: every list must be consistent key by key; the atomicity of one list across
//! keys is not checked).

use std::collections::{BTreeMap, HashSet};

use crate::history::{OpKind, Outcome, Record};

pub const ABSENT: u8 = 1;
pub const RUNNING: u8 = 2;
pub const STOPPED: u8 = 4;

fn present(running: bool) -> u8 {
    if running {
        RUNNING
    } else {
        STOPPED
    }
}

/// One operation on one key, as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateOk(bool),
    CreateExists,
    DeleteOk,
    DeleteNotFound,
    SetOk(bool),
    SetNotFound,
    /// A read that saw exactly this state (one bit).
    Read(u8),
    UnknownCreate(bool),
    UnknownDelete,
    UnknownSet(bool),
}

/// Successor states of one state; 0 when the step is impossible from it.
fn step1(s: u8, st: Step) -> u8 {
    match st {
        Step::CreateOk(r) if s == ABSENT => present(r),
        Step::CreateExists if s != ABSENT => s,
        Step::DeleteOk if s != ABSENT => ABSENT,
        Step::DeleteNotFound if s == ABSENT => ABSENT,
        Step::SetOk(r) if s != ABSENT => present(r),
        Step::SetNotFound if s == ABSENT => ABSENT,
        Step::Read(v) if s == v => s,
        Step::UnknownCreate(r) => s | if s == ABSENT { present(r) } else { 0 },
        Step::UnknownDelete => s | if s != ABSENT { ABSENT } else { 0 },
        Step::UnknownSet(r) => s | if s != ABSENT { present(r) } else { 0 },
        _ => 0,
    }
}

/// Successors of a set of states.
pub fn step(mask: u8, st: Step) -> u8 {
    [ABSENT, RUNNING, STOPPED]
        .iter()
        .filter(|&&s| mask & s != 0)
        .fold(0, |acc, &s| acc | step1(s, st))
}

#[derive(Debug, Clone)]
pub struct Op {
    pub call: u64,
    /// `u64::MAX` for unknown outcomes.
    pub ret: u64,
    pub step: Step,
    /// Index of the record in the history (for reports).
    pub record: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// No linearization exists. `stuck_record` is the history record whose return could not be
    /// reached at the deepest point of the search; `linearized` how many ops were placed there.
    Violation {
        stuck_record: usize,
        linearized: usize,
    },
    /// The search budget ran out.
    Inconclusive,
}

/// Projects a history onto one key.
pub fn project(history: &[Record], key: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    for (i, r) in history.iter().enumerate() {
        let unknown = matches!(r.outcome, Outcome::Unknown { .. });
        let st = match (&r.op, &r.outcome) {
            (OpKind::List, Outcome::List { values }) => Some(Step::Read(
                values.get(key).map_or(ABSENT, |&run| present(run)),
            )),
            (OpKind::List, _) => None,
            _ if r.key.as_deref() != Some(key) => None,
            (OpKind::Get, Outcome::Value { value }) => {
                Some(Step::Read(value.map_or(ABSENT, present)))
            }
            (OpKind::Get, _) => None,
            (OpKind::Create { start }, Outcome::Ok) => Some(Step::CreateOk(*start)),
            (OpKind::Create { .. }, Outcome::Exists) => Some(Step::CreateExists),
            (OpKind::Create { start }, _) => Some(Step::UnknownCreate(*start)),
            (OpKind::Delete, Outcome::Ok) => Some(Step::DeleteOk),
            (OpKind::Delete, Outcome::NotFound) => Some(Step::DeleteNotFound),
            (OpKind::Delete, _) => Some(Step::UnknownDelete),
            (OpKind::SetDesired { running }, Outcome::Ok) => Some(Step::SetOk(*running)),
            (OpKind::SetDesired { .. }, Outcome::NotFound) => Some(Step::SetNotFound),
            (OpKind::SetDesired { running }, _) => Some(Step::UnknownSet(*running)),
        };
        if let Some(step) = st {
            let ret = if unknown { u64::MAX } else { r.complete_us };
            ops.push(Op {
                call: r.invoke_us,
                ret,
                step,
                record: i,
            });
        }
    }
    ops
}

/// The WGL search from `init` (a state mask). `budget`: maximum search steps.
pub fn check(ops: &[Op], init: u8, budget: u64) -> Verdict {
    check_with(ops, init, budget, false)
}

/// [`check`], with an (unsound, see below) unknown-write pruning switchable; only for tests
/// that show why it is unsound.
pub fn check_with(ops: &[Op], init: u8, budget: u64, prune: bool) -> Verdict {
    let n = ops.len();
    if n == 0 {
        return Verdict::Ok;
    }
    // Entries 1..=2n; entry 0 is the head sentinel. Calls sort before returns at equal times
    // (treating touching operations as concurrent never invents a violation).
    let mut ev: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        ev.push((o.call, false, i));
        ev.push((o.ret, true, i));
    }
    ev.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    let len = 2 * n + 1;
    let mut next = vec![0usize; len];
    let mut prev = vec![0usize; len];
    let mut op_of = vec![0usize; len];
    let mut is_call = vec![false; len];
    let mut ret_entry = vec![0usize; n];
    for (k, &(_, is_ret, i)) in ev.iter().enumerate() {
        let e = k + 1;
        op_of[e] = i;
        is_call[e] = !is_ret;
        if is_ret {
            ret_entry[i] = e;
        }
        prev[e] = k;
        next[k] = e;
    }
    next[2 * n] = usize::MAX; // end of list
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, u8)> = HashSet::new();
    let mut stack: Vec<(usize, u8)> = Vec::new();
    let mut state = init;
    let mut entry = next[0];
    let mut steps = 0u64;
    let (mut deepest, mut stuck) = (0usize, ops[0].record);
    while next[0] != usize::MAX {
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive;
        }
        if is_call[entry] {
            let i = op_of[entry];
            let s2 = step(state, ops[i].step);
            let mut advanced = false;
            if s2 != 0 {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), s2)) {
                    stack.push((entry, state));
                    state = s2;
                    // lift the call and its return
                    let m = ret_entry[i];
                    for x in [entry, m] {
                        let (p, nx) = (prev[x], next[x]);
                        next[p] = nx;
                        if nx != usize::MAX {
                            prev[nx] = p;
                        }
                    }
                    entry = next[0];
                    advanced = true;
                } else {
                    linearized[i / 64] &= !(1 << (i % 64));
                }
            }
            if !advanced {
                entry = next[entry];
            }
        } else {
            if stack.len() >= deepest {
                deepest = stack.len();
                stuck = ops[op_of[entry]].record;
            }
            loop {
                let Some((e, s)) = stack.pop() else {
                    return Verdict::Violation {
                        stuck_record: stuck,
                        linearized: deepest,
                    };
                };
                state = s;
                let i = op_of[e];
                linearized[i / 64] &= !(1 << (i % 64));
                // unlift in reverse order: the return, then the call
                let m = ret_entry[i];
                for x in [m, e] {
                    let (p, nx) = (prev[x], next[x]);
                    next[p] = x;
                    if nx != usize::MAX {
                        prev[nx] = x;
                    }
                }
                // `prune` is an experiment kept switchable for cross-checking: backtracking past
                // unknown writes is NOT sound (a later read may need the write placed later),
                // so `check` never prunes.
                if !prune
                    || !matches!(
                        ops[i].step,
                        Step::UnknownCreate(_) | Step::UnknownDelete | Step::UnknownSet(_)
                    )
                {
                    entry = next[e];
                    break;
                }
            }
        }
    }
    Verdict::Ok
}

/// For a violation: the shortest prefix (ops ordered by call time) that is already not
/// linearizable, found by bisection; returns its length. A diagnostic aid: the culprit is
/// usually among the last operations of that prefix.
pub fn shortest_failing_prefix(ops: &[Op], budget: u64) -> Option<usize> {
    let mut sorted = ops.to_vec();
    sorted.sort_by_key(|o| o.call);
    let fails = |k: usize| {
        matches!(
            check(&sorted[..k], ABSENT, budget),
            Verdict::Violation { .. }
        )
    };
    if !fails(sorted.len()) {
        return None;
    }
    let (mut lo, mut hi) = (0, sorted.len());
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        if fails(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// Checks every key; returns the verdict per key.
pub fn check_history(
    history: &[Record],
    keys: &[String],
    budget: u64,
) -> BTreeMap<String, Verdict> {
    keys.iter()
        .map(|k| (k.clone(), check(&project(history, k), ABSENT, budget)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: u64, step: Step) -> Op {
        Op {
            call,
            ret,
            step,
            record: 0,
        }
    }

    #[test]
    fn sequential_history() {
        let ops = vec![
            op(0, 1, Step::CreateOk(true)),
            op(2, 3, Step::Read(RUNNING)),
            op(4, 5, Step::SetOk(false)),
            op(6, 7, Step::Read(STOPPED)),
            op(8, 9, Step::CreateExists),
            op(10, 11, Step::DeleteOk),
            op(12, 13, Step::Read(ABSENT)),
            op(14, 15, Step::DeleteNotFound),
        ];
        assert_eq!(check(&ops, ABSENT, 1_000_000), Verdict::Ok);
    }

    #[test]
    fn stale_read_is_a_violation() {
        let ops = vec![
            op(0, 1, Step::CreateOk(true)),
            op(2, 3, Step::SetOk(false)),
            op(4, 5, Step::Read(RUNNING)),
        ];
        assert!(matches!(
            check(&ops, ABSENT, 1_000_000),
            Verdict::Violation { .. }
        ));
        // the same read concurrent with the write is fine
        let ops = vec![
            op(0, 1, Step::CreateOk(true)),
            op(2, 6, Step::SetOk(false)),
            op(4, 5, Step::Read(RUNNING)),
        ];
        assert_eq!(check(&ops, ABSENT, 1_000_000), Verdict::Ok);
    }

    #[test]
    fn lost_write_is_a_violation() {
        let ops = vec![
            op(0, 1, Step::CreateOk(false)),
            op(2, 3, Step::Read(ABSENT)),
        ];
        assert!(matches!(
            check(&ops, ABSENT, 1_000_000),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn unknown_writes_may_or_may_not_apply() {
        let unknown = op(0, u64::MAX, Step::UnknownCreate(true));
        let applied = vec![
            unknown.clone(),
            op(10, 11, Step::Read(RUNNING)),
            op(12, 13, Step::Read(RUNNING)),
        ];
        assert_eq!(check(&applied, ABSENT, 1_000_000), Verdict::Ok);
        let not_applied = vec![unknown.clone(), op(10, 11, Step::Read(ABSENT))];
        assert_eq!(check(&not_applied, ABSENT, 1_000_000), Verdict::Ok);
        // but once observed applied it cannot be un-applied
        let flip = vec![
            unknown,
            op(10, 11, Step::Read(RUNNING)),
            op(12, 13, Step::Read(ABSENT)),
        ];
        assert!(matches!(
            check(&flip, ABSENT, 1_000_000),
            Verdict::Violation { .. }
        ));
    }

    /// Found by the harness on seed 102: an unknown write placed early is then filtered away
    /// by a read that saw it not applied yet; a later read needs it placed later. Pruning
    /// backtracking past unknown writes would (wrongly) report a violation.
    #[test]
    fn unknown_write_may_land_after_a_read_that_missed_it() {
        let ops = vec![
            op(0, 1, Step::CreateOk(false)),
            op(2, u64::MAX, Step::UnknownSet(true)),
            op(3, 4, Step::Read(STOPPED)),
            op(5, 6, Step::Read(RUNNING)),
        ];
        assert_eq!(check(&ops, ABSENT, 1_000_000), Verdict::Ok);
        assert!(matches!(
            check_with(&ops, ABSENT, 1_000_000, true),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn concurrent_creates_one_wins() {
        let ops = vec![
            op(0, 10, Step::CreateOk(true)),
            op(1, 9, Step::CreateExists),
            op(2, 8, Step::CreateOk(false)),
        ];
        assert!(matches!(
            check(&ops, ABSENT, 1_000_000),
            Verdict::Violation { .. }
        ));
        let ops = vec![
            op(0, 10, Step::CreateOk(true)),
            op(1, 9, Step::CreateExists),
            op(11, 12, Step::Read(RUNNING)),
        ];
        assert_eq!(check(&ops, ABSENT, 1_000_000), Verdict::Ok);
    }

    #[test]
    fn many_unknowns_stay_tractable() {
        let mut ops = Vec::new();
        let mut t = 0;
        for i in 0..400u64 {
            let s = match i % 5 {
                0 => Step::UnknownSet(i % 2 == 0),
                1 => Step::UnknownCreate(true),
                2 => Step::UnknownDelete,
                3 => Step::Read(if i % 3 == 0 { ABSENT } else { RUNNING }),
                _ => Step::CreateExists,
            };
            let ret = if matches!(
                s,
                Step::UnknownSet(_) | Step::UnknownCreate(_) | Step::UnknownDelete
            ) {
                u64::MAX
            } else {
                t + 3
            };
            ops.push(op(t, ret, s));
            t += 2;
        }
        assert_ne!(check(&ops, ABSENT, 5_000_000), Verdict::Inconclusive);
    }
}
