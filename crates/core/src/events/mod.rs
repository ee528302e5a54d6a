//! Cluster events: what changed, derived from the applied log, kept in a bounded ring.
//!
//! Events are *derived per node from the entries it applies*, not stored in the replicated
//! state. After each log entry the store hands [`EventSource::observe`] the rows that entry
//! touched; the source compares them with its own shadow of the previous values (VM state and
//! placement, node state, task state, settings, members) and emits one [`Event`] per change,
//! stamped with the entry's log index and its proposer's time. Since the state after index I is
//! the same on every node, every node emits the same events with the same indexes; and since
//! nothing here is written to the state, the state digest and snapshots are unaffected and
//! apply costs no extra rows.
//!
//! The price: a node knows only the events of the entries it applied itself. A node that
//! (re)starts or installs a snapshot at index F starts its ring with *floor* F. A client
//! resuming with `since = I`:
//! - `I >= floor`: gets every event with index > I, once (events of one index are delivered
//!   together, so the index is a complete cursor);
//! - `I < floor`: first gets a [`EventKind::Resync`] marker ("too old: resync from the state"),
//!   then the events after the floor.
//!
//! The ring holds at most [`RING_CAPACITY`] events; evicting raises the floor.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::spec::NodeId;
use crate::state::{ClusterState, RowKey};

/// Events kept per node.
pub const RING_CAPACITY: usize = 10_000;

/// VM names kept in the journal of touched VM rows ([`EventSource::vms_touched_since`]). A
/// reader that falls further behind is told to look at every VM instead.
pub const TOUCHED_CAPACITY: usize = 20_000;

/// One event. `index` is the Raft log index of the entry that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    /// The proposer's time of the entry (ms since the Unix epoch); 0 for membership entries.
    pub time_ms: u64,
    /// Who asked for the change (the authenticated client's name) when a client did; absent
    /// for the cluster's own decisions (placements, reports, liveness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened. Serialized with a `"type"` tag; the subject is `vm`, `node` or `task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    VmCreated {
        vm: String,
    },
    VmDeleted {
        vm: String,
    },
    /// The VM's state changed (`reason`: why, when known).
    VmState {
        vm: String,
        from: String,
        to: String,
        reason: Option<String>,
    },
    /// The VM was placed on a node (`placement`: why there).
    VmPlaced {
        vm: String,
        node: NodeId,
        placement: Option<String>,
    },
    /// The VM left its node (drain, move, node down, preemption) and waits for a place.
    VmUnplaced {
        vm: String,
        from_node: NodeId,
        reason: Option<String>,
    },
    /// The VM wants to run / to stay stopped.
    VmDesired {
        vm: String,
        desired: String,
    },
    NodeRegistered {
        node: NodeId,
        addr: String,
    },
    NodeState {
        node: NodeId,
        from: String,
        to: String,
    },
    NodeRemoved {
        node: NodeId,
    },
    /// The Raft membership changed: the voters and learners now.
    Membership {
        members: Vec<NodeId>,
    },
    TaskSubmitted {
        task: String,
    },
    TaskState {
        task: String,
        from: String,
        to: String,
        node: Option<NodeId>,
        reason: Option<String>,
    },
    /// A task finished: its result.
    TaskResult {
        task: String,
        state: String,
        exit_code: Option<i32>,
        reason: Option<String>,
    },
    /// Cluster settings changed (`what`: `scheduler` or `liveness`; `value`: the new settings).
    Settings {
        what: String,
        value: serde_json::Value,
    },
    /// Not a change: the events between the client's `since` and `index` are no longer
    /// kept here (or were never seen by this node). Reload the state, then follow on.
    Resync {
        since: u64,
        message: String,
    },
}

impl EventKind {
    /// The `"type"` tag.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::VmCreated { .. } => "vm_created",
            EventKind::VmDeleted { .. } => "vm_deleted",
            EventKind::VmState { .. } => "vm_state",
            EventKind::VmPlaced { .. } => "vm_placed",
            EventKind::VmUnplaced { .. } => "vm_unplaced",
            EventKind::VmDesired { .. } => "vm_desired",
            EventKind::NodeRegistered { .. } => "node_registered",
            EventKind::NodeState { .. } => "node_state",
            EventKind::NodeRemoved { .. } => "node_removed",
            EventKind::Membership { .. } => "membership",
            EventKind::TaskSubmitted { .. } => "task_submitted",
            EventKind::TaskState { .. } => "task_state",
            EventKind::TaskResult { .. } => "task_result",
            EventKind::Settings { .. } => "settings",
            EventKind::Resync { .. } => "resync",
        }
    }
}

