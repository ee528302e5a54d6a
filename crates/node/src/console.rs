//! `vm console`: a VM's serial console over a bidirectional gRPC stream.
//!
//! The VM's process never waits for a viewer. Guest output goes to `console.log`, a regular
//! file its supervisor appends to (see `blixard_vmm::qemu`); every viewer tails that file on
//! its own, from its own offset, so any number of viewers can watch and a slow or stuck one
//! only delays itself. Input goes to the `console.in` FIFO the VM's process reads as its
//! stdin; writes are non-blocking (a guest that does not read its serial input fills the pipe,
//! then the viewer's input waits, never the VM). Several viewers may type at once: each
//! message is written whole (up to `PIPE_BUF` bytes are atomic).
//!
//! Any node serves the stream: one that does not run the VM forwards it, both ways, to the
//! node that does (marked as forwarded so it is forwarded only once).

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::error::NodeError;
use crate::node::Node;

/// The stream of console output a client receives.
pub type ConsoleStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ConsoleOutput, Status>> + Send>>;

/// How often a viewer looks for new console output.
const POLL: Duration = Duration::from_millis(50);
/// How long a viewer's input may wait for the guest to read its serial input.
const INPUT_PATIENCE: Duration = Duration::from_secs(10);
/// Largest chunk sent to a viewer.
const CHUNK: usize = 16 * 1024;
/// Largest `replay` honoured.
const MAX_REPLAY: u64 = 1 << 20;
/// Largest input message (bytes), so one viewer's message stays one atomic pipe write.
pub const MAX_INPUT: usize = 4096;

/// Serves one console session (see the module docs). `forwarded`: the request came from
/// another member, so it is not forwarded again.
pub async fn serve(
    node: Arc<Node>,
    forwarded: bool,
    mut input: Streaming<pb::ConsoleInput>,
) -> Result<ConsoleStream, Status> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the console stream ended before naming a VM"))?;
    blixard_core::spec::validate_name(&first.name).map_err(NodeError::Rejected)?;
    check_input(&first)?;
    node.read_barrier().await?;
    let owner = {
        let a = node.state.read();
        let vm = a
            .state
            .vms
            .get(&first.name)
            .ok_or_else(|| Status::not_found(format!("VM '{}' not found", first.name)))?;
        let id = vm.node_id.ok_or_else(|| {
            Status::failed_precondition(format!(
                "VM '{}' is not placed on any node yet: no console (see `blixard vm status {}`)",
                first.name, first.name
            ))
        })?;
        (id, a.state.workers.get(&id).map(|w| w.addr.clone()))
    };
    if owner.0 != node.id {
        if forwarded {
            return Err(Status::unavailable(format!(
                "VM '{}' is not on node {}",
                first.name, node.id
            )));
        }
        return forward(&node, &owner, first, input).await;
    }
    local(node, first, input).await
}

fn check_input(m: &pb::ConsoleInput) -> Result<(), Status> {
    if m.data.len() > MAX_INPUT {
        return Err(Status::invalid_argument(format!(
            "console input messages are at most {MAX_INPUT} bytes (got {})",
            m.data.len()
        )));
    }
    Ok(())
}

/// Relays the whole session to the node that runs the VM.
async fn forward(
    node: &Arc<Node>,
    owner: &(u64, Option<String>),
    first: pb::ConsoleInput,
    mut input: Streaming<pb::ConsoleInput>,
) -> Result<ConsoleStream, Status> {
    let (tx, rx) = mpsc::channel::<pb::ConsoleInput>(16);
    let _ = tx.send(first).await;
    node.spawn_stream(async move {
        // Ends (closing the upstream's input) when the client ends its input or goes away.
        while let Ok(Some(m)) = input.message().await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    })?;
    let upstream = crate::service::logs::owner_client(node, owner)?
        .console(crate::node::forwarded_request(ReceiverStream::new(rx)))
        .await?
        .into_inner();
    Ok(Box::pin(upstream))
}

