//! The running node: its Raft instance, the applied state it reads, and the operations the
//! API offers on top of them: proposing commands (forwarded to the leader when this node is
//! not it), linearizable reads (ReadIndex through the leader), and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use blixard_api::{pb, BlixardClient, FORWARDED_HEADER};
use blixard_core::{Command, Outcome, Reply, Request};
use blixard_raft::{Raft, SharedState};
use blixard_transport::network::{peer_client, peer_request};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ReadPolicy};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::error::{NodeError, RetryReason};
use crate::leader_retry::Leader;

mod membership;

/// How long a proposal or read keeps retrying while there is no leader.
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Pause between retries while the leader is unknown or changing.
pub(crate) const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// A member as the applied membership records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
}

pub struct Node {
    pub id: u64,
    pub addr: String,
    pub cluster_id: Arc<str>,
    pub raft: Raft,
    pub state: SharedState,
    /// Events derived from the entries applied here (see `blixard_core::events`).
    pub events: blixard_raft::EventLog,
    /// Counters and histograms for `/metrics` (local).
    pub metrics: crate::metrics::Metrics,
    /// The bound HTTP address (`--http`), if any.
    pub http_addr: Option<String>,
    pub config: NodeConfig,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Serializes membership changes on this node: openraft refuses a change while another
    /// is in flight.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// Held while a snapshot streams in: one at a time (see `crate::snapshot`).
    pub(crate) receiving_snapshot: tokio::sync::Mutex<()>,
    /// The hypervisor driver (local runtime handle; used by the executor and for consoles).
    pub driver: std::sync::Arc<dyn blixard_vmm::VmDriver>,
    /// Lease and, on the leader, heartbeat bookkeeping (local state).
    pub liveness: crate::liveness::Liveness,
    /// Open connections to peers, by address (local state).
    pub(crate) peers: std::sync::Mutex<
        std::collections::HashMap<String, blixard_api::RaftPeerClient<tonic::transport::Channel>>,
    >,
    /// Key material and TLS configurations (local).
    pub tls: Arc<crate::security::NodeTls>,
    /// The producers of client streams (consoles, logs, events): bounded, joined at shutdown.
    pub(crate) streams: crate::streams::Streams,
}

/// Wall-clock milliseconds since the Unix epoch: the one clock of the node (proposers stamp
/// it into requests; `core` never reads a clock). The same function the workload supervisor
/// stamps its records with.
pub fn now_ms() -> u64 {
    blixard_vmm::rundir::unix_ms()
}

// One VM name limit: the cluster's (`core`) must fit the driver's (`vmm`).
const _: () = assert!(blixard_core::spec::MAX_NAME_LEN == blixard_vmm::MAX_NAME_LEN);

impl Node {
    /// A (cached) connection to the peer at `addr`.
    pub(crate) fn peer(
        &self,
        addr: &str,
    ) -> Result<blixard_api::RaftPeerClient<tonic::transport::Channel>, NodeError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let c = peer_client(addr, &self.tls.client)
            .map_err(|e| NodeError::Config(format!("bad peer address {addr}: {e}")))?;
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Asks every task of this node to stop.
    pub fn request_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Resolves once shutdown has been requested.
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// A copy of the latest Raft metrics of this node.
    pub fn metrics(&self) -> openraft::RaftMetrics<blixard_raft::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The current leader and its address, if known.
    pub fn leader(&self) -> Option<(u64, String)> {
        self.leader_view().1
    }

