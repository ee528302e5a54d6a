//! The storage rows of the state: their keys, their encoding, and loading the state back.

use super::{remembered_bytes, Bytes, ClusterState};
use crate::spec::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A row of the persisted state: the unit the store writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RowKey {
    Vm(String),
    Worker(NodeId),
    Request(String),
    /// The cluster-wide scheduler settings.
    Settings,
    Task(String),
    /// The lease settings.
    Liveness,
    /// The current members and every node id ever used.
    NodeIds,
    /// A network without its leases (name, CIDR, VNI, allocation cursor).
    Network(String),
    /// The security records (`crate::tokens`), one row.
    Security,
    /// One address lease: (network, offset). A row each, so a VM create rewrites one small
    /// row, not a network row holding every lease.
    Lease(String, u32),
}

impl RowKey {
    /// Stable textual key for the store.
    pub fn encode(&self) -> String {
        match self {
            RowKey::Vm(n) => format!("vm/{n}"),
            RowKey::Worker(id) => format!("worker/{id:020}"),
            RowKey::Request(id) => format!("req/{id}"),
            RowKey::Settings => SETTINGS_ROW.to_string(),
            RowKey::Task(id) => format!("task/{id}"),
            RowKey::Liveness => LIVENESS_ROW.to_string(),
            RowKey::NodeIds => NODE_IDS_ROW.to_string(),
            RowKey::Network(n) => format!("net/{n}"),
            RowKey::Lease(n, off) => format!("lease/{n}/{off:010}"),
            RowKey::Security => SECURITY_ROW.to_string(),
        }
    }
}

/// Store key of the scheduler settings row.
const SETTINGS_ROW: &str = "settings";
/// Store key of the lease settings row.
const LIVENESS_ROW: &str = "liveness";
/// Store key of the node ids row.
const NODE_IDS_ROW: &str = "node_ids";

/// The cluster's node ids, from the membership entries of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIds {
    /// Voters and learners of the last applied membership.
    pub members: BTreeSet<NodeId>,
    /// Every id that was ever a member: never handed out again.
    pub used: BTreeSet<NodeId>,
}
/// Store key of the security records row.
const SECURITY_ROW: &str = "security";

impl ClusterState {
    /// The serialized value of a row, `None` when the row no longer exists.
    pub fn row(&self, key: &RowKey) -> Option<Vec<u8>> {
        let json = match key {
            RowKey::Vm(n) => self.vms.get(n).map(serde_json::to_vec),
            RowKey::Worker(id) => self.workers.get(id).map(serde_json::to_vec),
            RowKey::Request(id) => self.requests.get(id).map(serde_json::to_vec),
            RowKey::Settings => Some(serde_json::to_vec(&self.settings)),
            RowKey::Task(id) => self.tasks.get(id).map(serde_json::to_vec),
            RowKey::Liveness => Some(serde_json::to_vec(&self.liveness)),
            RowKey::NodeIds => Some(serde_json::to_vec(&self.node_ids)),
            RowKey::Network(n) => self.networks.get(n).map(|n| n.header_json()),
            RowKey::Lease(n, off) => self
                .networks
                .get(n)
                .and_then(|n| n.leases.get(off))
                .map(serde_json::to_vec),
            RowKey::Security => Some(serde_json::to_vec(&self.security)),
        };
        // Serializing these plain data types cannot fail.
        json.and_then(Result::ok)
    }

    /// Every row, for rewriting the store from a snapshot.
    pub fn all_rows(&self) -> Vec<(String, Vec<u8>)> {
        let keys = self
            .vms
            .keys()
            .map(|n| RowKey::Vm(n.clone()))
            .chain(self.workers.keys().map(|id| RowKey::Worker(*id)))
            .chain(self.requests.keys().map(|id| RowKey::Request(id.clone())))
            .chain(self.tasks.keys().map(|id| RowKey::Task(id.clone())))
            .chain(self.networks.keys().map(|n| RowKey::Network(n.clone())))
            .chain(self.networks.values().flat_map(|n| {
                n.leases
                    .keys()
                    .map(|off| RowKey::Lease(n.name.clone(), *off))
            }))
            .chain([
                RowKey::Settings,
                RowKey::Liveness,
                RowKey::NodeIds,
                RowKey::Security,
            ]);
        keys.filter_map(|k| self.row(&k).map(|v| (k.encode(), v)))
            .collect()
    }