impl Event {
    /// A one-line human rendering (the CLI's table form).
    pub fn summary(&self) -> String {
        let opt = |r: &Option<String>| r.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
        match &self.kind {
            EventKind::VmCreated { vm } => format!("vm {vm} created"),
            EventKind::VmDeleted { vm } => format!("vm {vm} deleted"),
            EventKind::VmState {
                vm,
                from,
                to,
                reason,
            } => format!("vm {vm}: {from} -> {to}{}", opt(reason)),
            EventKind::VmPlaced {
                vm,
                node,
                placement,
            } => format!("vm {vm} placed on node {node}{}", opt(placement)),
            EventKind::VmUnplaced {
                vm,
                from_node,
                reason,
            } => {
                format!("vm {vm} left node {from_node}{}", opt(reason))
            }
            EventKind::VmDesired { vm, desired } => format!("vm {vm} desired {desired}"),
            EventKind::NodeRegistered { node, addr } => format!("node {node} registered at {addr}"),
            EventKind::NodeState { node, from, to } => format!("node {node}: {from} -> {to}"),
            EventKind::NodeRemoved { node } => format!("node {node} removed"),
            EventKind::Membership { members } => format!("members now {members:?}"),
            EventKind::TaskSubmitted { task } => format!("task {task} submitted"),
            EventKind::TaskState {
                task,
                from,
                to,
                node,
                reason,
            } => format!(
                "task {task}: {from} -> {to}{}{}",
                node.map(|n| format!(" on node {n}")).unwrap_or_default(),
                opt(reason)
            ),
            EventKind::TaskResult {
                task,
                state,
                exit_code,
                reason,
            } => format!(
                "task {task} {state}{}{}",
                exit_code.map(|c| format!(" exit {c}")).unwrap_or_default(),
                opt(reason)
            ),
            EventKind::Settings { what, value } => format!("{what} settings now {value}"),
            EventKind::Resync { since, message } => {
                format!("resync (asked since {since}): {message}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct VmShadow {
    state: String,
    desired: String,
    node: Option<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TaskShadow {
    state: String,
    node: Option<NodeId>,
}

/// The previous values of what events report, and the ring. Deterministic: its output is a
/// function of the sequence of states it observes.
#[derive(Debug, Clone, Default)]
pub struct EventSource {
    vms: BTreeMap<String, VmShadow>,
    nodes: BTreeMap<NodeId, String>,
    tasks: BTreeMap<String, TaskShadow>,
    settings: Option<serde_json::Value>,
    liveness: Option<serde_json::Value>,
    members: BTreeSet<NodeId>,
    ring: VecDeque<Event>,
    /// Every event with an index above this one is in the ring (if it was emitted at all).
    floor: u64,
    /// Events emitted since this source was created, by type (for metrics).
    counts: BTreeMap<&'static str, u64>,
    /// (index, VM name) for every VM row an entry touched, whether or not it made an event:
    /// what changed for the executor, which re-plans only those VMs.
    touched_vms: VecDeque<(u64, String)>,
    /// Every VM row touched by an entry above this index is in `touched_vms`.
    touched_floor: u64,
}

impl EventSource {
    /// Starts from `state`, applied up to `floor`: nothing before it is known as events.
    pub fn new(state: &ClusterState, floor: u64) -> Self {
        let mut s = EventSource {
            floor,
            ..Default::default()
        };
        s.reset(state, floor);
        s
    }

    /// Forgets the ring and takes `state` (e.g. an installed snapshot) as the new baseline.
    pub fn reset(&mut self, state: &ClusterState, floor: u64) {
        self.vms = state
            .vms
            .iter()
            .map(|(n, v)| (n.clone(), vm_shadow(v)))
            .collect();
        self.nodes = state
            .workers
            .iter()
            .map(|(id, w)| (*id, w.state.as_str().to_string()))
            .collect();
        self.tasks = state
            .tasks
            .iter()
            .map(|(id, t)| (id.clone(), task_shadow(t)))
            .collect();
        self.settings = serde_json::to_value(state.settings).ok();
        self.liveness = serde_json::to_value(state.liveness).ok();
        self.members = state.node_ids.members.clone();
        self.ring.clear();
        self.floor = floor;
        self.touched_vms.clear();
        self.touched_floor = floor;
    }

    /// Events emitted since this source was created, by type.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    /// The index below which events are not known here.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Compares the rows entry `index` touched with the previous values, records the changes
    /// as events and returns how many were added.
    pub fn observe(
        &mut self,
        index: u64,
        time_ms: u64,
        state: &ClusterState,
        touched: &BTreeSet<RowKey>,
    ) -> usize {
        self.observe_by(index, time_ms, None, state, touched)
    }

    /// [`Self::observe`] for an entry a client asked for: its events carry `caller`.
    pub fn observe_by(
        &mut self,
        index: u64,
        time_ms: u64,
        caller: Option<&str>,
        state: &ClusterState,
        touched: &BTreeSet<RowKey>,
    ) -> usize {
        let mut out = Vec::new();
        for key in touched {
            match key {
                RowKey::Vm(name) => {
                    self.touched_vms.push_back((index, name.clone()));
                    self.diff_vm(name, state, &mut out)
                }
                RowKey::Worker(id) => self.diff_node(*id, state, &mut out),
                RowKey::Task(id) => self.diff_task(id, state, &mut out),
                RowKey::Settings => {
                    let v = serde_json::to_value(state.settings).ok();
                    if v != self.settings {
                        if let Some(value) = v.clone() {
                            out.push(EventKind::Settings {
                                what: "scheduler".into(),
                                value,
                            });
                        }
                        self.settings = v;
                    }
                }
                RowKey::Liveness => {
                    let v = serde_json::to_value(state.liveness).ok();
                    if v != self.liveness {
                        if let Some(value) = v.clone() {
                            out.push(EventKind::Settings {
                                what: "liveness".into(),
                                value,
                            });
                        }
                        self.liveness = v;
                    }
                }
                // Networks change with VMs (whose events carry them), security records are not
                // for every viewer: no event of their own.
                RowKey::Network(_) | RowKey::Lease(..) | RowKey::Security => {}
                RowKey::NodeIds => {
                    if state.node_ids.members != self.members {
                        self.members = state.node_ids.members.clone();
                        out.push(EventKind::Membership {
                            members: self.members.iter().copied().collect(),
                        });
                    }
                }
                RowKey::Request(_) => {}
            }
        }
        let n = out.len();
        for kind in out {
            *self.counts.entry(kind.type_name()).or_default() += 1;
            self.ring.push_back(Event {
                index,
                time_ms,
                caller: caller.map(str::to_string),
                kind,
            });
        }
        while self.ring.len() > RING_CAPACITY {
            if let Some(e) = self.ring.pop_front() {
                self.floor = self.floor.max(e.index);
            }
        }
        // Drop the rest of a partly evicted index: an index is delivered whole or not at all.
        while self.ring.front().is_some_and(|e| e.index <= self.floor) {
            self.ring.pop_front();
        }
        while self.touched_vms.len() > TOUCHED_CAPACITY {
            if let Some((i, _)) = self.touched_vms.pop_front() {
                self.touched_floor = self.touched_floor.max(i);
            }
        }
        while self
            .touched_vms
            .front()
            .is_some_and(|(i, _)| *i <= self.touched_floor)
        {
            self.touched_vms.pop_front();
        }
        n
    }

    /// The names of the VMs whose rows the entries after index `since` touched (created,
    /// changed or deleted), or `None` when that is no longer known here (`since` is below what
    /// the journal keeps: after a restart, a snapshot install, or more than
    /// [`TOUCHED_CAPACITY`] touches since): the caller must then look at every VM.
    pub fn vms_touched_since(&self, since: u64) -> Option<BTreeSet<String>> {
        if since < self.touched_floor {
            return None;
        }
        let start = self.touched_vms.partition_point(|(i, _)| *i <= since);
        Some(
            self.touched_vms
                .range(start..)
                .map(|(_, n)| n.clone())
                .collect(),
        )
    }

    /// The events after `since`, about `max` of them but always whole indexes, with a
    /// [`EventKind::Resync`] marker first when `since` is below the floor. Returns the events
    /// and the cursor to resume from.
    pub fn since(&self, since: u64, max: usize) -> (Vec<Event>, u64) {
        let mut out = Vec::new();
        let mut cursor = since;
        if since < self.floor {
            out.push(Event {
                index: self.floor,
                time_ms: 0,
                caller: None,
                kind: EventKind::Resync {
                    since,
                    message: format!(
                        "events after {since} up to {} are no longer kept on this node: reload the state, then follow from {}",
                        self.floor, self.floor
                    ),
                },
            });
            cursor = self.floor;
        }
        let start = self.ring.partition_point(|e| e.index <= cursor);
        let mut last = None;
        for e in self.ring.iter().skip(start) {
            if out.len() >= max && last != Some(e.index) {
                break;
            }
            last = Some(e.index);
            out.push(e.clone());
        }
        if let Some(l) = last {
            cursor = l;
        }
        (out, cursor)
    }

    fn diff_vm(&mut self, name: &str, state: &ClusterState, out: &mut Vec<EventKind>) {
        let vm = name.to_string();
        let Some(now) = state.vms.get(name) else {
            if self.vms.remove(name).is_some() {
                out.push(EventKind::VmDeleted { vm });
            }
            return;
        };
        let new = vm_shadow(now);
        let old = self.vms.insert(vm.clone(), new.clone());
        let Some(old) = old else {
            out.push(EventKind::VmCreated { vm: vm.clone() });
            if let Some(node) = new.node {
                out.push(EventKind::VmPlaced {
                    vm: vm.clone(),
                    node,
                    placement: now.placement.clone(),
                });
            } else if now.reason.is_some() {
                out.push(EventKind::VmState {
                    vm,
                    from: "pending".into(),
                    to: new.state,
                    reason: now.reason.clone(),
                });
            }
            return;
        };
        if old.desired != new.desired {
            out.push(EventKind::VmDesired {
                vm: vm.clone(),
                desired: new.desired.clone(),
            });
        }
        if old.node != new.node {
            if let Some(from_node) = old.node {
                out.push(EventKind::VmUnplaced {
                    vm: vm.clone(),
                    from_node,
                    reason: now.reason.clone(),
                });
            }
            if let Some(node) = new.node {
                out.push(EventKind::VmPlaced {
                    vm: vm.clone(),
                    node,
                    placement: now.placement.clone(),
                });
            }
        }
        if old.state != new.state {
            out.push(EventKind::VmState {
                vm,
                from: old.state,
                to: new.state,
                reason: now.reason.clone(),
            });
        }
    }

    fn diff_node(&mut self, id: NodeId, state: &ClusterState, out: &mut Vec<EventKind>) {
        match (state.workers.get(&id), self.nodes.get(&id).cloned()) {
            (None, Some(_)) => {
                self.nodes.remove(&id);
                out.push(EventKind::NodeRemoved { node: id });
            }
            (Some(w), None) => {
                self.nodes.insert(id, w.state.as_str().to_string());
                out.push(EventKind::NodeRegistered {
                    node: id,
                    addr: w.addr.clone(),
                });
            }
            (Some(w), Some(old)) if old != w.state.as_str() => {
                self.nodes.insert(id, w.state.as_str().to_string());
                out.push(EventKind::NodeState {
                    node: id,
                    from: old,
                    to: w.state.as_str().to_string(),
                });
            }
            _ => {}
        }
    }

    fn diff_task(&mut self, id: &str, state: &ClusterState, out: &mut Vec<EventKind>) {
        let task = id.to_string();
        let Some(t) = state.tasks.get(id) else {
            // Evicted by retention: not a change anyone acted on.
            self.tasks.remove(id);
            return;
        };
        let new = task_shadow(t);
        let old = self.tasks.insert(task.clone(), new.clone());
        let (from, old_node) = match old {
            None => {
                out.push(EventKind::TaskSubmitted { task: task.clone() });
                ("pending".to_string(), None)
            }
            Some(o) => (o.state, o.node),
        };
        if from != new.state || old_node != new.node {
            if t.state.is_finished() {
                out.push(EventKind::TaskResult {
                    task,
                    state: new.state,
                    exit_code: t.exit_code,
                    reason: t.reason.clone(),
                });
            } else {
                out.push(EventKind::TaskState {
                    task,
                    from,
                    to: new.state,
                    node: new.node,
                    reason: t.reason.clone(),
                });
            }
        }
    }
}

fn vm_shadow(v: &crate::state::VmRecord) -> VmShadow {
    VmShadow {
        state: v.state.as_str().to_string(),
        desired: v.desired.as_str().to_string(),
        node: v.node_id,
    }
}

fn task_shadow(t: &crate::task::TaskRecord) -> TaskShadow {
    TaskShadow {
        state: t.state.as_str().to_string(),
        node: t.node_id,
    }
}

#[cfg(test)]
mod tests;
