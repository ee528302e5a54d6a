//! The refusals of `CreateVm`, in one place: `apply` and the dry run (`explain`, served by
//! `vm create --dry-run`) both call [`ClusterState::check_create_vm`], so a dry run refuses
//! exactly what the real create would.

use super::{ClusterState, RowKey};
use crate::command::ApplyError;
use crate::network::{Lease, DEFAULT_NETWORK};
use crate::scheduler::{self, Placement};
use crate::spec::{VmSpec, MAX_VMS};
use std::net::Ipv4Addr;

impl ClusterState {
    /// Every reason `CreateVm { spec }` would be refused, checked without changing anything:
    /// the spec itself, the name, the cluster's VM count and spec budget, the pinned node, and
    /// the address (network, requested IP, a free one).
    pub fn check_create_vm(&self, spec: &VmSpec) -> Result<(), ApplyError> {
        spec.validate()?;
        self.check_new_vm_name(&spec.name)?;
        if self.vms.len() >= MAX_VMS {
            return Err(ApplyError::LimitReached(format!(
                "the cluster already holds {MAX_VMS} VMs"
            )));
        }
        let weight = crate::budget::vm_spec_bytes(spec);
        if self.bytes.vms + weight > crate::budget::MAX_VM_SPEC_BYTES {
            return Err(ApplyError::LimitReached(format!(
                "the cluster's VM specs already take {} KiB of its {} KiB budget: delete VMs or use shorter specs",
                self.bytes.vms >> 10,
                crate::budget::MAX_VM_SPEC_BYTES >> 10
            )));
        }
        if let Some(pin) = spec.node {
            if !self.workers.contains_key(&pin) {
                return Err(ApplyError::not_found("node", pin));
            }
        }
        self.address_for(spec)?;
        Ok(())
    }

    /// The network and address offset a new VM would get, or why it cannot have one. Changes
    /// nothing.
    pub(crate) fn address_for(&self, spec: &VmSpec) -> Result<Option<(String, u32)>, ApplyError> {
        let net_name = match (&spec.network, spec.ip) {
            (Some(n), _) => n.clone(),
            (None, _) if self.networks.contains_key(DEFAULT_NETWORK) => DEFAULT_NETWORK.to_string(),
            (None, None) => return Ok(None),
            (None, Some(ip)) => {
                return Err(ApplyError::invalid(format!(
                    "cannot give address {ip}: the cluster has no '{DEFAULT_NETWORK}' network; name one with --network"
                )))
            }
        };
        let Some(net) = self.networks.get(&net_name) else {
            return Err(ApplyError::not_found("network", &net_name));
        };
        let off = net.free_offset(spec.ip)?;
        Ok(Some((net_name, off)))
    }

    /// The network and address a new VM gets, taken in its network. Called once every other
    /// check of `CreateVm` has passed (a refusal here changes nothing).
    pub(crate) fn assign_address(
        &mut self,
        spec: &VmSpec,
    ) -> Result<Option<(String, Ipv4Addr)>, ApplyError> {
        let Some((net_name, off)) = self.address_for(spec)? else {
            return Ok(None);
        };
        let Some(net) = self.networks.get_mut(&net_name) else {
            return Err(ApplyError::not_found("network", &net_name));
        };
        let lease = Lease::Vm {
            name: spec.name.clone(),
        };
        if spec.ip.is_some() {
            // An asked-for address leaves the allocation cursor where it was.
            net.leases.insert(off, lease);
        } else {
            net.take(off, lease);
            // The cursor moved.
            self.touched.insert(RowKey::Network(net_name.clone()));
        }
        let ip = net.cidr.at(off);
        self.touched.insert(RowKey::Lease(net_name.clone(), off));
        Ok(Some((net_name, ip)))
    }
}

/// A dry run of `CreateVm { spec }` against `state`: the same refusals
/// ([`ClusterState::check_create_vm`]), the same choice (including preemption), and a verdict
/// per node. Pure; the node serves `vm create --dry-run` with it without proposing anything.
pub fn explain(state: &ClusterState, spec: &VmSpec) -> Result<Placement, ApplyError> {
    state.check_create_vm(spec)?;
    Ok(scheduler::dry_run(state.placement_view(), spec))
}
