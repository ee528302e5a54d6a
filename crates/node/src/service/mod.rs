//! The gRPC services of a node: the client API (`Blixard`, `Networks`: [`client`]), its log
//! streams ([`logs`]) and the peer service (`RaftPeer`: [`peer`]). Handlers only parse and
//! convert; the behaviour lives in [`Node`]. This module holds what they share.

use std::sync::Arc;

use blixard_api::{pb, CLUSTER_HEADER, FORWARDED_HEADER};
use blixard_core::{Reply, VmSpec};
use tonic::{Request as GrpcRequest, Status};

use crate::error::NodeError;
use crate::node::Node;
use crate::security;

mod client;
pub(crate) mod logs;
mod paging;
mod peer;

#[derive(Clone)]
pub struct Api {
    pub node: Arc<Node>,
}

fn request_id(s: &str) -> Result<Option<String>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > blixard_core::spec::MAX_REQUEST_ID_LEN {
        return Err(Status::invalid_argument(
            "request id is longer than 128 bytes",
        ));
    }
    Ok(Some(s.to_string()))
}

fn is_forwarded<T>(r: &GrpcRequest<T>) -> bool {
    r.metadata().get(FORWARDED_HEADER).is_some()
}

impl Api {
    async fn read(&self, stale: bool) -> Result<(), Status> {
        #[cfg(feature = "fault-stale-reads")] // harness self-test only: serve every read stale
        let stale = {
            let _ = stale;
            true
        };
        if !stale {
            self.node.read_barrier().await?;
        }
        Ok(())
    }

    fn vm_reply(reply: Reply) -> Result<pb::VmInfo, Status> {
        match reply {
            Reply::Vm(vm) => Ok(pb::VmInfo::from(&vm)),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// The `--force` guard of removing node `id` (`leaving`: it removes itself), on the
    /// linearizable view of the membership and leader: FAILED_PRECONDITION with the reason.
    async fn check_remove(&self, id: u64, leaving: bool) -> Result<(), Status> {
        self.node.read_barrier().await?;
        let members = self.node.members();
        let voters: Vec<u64> = members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        let learners = members.len() - voters.len();
        let leader = self.node.metrics().current_leader;
        match blixard_core::guards::remove_risk(&voters, learners, leader, id, leaving) {
            Some(why) => Err(Status::failed_precondition(why)),
            None => Ok(()),
        }
    }

    /// Refuses peer requests from another cluster; returns the node id of the sender's
    /// (verified, not revoked) certificate.
    fn check_peer<T>(&self, r: &GrpcRequest<T>) -> Result<u64, Status> {
        let cert = security::peer_id(r)?;
        let got = r
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok());
        match got {
            Some(id) if id == &*self.node.cluster_id => {
                self.node.liveness.contact.heard(cert);
                Ok(cert)
            }
            Some(id) => Err(Status::permission_denied(format!(
                "peer belongs to cluster {id}, this node to cluster {}",
                self.node.cluster_id
            ))),
            None => Err(Status::permission_denied(
                "peer request without a cluster id",
            )),
        }
    }
}

/// Parses and checks a VM spec before it costs a log entry (apply checks again).
fn parse_spec(spec: Option<pb::VmSpec>) -> Result<VmSpec, Status> {
    let spec = spec.ok_or_else(|| Status::invalid_argument("missing VM spec"))?;
    let spec = VmSpec::try_from(spec).map_err(Status::invalid_argument)?;
    // Host files are resolved by the node that runs the VM, inside its image directories
    // (blixard_vmm::images); the spec check refuses the obviously bad ones.
    spec.validate().map_err(NodeError::Rejected)?;
    Ok(spec)
}

/// A worker as clients see it: capacity is what the scheduler may allocate (after the vCPU
/// overcommit ratio).
fn node_info(state: &blixard_core::ClusterState, w: &blixard_core::Worker) -> pb::NodeInfo {
    let mut n = pb::NodeInfo::from(w);
    n.capacity = Some(state.settings.effective_capacity(&w.capacity).into());
    n
}

fn task_reply(reply: Reply) -> Result<pb::TaskInfo, Status> {
    match reply {
        Reply::Task(t) => Ok(pb::TaskInfo::from(&*t)),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}
