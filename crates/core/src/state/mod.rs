//! The replicated state and the one function that changes it: [`ClusterState::apply`].
//!
//! Every node applies the same log to this type and must reach the same state bit for bit, so
//! `apply` reads nothing but its arguments: the log index (which becomes a placement's epoch)
//! and the request (whose proposer stamped the time). Maps are `BTreeMap`s so iteration, and
//! hence placement and serialization, is ordered the same everywhere.
//!
//! The storage layer persists the state as rows (one per VM, worker and remembered request):
//! `apply` records which rows it touched in [`ClusterState::take_touched`], so the store writes
//! only those rows, in the same transaction that records the applied log id.

use crate::command::{Outcome, Request};
use crate::liveness::LivenessSettings;
use crate::network::Network;
use crate::scheduler::SchedulerSettings;
use crate::spec::{self, NodeId};
use crate::task::TaskRecord;
use index::PendingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

mod apply;
mod create;
mod index;
mod invariants;
mod rows;
mod tasks;
mod vms;

pub use crate::model::{Desired, NodeState, VmRecord, VmState, Worker};
pub use create::explain;
pub use rows::{NodeIds, RowKey};

/// How many client request ids are remembered for de-duplication. Older ones are forgotten in
/// log order, so a retry arriving after this many newer requests is applied again.
pub const DEDUP_WINDOW: usize = 10_000;

/// A remembered request outcome, for de-duplicating retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub index: u64,
    pub outcome: Outcome,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub workers: BTreeMap<NodeId, Worker>,
    pub vms: BTreeMap<String, VmRecord>,
    /// Outcomes of recent client requests, by request id.
    pub requests: BTreeMap<String, Remembered>,
    /// Cluster-wide scheduler settings (strategy, vCPU overcommit).
    #[serde(default)]
    pub settings: SchedulerSettings,
    /// One-shot tasks: active ones and the most recent finished ones.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskRecord>,
    /// Lease, grace and heartbeat: the numbers fencing and failure detection use.
    #[serde(default)]
    pub liveness: LivenessSettings,
    /// Members and used ids (kept from the membership entries, see [`Self::note_membership`]).
    #[serde(default)]
    pub node_ids: NodeIds,
    /// Networks and their address leases (see [`crate::network`]).
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Join tokens and revoked node identities (`crate::tokens`).
    #[serde(default)]
    pub security: crate::tokens::SecurityState,
    /// Rows changed since the last `take_touched`; not part of the state.
    #[serde(skip)]
    pub(crate) touched: BTreeSet<RowKey>,
    /// `requests` ordered by log index, for eviction; derived, rebuilt on load.
    #[serde(skip)]
    request_order: BTreeMap<u64, String>,
    /// Anti-affinity group -> node -> the group's VM there; derived, rebuilt on load.
    #[serde(skip)]
    groups: BTreeMap<String, BTreeMap<NodeId, String>>,
    /// Node -> (priority, name) of the VMs placed there; derived, rebuilt on load.
    #[serde(skip)]
    by_node: BTreeMap<NodeId, BTreeSet<(u8, String)>>,
    /// Unplaced VMs in the order `place_pending` tries them; derived, rebuilt on load.
    #[serde(skip)]
    pending: BTreeSet<PendingKey>,
    /// Node -> the VMs leaving it (placed there and evacuating); derived, rebuilt on load.
    /// The executor reads it to hold back a preemptor while its victims still stop there.
    #[serde(skip)]
    leaving: BTreeMap<NodeId, BTreeSet<String>>,
    /// Unassigned active tasks as (submitted_ms, id), in the order they are placed; derived.
    #[serde(skip)]
    pending_tasks: BTreeSet<(u64, String)>,
    /// Finished tasks as (finishing log index, id), oldest first, for retention; derived.
    #[serde(skip)]
    finished_tasks: BTreeSet<(u64, String)>,
    /// Bytes of all VM specs, task specs and remembered outcomes (see `budget`); derived.
    #[serde(skip)]
    bytes: Bytes,
    /// Deleted VM name -> (network, offset) -> node, for every quarantined address: the
    /// placements that may still run (`ghost_of`, asked by every `CreateVm`); derived.
    #[serde(skip)]
    pub(crate) ghosts: BTreeMap<String, BTreeMap<(String, u32), NodeId>>,
}