    /// The leader openraft reports (`current_leader`) and, from the same metrics, the leader
    /// this node can route to: that id with its address in this node's membership config.
    /// They differ while the leader is missing from that config (a leader that removed
    /// itself, or a joiner that has not yet caught up to the config naming the leader).
    pub(crate) fn leader_view(&self) -> (Option<u64>, Option<(u64, String)>) {
        // Borrow, don't clone: this runs on every proposal and read.
        let rx = self.raft.metrics();
        let m = rx.borrow_watched();
        let routable = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| (id, n.addr.clone()))
        });
        (m.current_leader, routable)
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.id)
    }

    /// Members according to the applied membership (what this node's log says).
    pub fn members(&self) -> Vec<MemberInfo> {
        let a = self.state.read();
        let m = a.membership.membership();
        let voters: BTreeSet<u64> = m.voter_ids().collect();
        m.nodes()
            .map(|(id, n)| MemberInfo {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    pub(crate) fn in_cluster(&self) -> bool {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    pub(crate) fn not_in_cluster(&self) -> NodeError {
        NodeError::NotInCluster { node: self.id }
    }

    /// Proposes a command through Raft and returns what `apply` said. Any node may call this:
    /// a follower hands the request to the leader.
    pub async fn propose(
        &self,
        command: Command,
        request_id: Option<String>,
    ) -> Result<Reply, NodeError> {
        let req = Request {
            request_id,
            time_ms: now_ms(),
            command,
            // The client this request runs for, when it is one (see `authz`).
            caller: crate::authz::current_caller(),
        };
        let started = std::time::Instant::now();
        let outcome = self.propose_request(req).await;
        let result = match &outcome {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "rejected",
            Err(_) => "failed",
        };
        self.metrics.observe_proposal(result, started.elapsed());
        outcome?.map_err(NodeError::Rejected)
    }

    pub(crate) async fn propose_request(&self, req: Request) -> Result<Outcome, NodeError> {
        blixard_transport::network::check_entry_size(&req).map_err(NodeError::Invalid)?;
        let req = &req;
        self.with_leader(|leader| async move {
            match leader {
                Leader::Me => {
                    // The leader stamps the time.
                    let mut req = req.clone();
                    req.time_ms = now_ms();
                    let retry_is_safe = req.request_id.is_some();
                    match self.raft.client_write(req).await {
                        Ok(resp) => Ok(resp.data),
                        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                            Err(NodeError::retry(RetryReason::LeaderChanged {
                                to: f.leader_id,
                            }))
                        }
                        // The entry may or may not commit; a retry is safe only with a
                        // request id, which apply de-duplicates.
                        Err(RaftError::APIError(e)) if retry_is_safe => {
                            Err(NodeError::retry(RetryReason::Raft {
                                what: "proposing".into(),
                                why: e.to_string(),
                            }))
                        }
                        Err(RaftError::APIError(e)) => Err(NodeError::Raft(e.to_string())),
                        Err(RaftError::Fatal(f)) => Err(NodeError::Raft(f.to_string())),
                    }
                }
                Leader::Other(id, addr) => self
                    .forward_proposal(&addr, req)
                    .await
                    .map_err(|why| forwarding(id, &addr, why)),
            }
        })
        .await
    }

    async fn forward_proposal(&self, addr: &str, req: &Request) -> Result<Outcome, String> {
        let mut client = self.peer(addr).map_err(|e| e.to_string())?;
        let r =
            peer_request(&self.cluster_id, req, Some(LEADER_WAIT)).map_err(|e| e.to_string())?;
        let reply = client
            .propose(r)
            .await
            .map_err(|s| s.message().to_string())?;
        serde_json::from_slice(&reply.into_inner().data)
            .map_err(|e| format!("bad reply from leader: {e}"))
    }

    /// The cluster's lease settings, from this node's applied state.
    pub fn liveness_settings(&self) -> blixard_core::LivenessSettings {
        self.state.read().state.liveness
    }

    /// Proposes a leader-only verdict decided in `term` (liveness, worker removal): only on
    /// this node, only while it leads in that term; never forwarded. `apply` refuses it if its
    /// log entry ends up in another term.
    pub(crate) async fn propose_verdict(
        &self,
        term: u64,
        command: Command,
    ) -> Result<Reply, NodeError> {
        let m = self.metrics();
        if m.current_leader != Some(self.id) || m.current_term != term {
            // No longer leads in `term`: the verdict is void.
            return Err(NodeError::retry(RetryReason::NotLeader { node: self.id }));
        }
        let req = Request::new(command, now_ms());
        blixard_transport::network::check_entry_size(&req).map_err(NodeError::Invalid)?;
        match self.raft.client_write(req).await {
            Ok(resp) => resp.data.map_err(NodeError::Rejected),
            Err(e) => Err(raft_retry("proposing a verdict", e)),
        }
    }

    /// Proposes only if this node is the leader (used for requests forwarded by followers).
    pub(crate) async fn propose_as_leader(&self, mut req: Request) -> Result<Outcome, NodeError> {
        if !self.is_leader() {
            return Err(NodeError::retry(RetryReason::NotLeader { node: self.id }));
        }
        blixard_transport::network::check_entry_size(&req).map_err(NodeError::Invalid)?;
        req.time_ms = now_ms();
        match self.raft.client_write(req).await {
            Ok(resp) => Ok(resp.data),
            Err(e) => Err(raft_retry("proposing a forwarded request", e)),
        }
    }

    /// Waits until this node's applied state reflects every write acknowledged before the call
    /// (ReadIndex through the leader). Reads made after it returns are linearizable.
    pub async fn read_barrier(&self) -> Result<(), NodeError> {
        self.with_leader(|leader| async move {
            match leader {
                Leader::Me => self
                    .raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .map(|_| ())
                    .map_err(|e| raft_retry("confirming leadership for a read", e)),
                Leader::Other(id, addr) => {
                    let index = self
                        .remote_read_index(id, &addr)
                        .await
                        .map_err(|why| forwarding(id, &addr, format!("read index: {why}")))?;
                    let wait = self.raft.wait(Some(LEADER_WAIT));
                    wait.applied_index_at_least(Some(index), "read barrier")
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            NodeError::Timeout(format!("catching up to index {index}: {e}"))
                        })
                }
            }
        })
        .await
    }

    async fn remote_read_index(&self, leader: u64, addr: &str) -> Result<u64, String> {
        let mut client = self.peer(addr).map_err(|e| e.to_string())?;
        let r =
            peer_request(&self.cluster_id, &(), Some(LEADER_WAIT)).map_err(|e| e.to_string())?;
        let r = r.map(|_| pb::Empty {});
        let reply = client
            .read_index(r)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        // The leader's detector view comes with it (`node list` shows it).
        self.liveness
            .record_leader_view(leader, reply.heard_ms_ago.into_iter().collect());
        Ok(reply.index)
    }

    /// Heartbeats the leader (or, on the leader, confirms leadership); returns the index this
    /// node must apply before acting on its state, and the lease the leader grants (ms).
    pub(crate) async fn heartbeat_leader(&self) -> Result<(u64, u64), NodeError> {
        match self.leader() {
            Some((id, _)) if id == self.id => {
                let index = self.leader_read_index().await?;
                self.liveness.seen(self.id);
                Ok((index, self.liveness_settings().lease_ms))
            }
            Some((id, addr)) => {
                let mut client = self.peer(&addr)?;
                let heartbeat = Duration::from_millis(self.liveness_settings().heartbeat_ms);
                let r = peer_request(&self.cluster_id, &(), Some(heartbeat * 3))
                    .map_err(|e| NodeError::Invalid(e.to_string()))?
                    .map(|_| pb::HeartbeatRequest { node_id: self.id });
                let reply = client
                    .heartbeat(r)
                    .await
                    .map_err(|s| forwarding(id, &addr, format!("heartbeat: {}", s.message())))?
                    .into_inner();
                // An older leader that does not say: our own applied setting.
                let lease = if reply.lease_ms == 0 {
                    self.liveness_settings().lease_ms
                } else {
                    reply.lease_ms
                };
                Ok((reply.index, lease))
            }
            None => Err(NodeError::retry(RetryReason::NoLeader)),
        }
    }

    /// On the leader: confirms leadership and returns the index a read must wait for.
    pub(crate) async fn leader_read_index(&self) -> Result<u64, NodeError> {
        let read = self
            .raft
            .get_read_linearizer(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| raft_retry("confirming leadership", e))?;
        Ok(read.read_log_id().index())
    }

    /// Runs `f` on the leader's client API (used for membership changes sent to a follower);
    /// `None` when this node has become the leader meanwhile (the caller does it itself).
    async fn on_leader<T, F, Fut>(&self, f: F) -> Result<Option<T>, NodeError>
    where
        F: Fn(BlixardClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let f = &f;
        self.with_leader(|leader| async move {
            let Leader::Other(id, addr) = leader else {
                return Ok(None);
            };
            let channel = blixard_transport::network::channel(&addr, &self.tls.client)
                .map_err(|e| forwarding(id, &addr, e.to_string()))?;
            f(BlixardClient::new(channel))
                .await
                .map(Some)
                .map_err(NodeError::from_status)
        })
        .await
    }
}

/// The leader could not be reached or did not answer: worth retrying.
pub(super) fn forwarding(leader: u64, addr: &str, why: String) -> NodeError {
    NodeError::retry(RetryReason::Forwarding {
        leader,
        addr: addr.to_string(),
        why,
    })
}

/// A Raft call on the leader path that failed: leadership is in question, so retry.
pub(super) fn raft_retry(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::retry(RetryReason::Raft {
        what: what.to_string(),
        why: e.to_string(),
    })
}

pub(crate) fn forwarded_request<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    r
}
