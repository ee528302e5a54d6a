//! Log streaming: VM consoles and task output (served here or forwarded to the node that
//! holds them) and the event stream.

use std::sync::Arc;

use blixard_api::pb;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::error::NodeError;
use crate::node::Node;

use super::{is_forwarded, Api};

/// Console bytes sent per message.
const LOG_CHUNK: usize = 64 * 1024;

/// Streams `path` from the start; with `follow`, keeps sending what is appended until the
/// client goes away or the node stops.
pub(super) fn stream_file(
    node: Arc<Node>,
    path: std::path::PathBuf,
    follow: bool,
) -> Result<LogStream, Status> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::LogChunk, Status>>(8);
    let stopped = node.clone();
    node.spawn_stream(async move {
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
                _ = stopped.stopped() => return,
            }
        }
    })?;
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// A client for the node (id, address) that holds a VM's console or a task's output.
pub(crate) fn owner_client(
    node: &Node,
    owner: &(u64, Option<String>),
) -> Result<blixard_api::BlixardClient<tonic::transport::Channel>, Status> {
    let addr = owner
        .1
        .as_deref()
        .ok_or_else(|| Status::unavailable(format!("node {} has no known address", owner.0)))?;
    let ch = blixard_transport::network::channel(addr, &node.tls.client)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(blixard_api::BlixardClient::new(ch))
}

pub(super) type LogStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

pub(super) type EventsStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::EventMsg, Status>> + Send>>;

/// The streaming handlers of the client service: consoles, task output and events.
impl Api {
    pub(super) async fn vm_logs_stream(
        &self,
        r: GrpcRequest<pb::VmLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
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
            )?));
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

    pub(super) async fn task_logs_stream(
        &self,
        r: GrpcRequest<pb::TaskRef>,
    ) -> Result<Response<LogStream>, Status> {
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
            return Ok(Response::new(stream_file(self.node.clone(), path, false)?));
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

    pub(super) async fn events_stream(
        &self,
        r: GrpcRequest<pb::EventsRequest>,
    ) -> Result<Response<EventsStream>, Status> {
        use tokio_stream::StreamExt;
        let req = r.into_inner();
        let rx = crate::events::follow(self.node.clone(), req.since, req.follow)?;
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
}