fn ghost_reason(name: &str, node: NodeId) -> String {
    format!("waiting for the deleted VM '{name}' to stop on node {node}")
}

/// Sizes tracked against the byte budgets ([`crate::budget`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bytes {
    vms: usize,
    tasks: usize,
    requests: usize,
}

fn remembered_bytes(id: &str, r: &Remembered) -> usize {
    id.len() + serde_json::to_vec(r).map_or(0, |v| v.len())
}

impl ClusterState {
    /// Applies one committed request at log `index`. Deterministic; a refused request changes
    /// nothing (except remembering its outcome for de-duplication).
    ///
    /// This form is for tools and tests: the entry's term is taken to be 0. The store calls
    /// [`Self::apply_at`] with the log entry's own term.
    pub fn apply(&mut self, index: u64, req: &Request) -> Outcome {
        self.apply_at(0, index, req)
    }

    /// Applies one committed request whose log id is (`term`, `index`). Leader-only verdicts
    /// (liveness, worker removal) carry the term of the leader that decided them; they are
    /// refused unless it equals `term`, so a deposed leader's verdict can never take effect.
    pub fn apply_at(&mut self, term: u64, index: u64, req: &Request) -> Outcome {
        if let Some(id) = &req.request_id {
            if let Some(seen) = self.requests.get(id) {
                return seen.outcome.clone();
            }
        }
        let mut outcome = self.apply_command(term, index, req.time_ms, &req.command);
        if let Ok(reply) = &mut outcome {
            self.stamp_creator(req, reply);
        }
        #[cfg(debug_assertions)]
        if let Err(e) = self.check_invariants() {
            panic!(
                "invariant broken by {} at index {index}: {e}",
                req.command.kind()
            );
        }
        if outcome.is_ok() && !self.pending_tasks.is_empty() {
            // Any change may have made room (or a node) for waiting tasks.
            self.place_pending_tasks(index, req.time_ms);
        }
        if let Some(id) = &req.request_id {
            if id.len() <= spec::MAX_REQUEST_ID_LEN {
                self.remember(id.clone(), index, outcome.clone());
            }
        }
        outcome
    }

    fn remember(&mut self, id: String, index: u64, outcome: Outcome) {
        self.request_order.insert(index, id.clone());
        self.touched.insert(RowKey::Request(id.clone()));
        let r = Remembered { index, outcome };
        self.bytes.requests += remembered_bytes(&id, &r);
        if let Some(old) = self.requests.insert(id.clone(), r) {
            self.bytes.requests = self
                .bytes
                .requests
                .saturating_sub(remembered_bytes(&id, &old));
        }
        // The oldest are forgotten first: beyond the count window or the byte budget.
        while self.requests.len() > DEDUP_WINDOW
            || self.bytes.requests > crate::budget::MAX_DEDUP_BYTES
        {
            let Some((_, oldest)) = self.request_order.pop_first() else {
                break;
            };
            if let Some(old) = self.requests.remove(&oldest) {
                self.bytes.requests = self
                    .bytes
                    .requests
                    .saturating_sub(remembered_bytes(&oldest, &old));
            }
            self.touched.insert(RowKey::Request(oldest));
        }
    }

    /// Records a membership entry of the log (voters and learners): the members, and their ids
    /// as used forever. Called by the store in log order, so it is as deterministic as `apply`.
    pub fn note_membership(&mut self, ids: impl IntoIterator<Item = NodeId>) {
        let members: BTreeSet<NodeId> = ids.into_iter().collect();
        self.node_ids.used.extend(members.iter().copied());
        self.node_ids.members = members;
        self.touched.insert(RowKey::NodeIds);
    }

    /// Whether a join of node `id` must be refused: the id belonged to a member that is gone.
    pub fn id_was_used(&self, id: NodeId) -> bool {
        self.node_ids.used.contains(&id) && !self.node_ids.members.contains(&id)
    }

    /// The rows changed since the last call.
    pub fn take_touched(&mut self) -> BTreeSet<RowKey> {
        std::mem::take(&mut self.touched)
    }

    /// A digest of the whole state; equal on every node at the same applied index.
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}
