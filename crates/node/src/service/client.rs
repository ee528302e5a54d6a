//! The client services (`Blixard`, `Networks`): handlers parse and convert; the behaviour
//! lives in [`Node`].

use blixard_api::pb;
use blixard_api::pb::blixard_server::Blixard;
use blixard_core::{guards, Command, Reply, TaskSpec};
use tonic::{Request as GrpcRequest, Response, Status};

use crate::error::NodeError;
use crate::security;

use super::logs::{EventsStream, LogStream};
use super::paging::{page, parse_task_token};
use super::{is_forwarded, node_info, parse_spec, request_id, task_reply, Api};

#[tonic::async_trait]
impl Blixard for Api {
    type VmLogsStream = LogStream;
    async fn vm_logs(
        &self,
        r: GrpcRequest<pb::VmLogsRequest>,
    ) -> Result<Response<Self::VmLogsStream>, Status> {
        self.vm_logs_stream(r).await
    }

    type TaskLogsStream = LogStream;

    type ConsoleStream = crate::console::ConsoleStream;

    async fn console(
        &self,
        r: GrpcRequest<tonic::Streaming<pb::ConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let fwd = is_forwarded(&r);
        let s = crate::console::serve(self.node.clone(), fwd, r.into_inner()).await?;
        Ok(Response::new(s))
    }

    type EventsStream = EventsStream;

    async fn events(
        &self,
        r: GrpcRequest<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        self.events_stream(r).await
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
        self.task_logs_stream(r).await
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
            // Only a leader heard from within the election timeout (see `quorum`).
            leader_id: self.node.heard_leader(),
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
        let req = r.into_inner();
        if !req.force && !fwd {
            self.check_remove(req.node_id, false).await?;
        }
        self.node.remove_member(req.node_id, fwd).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn leave(&self, r: GrpcRequest<pb::LeaveRequest>) -> Result<Response<pb::Empty>, Status> {
        if !r.get_ref().force {
            self.check_remove(self.node.id, true).await?;
        }
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
        let stale = r.get_ref().stale;
        self.read(stale).await?;
        // Last heartbeats: the leader's detector's (local knowledge, never replicated), from
        // this node when it leads, else as the leader sent them with the read index.
        let heard = self
            .node
            .liveness
            .heartbeat_view(self.node.id, self.node.is_leader())
            .filter(|_| !stale || self.node.is_leader());
        let a = self.node.state.read();
        let nodes = a
            .state
            .workers
            .values()
            .map(|w| {
                let mut n = node_info(&a.state, w);
                if let Some((observer, ms)) = &heard {
                    n.last_heartbeat_ms_ago = ms.get(&w.id).copied();
                    n.heartbeat_observer = n.last_heartbeat_ms_ago.map(|_| *observer);
                }
                n
            })
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

    async fn explain_move(
        &self,
        r: GrpcRequest<pb::VmRef>,
    ) -> Result<Response<pb::MoveExplanation>, Status> {
        let name = r.into_inner().name;
        self.node.read_barrier().await?;
        let a = self.node.state.read();
        let Some(vm) = a.state.vms.get(&name) else {
            return Err(
                NodeError::Rejected(blixard_core::ApplyError::not_found("VM", &name)).into(),
            );
        };
        Ok(Response::new(pb::MoveExplanation {
            node_id: vm.node_id,
            blocker: blixard_core::scheduler::move_blocker(a.state.placement_view(), &name),
            name,
        }))
    }

    async fn set_scheduler_settings(
        &self,
        r: GrpcRequest<pb::SchedulerSettings>,
    ) -> Result<Response<pb::SchedulerSettings>, Status> {
        let req = r.into_inner();
        let rid = request_id(&req.request_id)?;
        if !req.strategy.is_empty() || req.vcpu_overcommit_pct != 0 {
            self.node.read_barrier().await?;
            let current = self.node.state.read().state.settings;
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
        if !req.force {
            // The guard reads linearizably: a VM started a moment ago is seen running.
            self.read(false).await?;
            let a = self.node.state.read();
            if let Some(why) = a.state.vms.get(&req.name).and_then(guards::delete_vm_risk) {
                return Err(Status::failed_precondition(why));
            }
        }
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

/// The cluster settings as the API shows them (scheduler and lease).
pub(super) fn settings_reply(s: &blixard_core::ClusterState) -> pb::SchedulerSettings {
    pb::SchedulerSettings {
        strategy: s.settings.strategy.as_str().into(),
        vcpu_overcommit_pct: s.settings.vcpu_overcommit_pct,
        request_id: String::new(),
        lease_ms: s.liveness.lease_ms,
        grace_ms: s.liveness.grace_ms,
        heartbeat_ms: s.liveness.heartbeat_ms,
    }
}

pub(super) fn network_reply(reply: Reply) -> Result<pb::NetworkInfo, Status> {
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
