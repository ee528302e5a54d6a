//! The never-ran-twice checker: one rule for every test that records workload start/stop
//! events (the supervisors append them to the file `BLIXARD_EVENTS_FILE` names; see
//! [`blixard_vmm::read_events`]).
//!
//! # The rule
//!
//! Two runs of workloads with the same name must never overlap in time, whatever their epochs:
//! two epochs of one VM at once, one epoch started twice (two running copies of the same VM),
//! or a deleted VM's old copy still running while its re-created successor of the same name
//! starts are all violations, and every violation fails the test. A run is a `start` record up
//! to the matching `stop` (same name and epoch, first come first matched), or to the end of the
//! record when it never stopped. A run that stops at the millisecond the next one starts does
//! not overlap it (the supervisor writes `stop` only after the workload was reaped).
//!
//! An unreadable events file is an error, never "no runs": a checker that cannot read its
//! evidence must not pass. (A fixture creates the file empty before its nodes start.)

use std::collections::BTreeMap;
use std::path::Path;

use blixard_vmm::{Event, EventKind};

/// One run of a workload: from a start event to its stop (or the end of the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub name: String,
    pub epoch: u64,
    pub start: u64,
    pub stop: Option<u64>,
}

/// The runs the events describe, in order of their start. Events are ordered by time first
/// (a stop before a start at the same millisecond), so files merged from several nodes work.
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

/// Every overlap of two runs of one name (see the [module docs](self) for the rule), one line
/// each; empty when there is none.
pub fn overlaps(events: &[Event]) -> Vec<String> {
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

/// The check on an events file: the number of runs recorded and the overlaps found (empty
/// when none). An unreadable file is an error.
pub fn check_file(path: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let events = blixard_vmm::read_events(path)
        .map_err(|e| anyhow::anyhow!("reading the events file {}: {e}", path.display()))?;
    Ok((intervals(&events).len(), overlaps(&events)))
}

/// [`check_file`] for tests: panics on any overlap (or an unreadable file); returns the number
/// of runs seen.
pub fn assert_file(path: &Path) -> usize {
    let (runs, found) = check_file(path).unwrap_or_else(|e| panic!("never-ran-twice check: {e}"));
    assert!(
        found.is_empty(),
        "a workload ran twice at once:\n{}",
        found.join("\n")
    );
    runs
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
        assert_eq!(overlaps(&ok), Vec::<String>::new());
        // two epochs at once
        let bad = vec![
            ev(Start, 1, "a", 5),
            ev(Start, 5, "a", 9),
            ev(Stop, 10, "a", 5),
        ];
        assert_eq!(overlaps(&bad).len(), 1);
        // two epochs, neither stopped by the end of the record
        let open = vec![ev(Start, 1, "b", 5), ev(Start, 5, "b", 9)];
        assert_eq!(overlaps(&open).len(), 1);
        // one epoch started twice: two running copies of the same VM
        let same = vec![
            ev(Start, 1, "c", 3),
            ev(Start, 2, "c", 3),
            ev(Stop, 4, "c", 3),
            ev(Stop, 5, "c", 3),
        ];
        assert_eq!(overlaps(&same).len(), 1);
        // records out of order (files merged from several nodes) are ordered by time
        let merged = vec![
            ev(Start, 10, "d", 2),
            ev(Start, 1, "d", 1),
            ev(Stop, 10, "d", 1),
        ];
        assert_eq!(overlaps(&merged), Vec::<String>::new());
    }

    #[test]
    fn events_file_is_checked_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("events.log");
        std::fs::write(&f, "start 1 a 5\nstop 10 a 5\nstart 10 a 9\n").unwrap();
        assert_eq!(check_file(&f).unwrap(), (2, vec![]));
        assert_eq!(assert_file(&f), 2);
        std::fs::write(&f, "start 1 a 5\nstart 5 a 9\nstop 10 a 5\n").unwrap();
        let (runs, found) = check_file(&f).unwrap();
        assert_eq!((runs, found.len()), (2, 1));
        assert!(std::panic::catch_unwind(|| assert_file(&f)).is_err());
        assert!(check_file(&dir.path().join("absent.log")).is_err());
    }
}
