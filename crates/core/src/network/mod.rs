//! Networks and address allocation: replicated objects, changed only inside `apply`.
//!
//! A [`Network`] is a private IPv4 CIDR with a VXLAN network identifier (VNI). Every address
//! in it is held by at most one [`Lease`]:
//!
//! - a VM's address, allocated when the VM is created (`CreateVm`) and kept for the VM's whole
//!   life: restarts, moves, drains and reschedules change its node, never its address;
//! - a node's address (one per network and worker, allocated at registration or when the
//!   network is created): the node puts it on its bridge, so the host reaches its VMs;
//! - a *quarantined* address: the VM holding it was deleted while placed on a node, which may
//!   still run it for a moment. The address is not handed out again until that node confirms
//!   the VM of that placement epoch no longer runs there (`ReleaseAddresses`, proposed by its
//!   executor), or the node is fenced (marked down, or removed). So two live VMs never share an
//!   address, even while a delete is being carried out.
//!
//! Allocation walks the pool from a per-network cursor (the next offset after the last one
//! handed out, wrapping around), so a freed address is the last to be reused: ARP caches and
//! clients holding the old holder's address have the longest time to forget it. The cursor is
//! part of the state, so allocation is deterministic on every node.
//!
//! The network `default` is created from the `--network-cidr` of the node that ran `--init`
//! ([`Command::EnsureDefaultNetwork`]); a VM created without `--network` gets an address from
//! it when it exists (and none otherwise: clusters that predate networks, core tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::command::{ApplyError, Command, Outcome, Reply};
use crate::spec::{self, NodeId};
use crate::state::{ClusterState, RowKey};

mod cidr;
pub use cidr::Cidr;

/// The network VMs join when they name none.
pub const DEFAULT_NETWORK: &str = "default";
/// The default network's CIDR unless `--network-cidr` says otherwise at `--init`.
pub const DEFAULT_CIDR: &str = "10.88.0.0/16";
/// Most networks a cluster holds.
pub const MAX_NETWORKS: usize = 256;
/// Shortest accepted prefix (largest network).
pub const MIN_PREFIX: u8 = 8;
/// Longest accepted prefix (smallest network: 6 usable addresses).
pub const MAX_PREFIX: u8 = 29;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The address ranges networks may use: RFC 1918 and the shared (CGNAT) range.
const PRIVATE: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
];

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lease {
    /// The address of a VM, for its whole life.
    Vm { name: String },
    /// The address of a node's bridge on this network.
    Node { id: NodeId },
    /// The address of a deleted VM whose last placement (on `node`, with `epoch`) may still
    /// run; free again once the node confirms it stopped, or is fenced.
    Quarantined {
        name: String,
        node: NodeId,
        epoch: u64,
    },
}

/// A replicated network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub cidr: Cidr,
    /// VXLAN network identifier joining the nodes' bridges of this network; unique.
    pub vni: u32,
    /// Address offset from the base -> holder. Stored as a row each (`RowKey::Lease`); the
    /// network's own row leaves them out (`#[serde(default)]` reads those rows).
    #[serde(default)]
    pub leases: BTreeMap<u32, Lease>,
    /// Where the next allocation starts looking.
    pub cursor: u32,
    pub created_ms: u64,
}

/// The network's row: everything but the leases, which have rows of their own.
#[derive(Serialize)]
struct NetworkHeader<'a> {
    name: &'a str,
    cidr: Cidr,
    vni: u32,
    cursor: u32,
    created_ms: u64,
}

/// Deleted VM name -> (network, offset) -> node, for every quarantined lease of `networks`.
pub(crate) fn quarantine_index(
    networks: &BTreeMap<String, Network>,
) -> BTreeMap<String, BTreeMap<(String, u32), NodeId>> {
    let mut index: BTreeMap<String, BTreeMap<(String, u32), NodeId>> = BTreeMap::new();
    for (net, n) in networks {
        for (off, l) in &n.leases {
            if let Lease::Quarantined { name, node, .. } = l {
                index
                    .entry(name.clone())
                    .or_default()
                    .insert((net.clone(), *off), *node);
            }
        }
    }
    index
}

