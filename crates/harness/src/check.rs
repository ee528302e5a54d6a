//! Checkers besides linearizability: acknowledged writes survive, no VM runs twice.

use std::collections::BTreeMap;

use blixard_vmm::{Event, EventKind};

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

/// One run of a workload: from a start event to its stop (or the end of the run).
#[derive(Debug, Clone)]
pub struct Interval {
    pub name: String,
    pub epoch: u64,
    pub start: u64,
    pub stop: Option<u64>,
}

pub fn intervals(events: &[Event]) -> Vec<Interval> {
    let mut evs: Vec<&Event> = events.iter().collect();
    evs.sort_by_key(|e| (e.unix_ms, e.kind == EventKind::Start));
    let mut open: BTreeMap<(String, u64), Vec<usize>> = BTreeMap::new();
    let mut out: Vec<Interval> = Vec::new();
    for e in evs {
        let k = (e.name.clone(), e.epoch);
        match e.kind {
            EventKind::Start => {
                open.entry(k).or_default().push(out.len());
                out.push(Interval {
                    name: e.name.clone(),
                    epoch: e.epoch,
                    start: e.unix_ms,
                    stop: None,
                });
            }
            EventKind::Stop => {
                if let Some(i) = open.get_mut(&k).and_then(|v| {
                    if v.is_empty() {
                        None
                    } else {
                        Some(v.remove(0))
                    }
                }) {
                    out[i].stop = Some(e.unix_ms);
                }
            }
        }
    }
    out
}

/// Overlapping runs of one VM name: every overlap is an anomaly, whatever the epochs (two
/// epochs of one VM, one epoch started twice, or a deleted VM's old copy still running while its
/// re-created successor of the same name starts). A run that stops at the millisecond the next
/// starts does not overlap it.
pub fn runs_twice(events: &[Event]) -> Vec<String> {
    let iv = intervals(events);
    let mut anomalies = Vec::new();
    let mut by_name: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for i in &iv {
        by_name.entry(&i.name).or_default().push(i);
    }
    for (name, v) in by_name {
        for (a_i, a) in v.iter().enumerate() {
            for b in &v[a_i + 1..] {
                let (ae, be) = (a.stop.unwrap_or(u64::MAX), b.stop.unwrap_or(u64::MAX));
                if a.start < be && b.start < ae {
                    anomalies.push(format!(
                        "{name} ran twice at once: epoch {} [{}..{:?}] and epoch {} [{}..{:?}] (unix ms)",
                        a.epoch, a.start, a.stop, b.epoch, b.start, b.stop
                    ));
                }
            }
        }
    }
    anomalies
}

/// The never-ran-twice check on an events file (the one `BLIXARD_EVENTS_FILE` names): returns
/// the number of runs recorded and the overlaps found (empty when none). The same rule as
/// [`runs_twice`], for any test that records start/stop events; an unreadable file is an error,
/// never "no runs".
pub fn never_ran_twice(path: &std::path::Path) -> anyhow::Result<(usize, Vec<String>)> {
    let events = blixard_vmm::read_events(path)
        .map_err(|e| anyhow::anyhow!("reading the events file {}: {e}", path.display()))?;
    Ok((intervals(&events).len(), runs_twice(&events)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, t: u64, name: &str, epoch: u64) -> Event {
        Event {
            kind,
            unix_ms: t,
            name: name.into(),
            epoch,
        }
    }

    #[test]
    fn any_overlap_of_one_name_is_an_anomaly() {
        use EventKind::*;
        let ok = vec![
            ev(Start, 1, "a", 5),
            ev(Stop, 10, "a", 5),
            ev(Start, 10, "a", 9),
            ev(Start, 3, "b", 2),
            ev(Start, 4, "c", 2),
            ev(Stop, 6, "c", 2),
            ev(Start, 7, "c", 2),
        ];
        assert_eq!(runs_twice(&ok), Vec::<String>::new());
        // two epochs at once
        let bad = vec![
            ev(Start, 1, "a", 5),
            ev(Start, 5, "a", 9),
            ev(Stop, 10, "a", 5),
        ];
        assert_eq!(runs_twice(&bad).len(), 1);
        // two epochs, neither stopped by the end of the run
        let open = vec![ev(Start, 1, "b", 5), ev(Start, 5, "b", 9)];
        assert_eq!(runs_twice(&open).len(), 1);
        // one epoch started twice
        let same = vec![
            ev(Start, 1, "c", 3),
            ev(Start, 2, "c", 3),
            ev(Stop, 4, "c", 3),
            ev(Stop, 5, "c", 3),
        ];
        assert_eq!(runs_twice(&same).len(), 1);
    }

    #[test]
    fn events_file_is_checked_and_a_missing_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("blixard-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("events.log");
        std::fs::write(&f, "start 1 a 5\nstop 10 a 5\nstart 10 a 9\n").unwrap();
        assert_eq!(never_ran_twice(&f).unwrap(), (2, vec![]));
        std::fs::write(&f, "start 1 a 5\nstart 5 a 9\nstop 10 a 5\n").unwrap();
        let (runs, overlaps) = never_ran_twice(&f).unwrap();
        assert_eq!((runs, overlaps.len()), (2, 1));
        assert!(never_ran_twice(&dir.join("absent.log")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
