//! The peer service (`RaftPeer`): Raft messages, proposals and heartbeats between members.

use blixard_api::pb;
use blixard_api::pb::raft_peer_server::RaftPeer;
use blixard_core::Request;
use serde::Serialize;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::security;

use super::Api;

pub(super) fn decode<T: serde::de::DeserializeOwned>(m: &pb::RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&m.data)
        .map_err(|e| Status::invalid_argument(format!("malformed peer message: {e}")))
}

pub(super) fn encode<T: Serialize>(v: &T) -> Result<Response<pb::RaftMessage>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(pb::RaftMessage { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl RaftPeer for Api {
    async fn append_entries(
        &self,
        r: GrpcRequest<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let cert = self.check_peer(&r)?;
        let req = decode(r.get_ref())?;
        security::check_append(cert, &req)?;
        encode(&self.node.raft.append_entries(req).await)
    }

    async fn vote(
        &self,
        r: GrpcRequest<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let cert = self.check_peer(&r)?;
        let req = decode(r.get_ref())?;
        security::check_vote_request(cert, &req)?;
        encode(&self.node.raft.vote(req).await)
    }

    async fn pre_vote(
        &self,
        r: GrpcRequest<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let cert = self.check_peer(&r)?;
        let req = decode(r.get_ref())?;
        security::check_vote_request(cert, &req)?;
        encode(&self.node.raft.pre_vote(req).await)
    }

    async fn install_snapshot(
        &self,
        r: GrpcRequest<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let cert = self.check_peer(&r)?;
        crate::snapshot::receive(&self.node, cert, r.into_inner()).await
    }

    async fn propose(
        &self,
        r: GrpcRequest<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let cert = self.check_peer(&r)?;
        let req: Request = decode(r.get_ref())?;
        security::check_proposal(cert, &req)?;
        let outcome = self.node.propose_as_leader(req).await?;
        encode(&outcome)
    }

    async fn read_index(
        &self,
        r: GrpcRequest<pb::Empty>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        self.check_peer(&r)?;
        let index = self.node.leader_read_index().await?;
        Ok(Response::new(pb::ReadIndexReply {
            index,
            lease_ms: 0,
            heard_ms_ago: self.node.liveness.heard_ms_ago().into_iter().collect(),
        }))
    }

    async fn heartbeat(
        &self,
        r: GrpcRequest<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::ReadIndexReply>, Status> {
        let cert = self.check_peer(&r)?;
        // A removed node must not renew its lease: its VMs are about to run elsewhere.
        let id = r.get_ref().node_id;
        security::check_heartbeat(cert, id)?;
        if self.node.members().iter().all(|m| m.id != id) {
            return Err(Status::permission_denied(format!(
                "node {id} is not a member of this cluster"
            )));
        }
        // Confirm leadership with a quorum first: a deposed leader must not renew leases.
        let index = self.node.leader_read_index().await?;
        self.node.liveness.seen(r.get_ref().node_id);
        // The lease is the leader's to grant: a node that has not applied a settings change
        // yet must not renew for longer than the leader judges by.
        let lease_ms = self.node.liveness_settings().lease_ms;
        Ok(Response::new(pb::ReadIndexReply {
            index,
            lease_ms,
            heard_ms_ago: Default::default(),
        }))
    }

    async fn evicted(
        &self,
        r: GrpcRequest<pb::EvictedNotice>,
    ) -> Result<Response<pb::Empty>, Status> {
        let cert = self.check_peer(&r)?;
        security::check_evicted(&self.node, cert)?;
        if r.get_ref().node_id != self.node.id {
            return Err(Status::invalid_argument(format!(
                "this is node {}, not node {}",
                self.node.id,
                r.get_ref().node_id
            )));
        }
        tracing::warn!(
            node = self.node.id,
            "the leader removed this node from the cluster; stopping its VMs and shutting down"
        );
        if !self.node.stop_all_vms().await {
            return Err(Status::internal("could not stop every VM"));
        }
        crate::mark_left(&self.node)?;
        self.node.request_shutdown();
        Ok(Response::new(pb::Empty {}))
    }
}
