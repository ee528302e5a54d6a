//! The client half of the peer network: openraft's RPCs sent over gRPC.
//!
//! Each Raft message is serialized as JSON into a `RaftMessage` and sent on the `RaftPeer`
//! service, with the cluster id in the `x-blixard-cluster` header so that a node of another
//! cluster refuses it. Connections are made lazily and kept per peer; peer addresses come from
//! the membership (they are local routing state, not replicated by us).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb::RaftMessage;
use blixard_api::{RaftPeerClient, CLUSTER_HEADER, MAX_PEER_MESSAGE};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::{NodeId, SnapshotData, TypeConfig};

type C = TypeConfig;

/// TLS client configuration a node speaks to its peers with (its node certificate).
pub type TlsConfig = Arc<rustls::ClientConfig>;

/// Creates peer clients; holds the cluster id every request is tagged with and the node's TLS
/// client configuration.
#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: Arc<str>,
    tls: TlsConfig,
}

impl PeerNetwork {
    pub fn new(cluster_id: impl Into<Arc<str>>, tls: TlsConfig) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            tls,
        }
    }
}

impl RaftNetworkFactory<C> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient {
            target,
            addr: node.addr.clone(),
            cluster_id: self.cluster_id.clone(),
            tls: self.tls.clone(),
            client: None,
        }
    }
}

/// A connection to one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    cluster_id: Arc<str>,
    tls: TlsConfig,
    client: Option<RaftPeerClient<Channel>>,
}

/// Builds a lazily-connecting TLS channel to a peer or client address.
pub fn channel(addr: &str, tls: &TlsConfig) -> Result<Channel, tonic::transport::Error> {
    blixard_pki::channel(addr, tls.clone())
}

/// A peer client with the large message limits snapshots need.
pub fn peer_client(
    addr: &str,
    tls: &TlsConfig,
) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
    Ok(RaftPeerClient::new(channel(addr, tls)?)
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE))
}

/// Wraps a value as a peer request carrying the cluster id.
pub fn peer_request<T: Serialize>(
    cluster_id: &str,
    value: &T,
    timeout: Option<Duration>,
) -> Result<tonic::Request<RaftMessage>, serde_json::Error> {
    let data = serde_json::to_vec(value)?;
    let mut req = tonic::Request::new(RaftMessage { data });
    if let Ok(v) = cluster_id.parse() {
        req.metadata_mut().insert(CLUSTER_HEADER, v);
    }
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    Ok(req)
}

enum CallError {
    Unreachable(String),
    Network(String),
}

impl PeerClient {
    fn client(&mut self) -> Result<RaftPeerClient<Channel>, CallError> {
        if self.client.is_none() {
            let c = peer_client(&self.addr, &self.tls).map_err(|e| {
                CallError::Unreachable(format!("bad peer address {}: {e}", self.addr))
            })?;
            self.client = Some(c);
        }
        self.client
            .clone()
            .ok_or_else(|| CallError::Unreachable("no client".into()))
    }

    async fn call<Req, Resp>(
        &mut self,
        rpc: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let mut client = self.client()?;
        let request = peer_request(&self.cluster_id, req, Some(timeout))
            .map_err(|e| CallError::Network(e.to_string()))?;
        let res = match rpc {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            "snapshot" => client.install_snapshot(request).await,
            _ => return Err(CallError::Network(format!("unknown rpc {rpc}"))),
        };
        let reply = res.map_err(|s| {
            let msg = format!(
                "{rpc} to node {} at {}: {}",
                self.target,
                self.addr,
                s.message()
            );
            match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::PermissionDenied
                | tonic::Code::FailedPrecondition => CallError::Unreachable(msg),
                _ => CallError::Network(msg),
            }
        })?;
        let decoded: Result<Resp, RaftError<C>> = serde_json::from_slice(&reply.into_inner().data)
            .map_err(|e| CallError::Network(format!("bad reply to {rpc}: {e}")))?;
        decoded.map_err(|e| CallError::Unreachable(format!("node {} failed: {e}", self.target)))
    }
}

fn rpc_err(e: CallError) -> RPCError<C> {
    match e {
        CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&AnyError::error(m))),
        CallError::Network(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
    }
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call("append", &req, option.hard_ttl())
            .await
            .map_err(rpc_err)
    }

    async fn vote(
        &mut self,
        req: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call("vote", &req, option.hard_ttl())
            .await
            .map_err(rpc_err)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let req = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        // Snapshots can be large; give them more time than a heartbeat.
        let call = self.call("snapshot", &req, Duration::from_secs(60));
        tokio::pin!(cancel);
        tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            res = call => res.map_err(|e| match e {
                CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::new(&AnyError::error(m))),
                CallError::Network(m) => StreamingError::Network(NetworkError::new(&AnyError::error(m))),
            }),
        }
    }

    async fn transfer_leader(
        &mut self,
        _req: TransferLeaderRequest<C>,
        _option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
            "leader transfer is not supported",
        ))))
    }

    fn backoff(&self) -> Option<Backoff> {
        Some(Backoff::new(std::iter::repeat(Duration::from_millis(200))))
    }
}
