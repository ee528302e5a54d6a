//! The events file (`$BLIXARD_EVENTS_FILE`): `start`/`stop` records appended by supervisors,
//! read back by the fault tests to prove a VM never ran twice.

use std::fs;
use std::path::Path;

use crate::DriverError;

/// One line of the events file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub unix_ms: u64,
    pub name: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Start,
    Stop,
}

/// Parse an events file (malformed lines are skipped with a warning).
pub fn read_events(path: &Path) -> Result<Vec<Event>, DriverError> {
    let text = fs::read_to_string(path).map_err(|e| DriverError::io("reading", path, e))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let parsed = parse_event(line);
            if parsed.is_none() {
                tracing::warn!(line, "malformed event line");
            }
            parsed
        })
        .collect())
}

pub(super) fn parse_event(line: &str) -> Option<Event> {
    let mut it = line.split_whitespace();
    let kind = match it.next()? {
        "start" => EventKind::Start,
        "stop" => EventKind::Stop,
        _ => return None,
    };
    let unix_ms = it.next()?.parse().ok()?;
    let name = it.next()?.to_string();
    let epoch = it.next()?.parse().ok()?;
    Some(Event {
        kind,
        unix_ms,
        name,
        epoch,
    })
}
