//! Checkers besides linearizability: acknowledged writes survive, no VM runs twice (the
//! latter is the test kit's checker, re-exported here).

use std::collections::BTreeMap;

use crate::history::{OpKind, Outcome, Record};

/// Every acknowledged create is present after healing unless a delete (acknowledged or of
/// unknown outcome) may have followed it; every acknowledged set-desired is visible unless a
/// later write may have overwritten it. `final_state`: key -> desired running? for present VMs.
pub fn acknowledged_survive(
    history: &[Record],
    final_state: &BTreeMap<String, bool>,
) -> Vec<String> {
    let mut out = Vec::new();
    let may_apply = |r: &Record| matches!(r.outcome, Outcome::Ok | Outcome::Unknown { .. });
    let end = |r: &Record| {
        if matches!(r.outcome, Outcome::Unknown { .. }) {
            u64::MAX
        } else {
            r.complete_us
        }
    };
    for w in history
        .iter()
        .filter(|r| r.outcome == Outcome::Ok && !r.op.is_read())
    {
        let key = w.key.as_deref().unwrap_or_default();
        // writes on the key that may be ordered after w (not finished before w started)
        let later: Vec<&Record> = history
            .iter()
            .filter(|r| {
                r.id != w.id
                    && r.key.as_deref() == Some(key)
                    && !r.op.is_read()
                    && may_apply(r)
                    && end(r) > w.invoke_us
            })
            .collect();
        let fin = final_state.get(key);
        match &w.op {
            OpKind::Create { start } | OpKind::SetDesired { running: start } => {
                let deleted_after = later.iter().any(|r| r.op == OpKind::Delete);
                if fin.is_none() && !deleted_after {
                    out.push(format!("acknowledged {:?} of {key} (record {}) lost: absent after healing, no delete may follow it", w.op, w.id));
                }
                let overwritten = later
                    .iter()
                    .any(|r| matches!(r.op, OpKind::SetDesired { .. } | OpKind::Create { .. }));
                if fin.is_some_and(|f| f != start) && !overwritten && !deleted_after {
                    out.push(format!("acknowledged {:?} of {key} (record {}) lost: desired differs after healing", w.op, w.id));
                }
            }
            OpKind::Delete => {
                let recreated = later.iter().any(|r| matches!(r.op, OpKind::Create { .. }));
                if fin.is_some() && !recreated {
                    out.push(format!("acknowledged delete of {key} (record {}) lost: present after healing, no create may follow it", w.id));
                }
            }
            _ => {}
        }
    }
    // No half-applied or invented state: every present key was written by some create.
    for key in final_state.keys() {
        if !history.iter().any(|r| {
            r.key.as_deref() == Some(key) && matches!(r.op, OpKind::Create { .. }) && may_apply(r)
        }) {
            out.push(format!(
                "{key} is present after healing but no create of it may have taken effect"
            ));
        }
    }
    out
}

/// The never-ran-twice check: the test kit's, one rule for every suite (see
/// [`blixard_testkit::never_twice`]: any overlap of two runs of one name is an anomaly).
pub use blixard_testkit::never_twice::{
    check_file as never_ran_twice, intervals, overlaps as runs_twice, Interval,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: usize, key: &str, op: OpKind, t: (u64, u64), outcome: Outcome) -> Record {
        Record {
            id,
            client: 0,
            node: 1,
            key: Some(key.into()),
            op,
            invoke_us: t.0,
            complete_us: t.1,
            outcome,
        }
    }

    #[test]
    fn lost_create_is_found() {
        let h = vec![rec(
            0,
            "k",
            OpKind::Create { start: true },
            (0, 1),
            Outcome::Ok,
        )];
        assert!(acknowledged_survive(&h, &BTreeMap::from([("k".to_string(), true)])).is_empty());
        assert_eq!(acknowledged_survive(&h, &BTreeMap::new()).len(), 1);
        let mut h2 = h.clone();
        h2.push(rec(
            1,
            "k",
            OpKind::Delete,
            (5, 6),
            Outcome::Unknown {
                error: "timeout".into(),
            },
        ));
        assert!(acknowledged_survive(&h2, &BTreeMap::new()).is_empty());
        // present but never created
        assert_eq!(
            acknowledged_survive(&[], &BTreeMap::from([("z".to_string(), true)])).len(),
            1
        );
    }
}