    /// Rebuilds the state from stored rows (the inverse of [`Self::all_rows`]).
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self, String> {
        let mut s = ClusterState::default();
        let mut leases = Vec::new();
        // Networks stored by an older version, with their leases inline in the network row.
        let mut inline = Vec::new();
        for (key, value) in rows {
            let bad = |e: serde_json::Error| format!("corrupt row {key}: {e}");
            if let Some(name) = key.strip_prefix("vm/") {
                s.vms.insert(
                    name.to_string(),
                    serde_json::from_slice(value).map_err(bad)?,
                );
            } else if let Some(id) = key.strip_prefix("worker/") {
                let id: NodeId = id.parse().map_err(|_| format!("corrupt row key {key}"))?;
                s.workers
                    .insert(id, serde_json::from_slice(value).map_err(bad)?);
            } else if key == SECURITY_ROW {
                s.security = serde_json::from_slice(value).map_err(bad)?;
            } else if key == SETTINGS_ROW {
                s.settings = serde_json::from_slice(value).map_err(bad)?;
            } else if key == LIVENESS_ROW {
                s.liveness = serde_json::from_slice(value).map_err(bad)?;
            } else if key == NODE_IDS_ROW {
                s.node_ids = serde_json::from_slice(value).map_err(bad)?;
            } else if let Some(id) = key.strip_prefix("task/") {
                s.tasks
                    .insert(id.to_string(), serde_json::from_slice(value).map_err(bad)?);
            } else if let Some(name) = key.strip_prefix("net/") {
                let net: crate::network::Network = serde_json::from_slice(value).map_err(bad)?;
                if !net.leases.is_empty() {
                    inline.push(name.to_string());
                }
                s.networks.insert(name.to_string(), net);
            } else if let Some(rest) = key.strip_prefix("lease/") {
                let corrupt = || format!("corrupt row key {key}");
                let (net, off) = rest.rsplit_once('/').ok_or_else(corrupt)?;
                let off: u32 = off.parse().map_err(|_| corrupt())?;
                let lease: crate::network::Lease = serde_json::from_slice(value).map_err(bad)?;
                leases.push((net.to_string(), off, lease));
            } else if let Some(id) = key.strip_prefix("req/") {
                s.requests
                    .insert(id.to_string(), serde_json::from_slice(value).map_err(bad)?);
            } else {
                return Err(format!("unknown row key {key}"));
            }
        }
        for (net, off, lease) in leases {
            let Some(n) = s.networks.get_mut(&net) else {
                return Err(format!(
                    "corrupt rows: a lease of network {net}, which has no row"
                ));
            };
            n.leases.insert(off, lease);
        }
        s.rebuild_derived();
        // Inline leases move to rows of their own the next time the rows are written
        // (`take_touched`): the network row is rewritten without them at the same time.
        for name in inline {
            if let Some(n) = s.networks.get(&name) {
                s.touched
                    .extend(n.leases.keys().map(|off| RowKey::Lease(name.clone(), *off)));
            }
            s.touched.insert(RowKey::Network(name));
        }
        Ok(s)
    }

    /// Restores the fields that are not serialized.
    pub fn rebuild_derived(&mut self) {
        self.request_order = self
            .requests
            .iter()
            .map(|(id, r)| (r.index, id.clone()))
            .collect();
        self.bytes = Bytes {
            vms: self
                .vms
                .values()
                .map(|v| crate::budget::vm_spec_bytes(&v.spec))
                .sum(),
            tasks: self
                .tasks
                .values()
                .map(|t| crate::budget::task_spec_bytes(&t.spec))
                .sum(),
            requests: self
                .requests
                .iter()
                .map(|(id, r)| remembered_bytes(id, r))
                .sum(),
        };
        self.groups.clear();
        self.by_node.clear();
        self.leaving.clear();
        self.pending.clear();
        let names: Vec<String> = self.vms.keys().cloned().collect();
        for name in names {
            self.index_add(&name);
        }
        self.pending_tasks.clear();
        self.finished_tasks.clear();
        for t in self.tasks.values() {
            if t.state.is_finished() {
                self.finished_tasks
                    .insert((t.finished_index.unwrap_or(0), t.id.clone()));
            } else if t.node_id.is_none() {
                self.pending_tasks.insert((t.submitted_ms, t.id.clone()));
            }
        }
        self.ghosts = crate::network::quarantine_index(&self.networks);
        self.touched.clear();
    }
}