impl Network {
    /// The network's stored row: the network without its leases (a row each).
    pub(crate) fn header_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&NetworkHeader {
            name: &self.name,
            cidr: self.cidr,
            vni: self.vni,
            cursor: self.cursor,
            created_ms: self.created_ms,
        })
    }

    /// Number of VMs holding an address here.
    pub fn vm_count(&self) -> usize {
        self.leases
            .values()
            .filter(|l| matches!(l, Lease::Vm { .. }))
            .count()
    }

    /// Node `id`'s address on this network.
    pub fn node_address(&self, id: NodeId) -> Option<Ipv4Addr> {
        self.leases
            .iter()
            .find(|(_, l)| **l == Lease::Node { id })
            .map(|(off, _)| self.cidr.at(*off))
    }

    /// The address of every node, by node.
    pub fn node_addresses(&self) -> BTreeMap<NodeId, Ipv4Addr> {
        self.leases
            .iter()
            .filter_map(|(off, l)| match l {
                Lease::Node { id } => Some((*id, self.cidr.at(*off))),
                _ => None,
            })
            .collect()
    }

    /// The lowest free offset at or after the cursor, wrapping around; `None` when full.
    fn next_free(&self) -> Option<u32> {
        let last = self.cidr.last_host();
        let start = self.cursor.clamp(1, last);
        let scan = |from: u32, to: u32| -> Option<u32> {
            let mut candidate = from;
            for off in self.leases.range(from..=to).map(|(o, _)| *o) {
                if off != candidate {
                    return Some(candidate);
                }
                candidate += 1;
            }
            (candidate <= to).then_some(candidate)
        };
        scan(start, last).or_else(|| if start > 1 { scan(1, start - 1) } else { None })
    }

    /// Takes the next free address for `lease`; returns its offset.
    fn allocate(&mut self, lease: Lease) -> Result<u32, ApplyError> {
        let off = self.free_offset(None)?;
        self.take(off, lease);
        Ok(off)
    }

    /// The offset a new lease would get: `ip` if it is a free host address of this network,
    /// else (no `ip`) the next free one. Changes nothing; the one check behind `allocate`, the
    /// address step of `CreateVm` and its dry run.
    pub(crate) fn free_offset(&self, ip: Option<Ipv4Addr>) -> Result<u32, ApplyError> {
        let Some(ip) = ip else {
            return self.next_free().ok_or_else(|| {
                ApplyError::NoCapacity(format!(
                    "network '{}' ({}) has no free address: all {} are in use (delete VMs or create a larger network)",
                    self.name,
                    self.cidr,
                    self.cidr.last_host()
                ))
            });
        };
        let Some(off) = self.cidr.host_offset(ip) else {
            let why = if self.cidr.contains(ip) {
                "is the network or broadcast address of"
            } else {
                "is outside"
            };
            return Err(ApplyError::invalid(format!(
                "address {ip} {why} network '{}' ({})",
                self.name, self.cidr
            )));
        };
        if let Some(held) = self.leases.get(&off) {
            let by = match held {
                Lease::Vm { name } => format!("VM '{name}'"),
                Lease::Node { id } => format!("node {id} (its bridge)"),
                Lease::Quarantined { name, node, .. } => {
                    format!("deleted VM '{name}' until node {node} confirms it stopped")
                }
            };
            return Err(ApplyError::invalid(format!(
                "address {ip} on network '{}' is taken by {by}",
                self.name
            )));
        }
        Ok(off)
    }

    /// Records `lease` at the free offset `off` and moves the allocation cursor past it.
    pub(crate) fn take(&mut self, off: u32, lease: Lease) {
        self.leases.insert(off, lease);
        self.cursor = if off >= self.cidr.last_host() {
            1
        } else {
            off + 1
        };
    }
}

/// Checks a network name (same rules as VM names).
pub fn validate_network_name(name: &str) -> Result<(), ApplyError> {
    spec::validate_name(name).map_err(|_| {
        ApplyError::invalid(format!(
            "invalid network name '{}': use 1 to {} characters of a-z, 0-9 and '-', starting with a letter or digit",
            spec::truncate_for_message(name),
            spec::MAX_NAME_LEN
        ))
    })
}

fn parse_cidr(cidr: &str) -> Result<Cidr, ApplyError> {
    cidr.parse().map_err(ApplyError::Invalid)
}

