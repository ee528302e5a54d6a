//! The gRPC services of a node: the client API (`Blixard`) and the peer service (`RaftPeer`).
//! Handlers only parse and convert; the behaviour lives in [`Node`].

use std::io::Cursor;
use std::sync::Arc;

use blixard_api::pb::blixard_server::Blixard;
use blixard_api::pb::raft_peer_server::RaftPeer;
use blixard_api::{pb, CLUSTER_HEADER, FORWARDED_HEADER};
use blixard_core::{Command, Reply, Request, TaskSpec, VmSpec};
use blixard_raft::TypeConfig;
use openraft::Snapshot;
use serde::Serialize;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::error::NodeError;
use crate::node::Node;
use crate::security;

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

    /// Refuses peer requests from another cluster; returns the node id of the sender's
    /// (verified, not revoked) certificate.
    fn check_peer<T>(&self, r: &GrpcRequest<T>) -> Result<u64, Status> {
        let cert = security::peer_id(r)?;
        let got = r
            .metadata()
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok());
        match got {
            Some(id) if id == &*self.node.cluster_id => Ok(cert),
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
    spec.validate().map_err(NodeError::Rejected)?;
    for (what, p) in [
        ("kernel", &spec.kernel),
        ("initrd", &spec.initrd),
        ("disk image", &spec.disk_image),
    ] {
        if let Some(p) = p {
            if !std::path::Path::new(p).is_file() {
                return Err(Status::invalid_argument(format!(
                    "{what} not found: {p} (paths must exist on the nodes)"
                )));
            }
        }
    }
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

fn decode<T: serde::de::DeserializeOwned>(m: &pb::RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&m.data)
        .map_err(|e| Status::invalid_argument(format!("malformed peer message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<pb::RaftMessage>, Status> {
    serde_json::to_vec(v)
        .map(|data| Response::new(pb::RaftMessage { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

/// Console bytes sent per message.
const LOG_CHUNK: usize = 64 * 1024;

/// Streams `path` from the start; with `follow`, keeps sending what is appended until the
/// client goes away or the node stops.
fn stream_file(node: Arc<Node>, path: std::path::PathBuf, follow: bool) -> LogStream {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::LogChunk, Status>>(8);
    tokio::spawn(async move {
        let mut offset = 0u64;
        let mut buf = vec![0u8; LOG_CHUNK];
        loop {
            match tokio::fs::File::open(&path).await {
                Ok(mut f) => {
                    if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                        return;
                    }
                    loop {
                        match f.read(&mut buf).await {
                            Ok(0) => break,
                            Ok(n) => {
                                offset += n as u64;
                                if tx
                                    .send(Ok(pb::LogChunk {
                                        data: buf[..n].to_vec(),
                                    }))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx
                                    .send(Err(Status::internal(format!("reading console: {e}"))))
                                    .await;
                                return;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("opening console: {e}"))))
                        .await;
                    return;
                }
            }
            if !follow {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = tx.closed() => return,
                _ = node.stopped() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// A client for the node (id, address) that holds a VM's console or a task's output.
fn owner_client(
    node: &Node,
    owner: &(u64, Option<String>),
) -> Result<blixard_api::BlixardClient<tonic::transport::Channel>, Status> {
    let addr = owner
        .1
        .as_deref()
        .ok_or_else(|| Status::unavailable(format!("node {} has no known address", owner.0)))?;
    let ch = blixard_raft::network::channel(addr, &node.tls.client)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(blixard_api::BlixardClient::new(ch))
}

type LogStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Blixard for Api {
    type VmLogsStream = LogStream;

    async fn vm_logs(
        &self,
        r: GrpcRequest<pb::VmLogsRequest>,
    ) -> Result<Response<Self::VmLogsStream>, Status> {
        let fwd = is_forwarded(&r);
        let req = r.into_inner();
        blixard_core::spec::validate_name(&req.name).map_err(NodeError::Rejected)?;
        self.node.read_barrier().await?;
        let owner = {
            let a = self.node.state.read();
            let vm = a
                .state
                .vms
                .get(&req.name)
                .ok_or_else(|| Status::not_found(format!("VM '{}' not found", req.name)))?;
            let node = vm.node_id.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "VM '{}' is not placed on any node yet: no console",
                    req.name
                ))
            })?;
            (node, a.state.workers.get(&node).map(|w| w.addr.clone()))
        };
        if req.previous && req.follow {
            return Err(Status::invalid_argument(
                "--previous and --follow cannot be combined: the previous console no longer grows",
            ));
        }
        if owner.0 == self.node.id {
            let mut path = self.node.driver.console_path(&req.name);
            if req.previous {
                path.set_file_name(blixard_vmm::rundir::PREVIOUS_CONSOLE);
                if !path.exists() {
                    return Err(Status::not_found(format!(
                        "VM '{}' has no previous console on node {}: it has not been restarted there",
                        req.name, self.node.id
                    )));
                }
            }
            return Ok(Response::new(stream_file(
                self.node.clone(),
                path,
                req.follow,
            )));
        }
        if fwd {
            return Err(Status::unavailable(format!(
                "VM '{}' is not on node {}",
                req.name, self.node.id
            )));
        }
        let upstream = owner_client(&self.node, &owner)?
            .vm_logs(crate::node::forwarded_request(req))
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(upstream)))
    }

    type TaskLogsStream = LogStream;

    type EventsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EventMsg, Status>> + Send>>;

    async fn events(
        &self,
        r: GrpcRequest<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        use tokio_stream::StreamExt;
        let req = r.into_inner();
        let rx = crate::events::follow(self.node.clone(), req.since, req.follow);
        let s = tokio_stream::wrappers::ReceiverStream::new(rx).map(|e| {
            let json = serde_json::to_string(&e).map_err(|e| Status::internal(e.to_string()))?;
            Ok(pb::EventMsg {
                index: e.index,
                r#type: e.kind.type_name().to_string(),
                json,
            })
        });
        Ok(Response::new(Box::pin(s)))
    }

    async fn submit_task(
        &self,
        r: GrpcRequest<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let req = r.into_inner();
        let spec: TaskSpec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("missing task spec"))?
            .into();
        spec.validate().map_err(NodeError::Rejected)?;
        // The proposer chooses the id: apply has no randomness.
        let id = uuid::Uuid::new_v4().to_string();
        let reply = self
            .node
            .propose(
                Command::SubmitTask { id, spec },
                request_id(&req.request_id)?,
            )
            .await?;
        Ok(Response::new(task_reply(reply)?))
    }

    async fn get_task(
        &self,
        r: GrpcRequest<pb::GetTaskRequest>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let req = r.into_inner();
        blixard_core::task::validate_task_id(&req.id).map_err(NodeError::Rejected)?;
        self.read(req.stale).await?;
        let a = self.node.state.read();
        match a.state.tasks.get(&req.id) {
            Some(t) => Ok(Response::new(pb::TaskInfo::from(t))),
            None => Err(Status::not_found(format!("task '{}' not found", req.id))),
        }
    }

    async fn list_tasks(
        &self,
        r: GrpcRequest<pb::ListTasksRequest>,
    ) -> Result<Response<pb::TaskList>, Status> {
        let req = r.into_inner();
        let state = if req.state.is_empty() {
            None
        } else {
            Some(blixard_core::TaskState::parse(&req.state).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown task state '{}': use pending, running, succeeded, failed, timed_out, cancelled or lost",
                    req.state
                ))
            })?)
        };
        let after = parse_task_token(&req.after)?;
        self.read(req.stale).await?;
        let a = self.node.state.read();
        let mut tasks: Vec<&blixard_core::TaskRecord> = a
            .state
            .tasks
            .values()
            .filter(|t| {
                state.is_none_or(|s| t.state == s) && req.node.is_none_or(|n| t.node_id == Some(n))
            })
            .filter(|t| {
                after
                    .as_ref()
                    .is_none_or(|(ms, id)| (t.submitted_ms, &t.id) > (*ms, id))
            })
            .collect();
        tasks.sort_by(|x, y| (x.submitted_ms, &x.id).cmp(&(y.submitted_ms, &y.id)));
        let (tasks, next) = page(tasks.into_iter(), req.limit, pb::TaskInfo::from, |t| {
            format!("{}:{}", t.submitted_ms, t.id)
        });
        Ok(Response::new(pb::TaskList { tasks, next }))
    }

    async fn cancel_task(
        &self,
        r: GrpcRequest<pb::TaskRef>,
    ) -> Result<Response<pb::TaskInfo>, Status> {
        let req = r.into_inner();
        blixard_core::task::validate_task_id(&req.id).map_err(NodeError::Rejected)?;
        let reply = self
            .node
            .propose(
                Command::CancelTask { id: req.id },
                request_id(&req.request_id)?,
            )
            .await?;
        Ok(Response::new(task_reply(reply)?))
    }

    async fn task_logs(
        &self,
        r: GrpcRequest<pb::TaskRef>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let fwd = is_forwarded(&r);
        let req = r.into_inner();
        blixard_core::task::validate_task_id(&req.id).map_err(NodeError::Rejected)?;
        self.node.read_barrier().await?;
        let owner = {
            let a = self.node.state.read();
            let t = a
                .state
                .tasks
                .get(&req.id)
                .ok_or_else(|| Status::not_found(format!("task '{}' not found", req.id)))?;
            let node = t.node_id.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "task '{}' has not been placed on a node yet: no output",
                    req.id
                ))
            })?;
            (node, a.state.workers.get(&node).map(|w| w.addr.clone()))
        };
        if owner.0 == self.node.id {
            let path = crate::task_runner::output_path(&self.node.config.data_dir, &req.id);
            return Ok(Response::new(stream_file(self.node.clone(), path, false)));
        }
        if fwd {
            return Err(Status::unavailable(format!(
                "task '{}' did not run on node {}",
                req.id, self.node.id
            )));
        }
        let upstream = owner_client(&self.node, &owner)?
            .task_logs(crate::node::forwarded_request(req))
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "node {} that ran the task: {}",
                    owner.0,
                    e.message()
                ))
            })?
            .into_inner();
        Ok(Response::new(Box::pin(upstream)))
    }

    async fn cluster_status(
        &self,
        r: GrpcRequest<pb::ReadOptions>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        if !r.get_ref().stale {
            // Like every read: without a leader to confirm it, refuse rather than print a
            // membership that may be stale (`--stale` shows the local view, labelled so).
            self.node.read_barrier().await?;
        }
        let m = self.node.metrics();
        let (applied, digest, settings) = {
            let a = self.node.state.read();
            (
                a.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
                a.state.digest(),
                settings_reply(&a.state),
            )
        };
        let members = self
            .node
            .members()
            .into_iter()
            .map(|mi| pb::Member {
                id: mi.id,
                addr: mi.addr,
                role: if mi.voter { "voter" } else { "learner" }.into(),
            })
            .collect();
        Ok(Response::new(pb::ClusterStatusReply {
            node_id: self.node.id,
            leader_id: m.current_leader,
            term: m.current_term,
            applied_index: applied,
            members,
            cluster_id: self.node.cluster_id.to_string(),
            state_digest: digest,
            committed_index: m.local_committed.as_ref().map(|l| l.index()).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index()),
            purged_index: m.purged.as_ref().map(|l| l.index()).unwrap_or(0),
            scheduler: Some(settings),
            http_addr: self.node.http_addr.clone().unwrap_or_default(),
        }))
    }

    async fn join(
        &self,
        r: GrpcRequest<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let fwd = is_forwarded(&r);
        match security::caller(&r) {
            Some(blixard_pki::Identity::Node(id)) if *id == r.get_ref().node_id || fwd => {}
            _ => return Err(Status::permission_denied("only the joining node itself may ask to join (with the certificate its join token got it)")),
        }
        let req = r.into_inner();
        Ok(Response::new(
            self.node.join_member(req.node_id, req.addr, fwd).await?,
        ))
    }

    async fn remove_member(
        &self,
        r: GrpcRequest<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let fwd = is_forwarded(&r);
        self.node.remove_member(r.into_inner().node_id, fwd).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn leave(&self, _r: GrpcRequest<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        self.node.remove_member(self.node.id, false).await?;
        crate::mark_left(&self.node)?;
        tracing::info!(node = self.node.id, "left the cluster; shutting down");
        self.node.request_shutdown();
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_nodes(
        &self,
        r: GrpcRequest<pb::ReadOptions>,
    ) -> Result<Response<pb::NodeList>, Status> {
        self.read(r.get_ref().stale).await?;
        let a = self.node.state.read();
        let nodes = a
            .state
            .workers
            .values()
            .map(|w| node_info(&a.state, w))
            .collect();
        Ok(Response::new(pb::NodeList { nodes }))
    }

    async fn set_node_state(
        &self,
        r: GrpcRequest<pb::SetNodeStateRequest>,
    ) -> Result<Response<pb::NodeInfo>, Status> {
        let req = r.into_inner();
        let state = blixard_api::parse_node_state(&req.state).map_err(Status::invalid_argument)?;
        let reply = self
            .node
            .propose(
                Command::SetWorkerState {
                    id: req.node_id,
                    state,
                },
                request_id(&req.request_id)?,
            )
            .await?;
        match reply {
            Reply::Worker(w) => Ok(Response::new(node_info(&self.node.state.read().state, &w))),
            other => Err(Status::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn explain_placement(
        &self,
        r: GrpcRequest<pb::CreateVmRequest>,
    ) -> Result<Response<pb::PlacementExplanation>, Status> {
        let spec = parse_spec(r.into_inner().spec)?;
        self.node.read_barrier().await?;
        let a = self.node.state.read();
        let p = blixard_core::explain(&a.state, &spec).map_err(NodeError::Rejected)?;
        Ok(Response::new(pb::PlacementExplanation::from(&p)))
    }

    async fn set_scheduler_settings(
        &self,
        r: GrpcRequest<pb::SchedulerSettings>,
    ) -> Result<Response<pb::SchedulerSettings>, Status> {
        let req = r.into_inner();
        let rid = request_id(&req.request_id)?;
        if !req.strategy.is_empty() || req.vcpu_overcommit_pct != 0 {
            self.node.read_barrier().await?;
            let current = self.node.state.read().state.settings.clone();
            let strategy = if req.strategy.is_empty() {
                current.strategy
            } else {
                req.strategy.parse().map_err(Status::invalid_argument)?
            };
            let pct = if req.vcpu_overcommit_pct == 0 {
                current.vcpu_overcommit_pct
            } else {
                req.vcpu_overcommit_pct
            };
            let cmd = Command::SetSchedulerSettings {
                strategy,
                vcpu_overcommit_pct: pct,
            };
            self.node.propose(cmd, rid.clone()).await?;
        }
        if req.lease_ms != 0 || req.grace_ms != 0 || req.heartbeat_ms != 0 {
            let some = |v: u64| (v != 0).then_some(v);
            let cmd = Command::SetLivenessSettings {
                lease_ms: some(req.lease_ms),
                grace_ms: some(req.grace_ms),
                heartbeat_ms: some(req.heartbeat_ms),
            };
            self.node
                .propose(cmd, rid.map(|id| format!("{id}/lease")))
                .await?;
        }
        self.node.read_barrier().await?;
        let a = self.node.state.read();
        Ok(Response::new(settings_reply(&a.state)))
    }

    async fn create_vm(
        &self,
        r: GrpcRequest<pb::CreateVmRequest>,
    ) -> Result<Response<pb::VmInfo>, Status> {
        let req = r.into_inner();
        let spec = parse_spec(req.spec)?;

        let reply = self
            .node
            .propose(Command::CreateVm { spec }, request_id(&req.request_id)?)
            .await?;
        Ok(Response::new(Self::vm_reply(reply)?))
    }

    async fn delete_vm(&self, r: GrpcRequest<pb::VmRef>) -> Result<Response<pb::Empty>, Status> {
        let req = r.into_inner();
        blixard_core::spec::validate_name(&req.name).map_err(NodeError::Rejected)?;
        self.node
            .propose(
                Command::DeleteVm { name: req.name },
                request_id(&req.request_id)?,
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn set_vm_desired(
        &self,
        r: GrpcRequest<pb::SetVmDesiredRequest>,
    ) -> Result<Response<pb::VmInfo>, Status> {
        let req = r.into_inner();
        blixard_core::spec::validate_name(&req.name).map_err(NodeError::Rejected)?;
        let desired = blixard_api::parse_desired(&req.desired).map_err(Status::invalid_argument)?;
        let reply = self
            .node
            .propose(
                Command::SetVmDesired {
                    name: req.name,
                    desired,
                },
                request_id(&req.request_id)?,
            )
            .await?;
        Ok(Response::new(Self::vm_reply(reply)?))
    }

    async fn get_vm(
        &self,
        r: GrpcRequest<pb::GetVmRequest>,
    ) -> Result<Response<pb::VmInfo>, Status> {
        let req = r.into_inner();
        blixard_core::spec::validate_name(&req.name).map_err(NodeError::Rejected)?;
        self.read(req.stale).await?;
        let a = self.node.state.read();
        match a.state.vms.get(&req.name) {
            Some(vm) => Ok(Response::new(pb::VmInfo::from(vm))),
            None => Err(Status::not_found(format!("VM '{}' not found", req.name))),
        }
    }

    async fn list_vms(
        &self,
        r: GrpcRequest<pb::ReadOptions>,
    ) -> Result<Response<pb::VmList>, Status> {
        self.read(r.get_ref().stale).await?;
        let a = self.node.state.read();
        Ok(Response::new(pb::VmList {
            vms: a.state.vms.values().map(pb::VmInfo::from).collect(),
            next: String::new(),
        }))
    }

    async fn list_vms_page(
        &self,
        r: GrpcRequest<pb::PageRequest>,
    ) -> Result<Response<pb::VmList>, Status> {
        let req = r.into_inner();
        if req.after.len() > blixard_core::spec::MAX_NAME_LEN {
            return Err(Status::invalid_argument("bad page token"));
        }
        self.read(req.stale).await?;
        let a = self.node.state.read();
        let from = (
            std::ops::Bound::Excluded(req.after.clone()),
            std::ops::Bound::Unbounded,
        );
        let vms: Box<dyn Iterator<Item = &blixard_core::VmRecord>> = if req.after.is_empty() {
            Box::new(a.state.vms.values())
        } else {
            Box::new(a.state.vms.range(from).map(|(_, v)| v))
        };
        let (vms, next) = page(vms, req.limit, pb::VmInfo::from, |v| v.spec.name.clone());
        Ok(Response::new(pb::VmList { vms, next }))
    }

    async fn create_join_token(
        &self,
        r: GrpcRequest<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenInfo>, Status> {
        Ok(Response::new(
            security::create_token(&self.node, r.into_inner().ttl_secs).await?,
        ))
    }

    async fn list_join_tokens(
        &self,
        _r: GrpcRequest<pb::Empty>,
    ) -> Result<Response<pb::JoinTokenList>, Status> {
        Ok(Response::new(security::list_tokens(&self.node).await?))
    }

    async fn revoke_join_token(
        &self,
        r: GrpcRequest<pb::JoinTokenRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        security::revoke_token(&self.node, r.into_inner().id).await?;
        Ok(Response::new(pb::Empty {}))
    }
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

    async fn install_snapshot(
        &self,
        r: GrpcRequest<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let cert = self.check_peer(&r)?;
        type Meta = openraft::alias::SnapshotMetaOf<TypeConfig>;
        type Vote = openraft::alias::VoteOf<TypeConfig>;
        let (vote, meta, data): (Vote, Meta, Vec<u8>) = decode(r.get_ref())?;
        security::check_snapshot(cert, &vote, &meta)?;
        let snapshot = Snapshot {
            meta,
            snapshot: Cursor::new(data),
        };
        let res = self
            .node
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(openraft::error::RaftError::<TypeConfig>::Fatal);
        encode(&res)
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
        Ok(Response::new(pb::ReadIndexReply { index, lease_ms: 0 }))
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
        Ok(Response::new(pb::ReadIndexReply { index, lease_ms }))
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

/// The cluster settings as the API shows them (scheduler and lease).
fn settings_reply(s: &blixard_core::ClusterState) -> pb::SchedulerSettings {
    pb::SchedulerSettings {
        strategy: s.settings.strategy.as_str().into(),
        vcpu_overcommit_pct: s.settings.vcpu_overcommit_pct,
        request_id: String::new(),
        lease_ms: s.liveness.lease_ms,
        grace_ms: s.liveness.grace_ms,
        heartbeat_ms: s.liveness.heartbeat_ms,
    }
}

fn network_reply(reply: Reply) -> Result<pb::NetworkInfo, Status> {
    match reply {
        Reply::Network(n) => Ok(pb::NetworkInfo::from(&*n)),
        other => Err(Status::internal(format!("unexpected reply {other:?}"))),
    }
}

#[tonic::async_trait]
impl blixard_api::pb::networks_server::Networks for Api {
    async fn create_network(
        &self,
        r: GrpcRequest<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::NetworkInfo>, Status> {
        let req = r.into_inner();
        blixard_core::network::validate_network_name(&req.name).map_err(NodeError::Rejected)?;
        req.cidr
            .parse::<blixard_core::Cidr>()
            .map_err(Status::invalid_argument)?;
        let cmd = Command::CreateNetwork {
            name: req.name,
            cidr: req.cidr,
        };
        let reply = self.node.propose(cmd, request_id(&req.request_id)?).await?;
        Ok(Response::new(network_reply(reply)?))
    }

    async fn list_networks(
        &self,
        r: GrpcRequest<pb::ReadOptions>,
    ) -> Result<Response<pb::NetworkList>, Status> {
        self.read(r.get_ref().stale).await?;
        let a = self.node.state.read();
        Ok(Response::new(pb::NetworkList {
            networks: a
                .state
                .networks
                .values()
                .map(pb::NetworkInfo::from)
                .collect(),
        }))
    }

    async fn delete_network(
        &self,
        r: GrpcRequest<pb::NetworkRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = r.into_inner();
        blixard_core::network::validate_network_name(&req.name).map_err(NodeError::Rejected)?;
        self.node
            .propose(
                Command::DeleteNetwork { name: req.name },
                request_id(&req.request_id)?,
            )
            .await?;
        Ok(Response::new(pb::Empty {}))
    }
}

/// Most items in one page of a list.
const PAGE_ITEMS: usize = 1_000;
/// Most bytes in one page of a list: well under a client's 4 MiB decode limit.
const PAGE_BYTES: usize = 1 << 20;

/// One page of `items`: at most `limit` (0: [`PAGE_ITEMS`]) and about [`PAGE_BYTES`] encoded
/// (always at least one item), with the token of the next page (empty on the last).
fn page<'a, T: 'a, M: prost::Message>(
    items: impl Iterator<Item = &'a T>,
    limit: u32,
    to_msg: impl Fn(&'a T) -> M,
    token: impl Fn(&'a T) -> String,
) -> (Vec<M>, String) {
    let limit = if limit == 0 {
        PAGE_ITEMS
    } else {
        (limit as usize).min(PAGE_ITEMS)
    };
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    let mut items = items.peekable();
    while let Some(item) = items.next() {
        let m = to_msg(item);
        bytes += m.encoded_len();
        out.push(m);
        last = Some(item);
        if out.len() >= limit || bytes >= PAGE_BYTES {
            break;
        }
    }
    let next = match (items.peek(), last) {
        (Some(_), Some(l)) => token(l),
        _ => String::new(),
    };
    (out, next)
}

/// A task page token: `SUBMITTED_MS:ID`.
fn parse_task_token(s: &str) -> Result<Option<(u64, String)>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument("bad page token");
    let (ms, id) = s.split_once(':').ok_or_else(bad)?;
    if id.len() > blixard_core::task::MAX_TASK_ID_LEN {
        return Err(bad());
    }
    Ok(Some((ms.parse().map_err(|_| bad())?, id.to_string())))
}

#[cfg(test)]
mod paging_tests {
    use super::*;

    #[test]
    fn pages_are_bounded_and_chain_by_token() {
        let items: Vec<u64> = (0..10).collect();
        let msg = |v: &u64| pb::Member {
            id: *v,
            addr: "x".repeat(600_000),
            role: String::new(),
        };
        // Bytes: two 600 kB items pass 1 MiB, so the page ends after the second.
        let (got, next) = page(items.iter(), 0, msg, |v| v.to_string());
        assert_eq!((got.len(), next.as_str()), (2, "1"));
        // Count: a small limit.
        let small = |v: &u64| pb::Member {
            id: *v,
            addr: String::new(),
            role: String::new(),
        };
        let (got, next) = page(items.iter(), 4, small, |v| v.to_string());
        assert_eq!(
            (got.iter().map(|m| m.id).collect::<Vec<_>>(), next.as_str()),
            (vec![0, 1, 2, 3], "3")
        );
        // The last page has no token.
        let (got, next) = page(items[8..].iter(), 4, small, |v| v.to_string());
        assert_eq!((got.len(), next.as_str()), (2, ""));
        assert_eq!(
            parse_task_token("12:t-1").unwrap(),
            Some((12, "t-1".to_string()))
        );
        assert!(parse_task_token("nonsense").is_err());
    }
}
