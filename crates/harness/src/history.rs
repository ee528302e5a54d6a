//! The recorded client history.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum OpKind {
    /// CreateVm with `start` (desired running) or not (desired stopped).
    Create {
        start: bool,
    },
    Delete,
    /// SetVmDesired: the per-VM register write.
    SetDesired {
        running: bool,
    },
    /// GetVm (linearizable read).
    Get,
    /// ListVms (linearizable read over every key).
    List,
}

impl OpKind {
    pub fn is_read(&self) -> bool {
        matches!(self, OpKind::Get | OpKind::List)
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// A write took effect.
    Ok,
    /// Create refused: the VM already exists (a definite answer: nothing changed).
    Exists,
    /// Delete / set-desired refused: no such VM (definite: nothing changed).
    NotFound,
    /// Get: `None` when absent, `Some(running)` when present with that desired state.
    Value { value: Option<bool> },
    /// List: every VM of the key set that is present, with its desired state (running?).
    List { values: BTreeMap<String, bool> },
    /// Timeout, unavailable, connection error, anything else: a write may or may not have taken
    /// effect; a read tells nothing.
    Unknown { error: String },
}

/// One operation, as one JSON line of `history.jsonl`. Times are microseconds since the
/// workload started, on one monotonic clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: usize,
    pub client: usize,
    /// The node (1-based) the request was sent to.
    pub node: usize,
    /// The VM name; `None` for List.
    pub key: Option<String>,
    pub op: OpKind,
    pub invoke_us: u64,
    pub complete_us: u64,
    pub outcome: Outcome,
}