impl ClusterState {
    /// Applies the network commands (called from `apply_command`).
    pub(crate) fn apply_network_command(&mut self, now: u64, cmd: &Command) -> Outcome {
        match cmd {
            Command::CreateNetwork { name, cidr } => self.create_network(now, name, cidr),
            Command::EnsureDefaultNetwork { cidr } => {
                if let Some(n) = self.networks.get(DEFAULT_NETWORK) {
                    return Ok(Reply::Network(Box::new(n.clone())));
                }
                self.create_network(now, DEFAULT_NETWORK, cidr)
            }
            Command::DeleteNetwork { name } => {
                let Some(n) = self.networks.get(name) else {
                    return Err(ApplyError::not_found("network", name));
                };
                if name == DEFAULT_NETWORK {
                    return Err(ApplyError::invalid(format!(
                        "the '{DEFAULT_NETWORK}' network cannot be deleted (VMs without --network use it)"
                    )));
                }
                let users: Vec<&str> = n
                    .leases
                    .values()
                    .filter_map(|l| match l {
                        Lease::Vm { name } | Lease::Quarantined { name, .. } => Some(name.as_str()),
                        Lease::Node { .. } => None,
                    })
                    .collect();
                if !users.is_empty() {
                    let shown: Vec<&str> = users.iter().take(5).copied().collect();
                    return Err(ApplyError::invalid(format!(
                        "network '{name}' is in use by {} VM(s) ({}{}): delete them first",
                        users.len(),
                        shown.join(", "),
                        if users.len() > shown.len() {
                            ", ..."
                        } else {
                            ""
                        }
                    )));
                }
                let offs: Vec<u32> = n.leases.keys().copied().collect();
                self.networks.remove(name);
                self.touched.insert(RowKey::Network(name.clone()));
                self.touched
                    .extend(offs.into_iter().map(|off| RowKey::Lease(name.clone(), off)));
                Ok(Reply::Done)
            }
            Command::ReleaseAddresses { node_id, vms } => {
                let wanted: BTreeSet<(&str, u64)> =
                    vms.iter().map(|(n, e)| (n.as_str(), *e)).collect();
                self.release_quarantined(|name, node, epoch| {
                    node == *node_id && wanted.contains(&(name, epoch))
                });
                Ok(Reply::Done)
            }
            _ => Err(ApplyError::invalid(format!(
                "{} is not a network command",
                cmd.kind()
            ))),
        }
    }

    fn create_network(&mut self, now: u64, name: &str, cidr: &str) -> Outcome {
        validate_network_name(name)?;
        let cidr = parse_cidr(cidr)?;
        if self.networks.contains_key(name) {
            return Err(ApplyError::AlreadyExists {
                what: "network".into(),
                name: name.to_string(),
            });
        }
        if self.networks.len() >= MAX_NETWORKS {
            return Err(ApplyError::LimitReached(format!(
                "the cluster already holds {MAX_NETWORKS} networks"
            )));
        }
        if let Some(other) = self.networks.values().find(|n| n.cidr.overlaps(&cidr)) {
            return Err(ApplyError::invalid(format!(
                "CIDR {cidr} overlaps network '{}' ({}): choose a disjoint range",
                other.name, other.cidr
            )));
        }
        let used: BTreeSet<u32> = self.networks.values().map(|n| n.vni).collect();
        let Some(vni) = (1..=MAX_VNI).find(|v| !used.contains(v)) else {
            return Err(ApplyError::LimitReached(
                "no free VXLAN network identifier".into(),
            ));
        };
        let mut net = Network {
            name: name.to_string(),
            cidr,
            vni,
            leases: BTreeMap::new(),
            cursor: 1,
            created_ms: now,
        };
        if (self.workers.len() as u64) > u64::from(cidr.last_host()) {
            return Err(ApplyError::invalid(format!(
                "CIDR {cidr} has {} addresses, fewer than the cluster's {} nodes need: use a larger network",
                cidr.last_host(),
                self.workers.len()
            )));
        }
        for id in self.workers.keys() {
            net.allocate(Lease::Node { id: *id })?;
        }
        self.touched.insert(RowKey::Network(name.to_string()));
        self.touched.extend(
            net.leases
                .keys()
                .map(|off| RowKey::Lease(name.to_string(), *off)),
        );
        self.networks.insert(name.to_string(), net.clone());
        Ok(Reply::Network(Box::new(net)))
    }

    /// VM `name` (holding `ip` on `network`) was deleted. Its last placement, if any, may still
    /// run on `node` with `epoch`: quarantine the address until that is known to be over.
    pub(crate) fn release_vm_address(
        &mut self,
        network: &str,
        ip: Ipv4Addr,
        name: &str,
        placed: Option<(NodeId, u64)>,
    ) {
        let Some(net) = self.networks.get_mut(network) else {
            return;
        };
        let Some(off) = net.cidr.host_offset(ip) else {
            return;
        };
        if net.leases.get(&off)
            != Some(&Lease::Vm {
                name: name.to_string(),
            })
        {
            return;
        }
        match placed {
            Some((node, epoch)) => {
                net.leases.insert(
                    off,
                    Lease::Quarantined {
                        name: name.to_string(),
                        node,
                        epoch,
                    },
                );
                self.ghosts
                    .entry(name.to_string())
                    .or_default()
                    .insert((network.to_string(), off), node);
            }
            None => {
                net.leases.remove(&off);
            }
        }
        self.touched.insert(RowKey::Lease(network.to_string(), off));
    }