/// Opens the console input FIFO for writing without blocking. Fails when no process reads it
/// (the VM is not running here).
fn open_input(path: &Path, name: &str, node_id: u64) -> Result<std::fs::File, Status> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // ENXIO: a FIFO nobody reads; ENOENT: never started (or removed).
            Some(nix::libc::ENXIO) | Some(nix::libc::ENOENT) => {
                Status::failed_precondition(format!(
                    "VM '{name}' is not running on node {node_id}: its console is closed (start it with `blixard vm start {name}`)"
                ))
            }
            _ => Status::internal(format!("opening {}: {e}", path.display())),
        })
}

async fn local(
    node: Arc<Node>,
    first: pb::ConsoleInput,
    mut input: Streaming<pb::ConsoleInput>,
) -> Result<ConsoleStream, Status> {
    let name = first.name.clone();
    let in_path = node.driver.console_input_path(&name).ok_or_else(|| {
        Status::failed_precondition(format!(
            "VM '{name}' runs under a driver without console input (the process driver); use `blixard vm logs {name} --follow` to watch its output"
        ))
    })?;
    let out_path = node.driver.console_path(&name);
    let mut fifo = open_input(&in_path, &name, node.id)?;
    let len = std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
    let offset = len.saturating_sub(u64::from(first.replay).min(MAX_REPLAY));
    tracing::info!(vm = %name, "console session opened");

    let (tx, rx) = mpsc::channel::<Result<pb::ConsoleOutput, Status>>(16);
    // Input: the client's messages, in order, into the FIFO.
    let itx = tx.clone();
    let iname = name.clone();
    node.spawn_stream(async move {
        let mut next = Some(first);
        loop {
            let m = match next.take() {
                Some(m) => m,
                None => match input.message().await {
                    Ok(Some(m)) => m,
                    // The client ended its input (it may still read) or went away.
                    Ok(None) | Err(_) => return,
                },
            };
            if let Err(s) = check_input(&m) {
                let _ = itx.send(Err(s)).await;
                return;
            }
            if let Err(s) = write_all(&mut fifo, &m.data, &iname).await {
                let _ = itx.send(Err(s)).await;
                return;
            }
        }
    })?;
    // Output: everything appended to console.log from `offset` on.
    node.clone()
        .spawn_stream(tail(node, out_path, offset, tx, name))?;
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// Writes `data` to the non-blocking FIFO, waiting (this viewer only) while the pipe is full.
async fn write_all(fifo: &mut std::fs::File, mut data: &[u8], name: &str) -> Result<(), Status> {
    let started = tokio::time::Instant::now();
    while !data.is_empty() {
        match fifo.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if started.elapsed() > INPUT_PATIENCE {
                    return Err(Status::resource_exhausted(format!(
                        "VM '{name}' has not read its console input for {}s: input dropped",
                        INPUT_PATIENCE.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                return Err(Status::failed_precondition(format!(
                    "VM '{name}' stopped: its console is closed"
                )))
            }
            Err(e) => return Err(Status::internal(format!("console input: {e}"))),
        }
    }
    Ok(())
}

/// Streams what is appended to `path` after `offset` until the viewer goes away or the node
/// stops. A file that shrank (the VM was started again) is read from its start.
async fn tail(
    node: Arc<Node>,
    path: PathBuf,
    mut offset: u64,
    tx: mpsc::Sender<Result<pb::ConsoleOutput, Status>>,
    name: String,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let read = {
            let path = path.clone();
            let mut buf = std::mem::take(&mut buf);
            tokio::task::spawn_blocking(move || {
                let r = read_at(&path, offset, &mut buf);
                (r, buf)
            })
            .await
        };
        let Ok((result, back)) = read else { return };
        buf = back;
        match result {
            Ok((start, n)) if n > 0 => {
                offset = start + n as u64;
                let chunk = pb::ConsoleOutput {
                    data: buf[..n].to_vec(),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    break;
                }
                continue;
            }
            Ok((start, _)) => offset = start,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!("reading the console: {e}"))))
                    .await;
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => break,
            _ = node.stopped() => break,
        }
    }
    tracing::info!(vm = %name, "console session closed");
}

/// Reads from `offset` (from 0 when the file is now shorter); (where it read from, bytes).
fn read_at(path: &Path, offset: u64, buf: &mut [u8]) -> std::io::Result<(u64, usize)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok((offset, 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    let n = f.read(buf)?;
    Ok((start, n))
}