    /// Frees the quarantined addresses `pred(name, node, epoch)` accepts.
    /// Found through the quarantine index: O(quarantined leases), not O(all leases).
    pub(crate) fn release_quarantined(&mut self, pred: impl Fn(&str, NodeId, u64) -> bool) {
        let mut freed: Vec<(String, String, u32)> = Vec::new();
        for (name, at) in &self.ghosts {
            for (net_name, off) in at.keys() {
                let lease = self.networks.get(net_name).and_then(|n| n.leases.get(off));
                if let Some(Lease::Quarantined { node, epoch, .. }) = lease {
                    if pred(name, *node, *epoch) {
                        freed.push((name.clone(), net_name.clone(), *off));
                    }
                }
            }
        }
        for (name, net_name, off) in freed {
            if let Some(n) = self.networks.get_mut(&net_name) {
                n.leases.remove(&off);
            }
            if let Some(at) = self.ghosts.get_mut(&name) {
                at.remove(&(net_name.clone(), off));
                if at.is_empty() {
                    self.ghosts.remove(&name);
                }
            }
            self.touched.insert(RowKey::Lease(net_name, off));
        }
    }

    /// Node `id` can no longer run anything (down and fenced, or removed): what it may have
    /// been running is over.
    pub(crate) fn node_fenced(&mut self, id: NodeId) {
        self.release_quarantined(|_, node, _| node == id);
    }

    /// Node `id` left: it gives back its bridge addresses (and its quarantines end).
    pub(crate) fn node_removed(&mut self, id: NodeId) {
        self.node_fenced(id);
        for (net_name, net) in self.networks.iter_mut() {
            net.leases.retain(|off, l| {
                let keep = *l != Lease::Node { id };
                if !keep {
                    self.touched.insert(RowKey::Lease(net_name.clone(), *off));
                }
                keep
            });
        }
    }

    /// Node `id` registered: it gets an address on every network that lacks one for it. A
    /// full network leaves it without (logged by the node, which then cannot bridge it).
    pub(crate) fn node_registered(&mut self, id: NodeId) {
        for (net_name, net) in self.networks.iter_mut() {
            if net.node_address(id).is_none() {
                if let Ok(off) = net.allocate(Lease::Node { id }) {
                    self.touched.insert(RowKey::Network(net_name.clone()));
                    self.touched.insert(RowKey::Lease(net_name.clone(), off));
                }
            }
        }
    }

    /// The invariants of networks: every VM with an address holds exactly that lease, every
    /// VM lease belongs to an existing VM with that address, node leases belong to workers
    /// (one per network), leases lie inside their pool, VNIs and CIDRs are disjoint.
    pub(crate) fn check_network_invariants(&self) -> Result<(), String> {
        let mut vnis = BTreeSet::new();
        let nets: Vec<&Network> = self.networks.values().collect();
        for (i, n) in nets.iter().enumerate() {
            if !vnis.insert(n.vni) || n.vni == 0 || n.vni > MAX_VNI {
                return Err(format!(
                    "network {} has a duplicate or invalid VNI {}",
                    n.name, n.vni
                ));
            }
            if let Some(o) = nets[i + 1..].iter().find(|o| o.cidr.overlaps(&n.cidr)) {
                return Err(format!("networks {} and {} overlap", n.name, o.name));
            }
            let mut nodes = BTreeSet::new();
            for (off, l) in &n.leases {
                if *off < 1 || *off > n.cidr.last_host() {
                    return Err(format!(
                        "network {} leases offset {off} outside its pool",
                        n.name
                    ));
                }
                match l {
                    Lease::Vm { name } => {
                        let ok = self.vms.get(name).is_some_and(|vm| {
                            vm.network.as_deref() == Some(n.name.as_str())
                                && vm.ip == Some(n.cidr.at(*off))
                        });
                        if !ok {
                            return Err(format!(
                                "network {} leases {} to VM {name}, which does not hold it",
                                n.name,
                                n.cidr.at(*off)
                            ));
                        }
                    }
                    Lease::Node { id } => {
                        if !self.workers.contains_key(id) || !nodes.insert(*id) {
                            return Err(format!(
                                "network {} leases an address to unknown or duplicate node {id}",
                                n.name
                            ));
                        }
                    }
                    Lease::Quarantined { .. } => {}
                }
            }
        }
        for vm in self.vms.values() {
            match (&vm.network, vm.ip) {
                (None, None) => {}
                (Some(net), Some(ip)) => {
                    let held = self
                        .networks
                        .get(net)
                        .and_then(|n| n.cidr.host_offset(ip).and_then(|off| n.leases.get(&off)))
                        .is_some_and(|l| {
                            *l == Lease::Vm {
                                name: vm.spec.name.clone(),
                            }
                        });
                    if !held {
                        return Err(format!(
                            "VM {} has address {ip} on {net} without holding its lease",
                            vm.spec.name
                        ));
                    }
                }
                _ => {
                    return Err(format!(
                        "VM {} has a network without an address or the reverse",
                        vm.spec.name
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
