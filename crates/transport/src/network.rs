//! The client half of the peer network: openraft's RPCs sent over gRPC.
//!
//! Each Raft message is serialized as JSON into a `RaftMessage` and sent on the `RaftPeer`
//! service, with the cluster id in the `x-blixard-cluster` header so that a node of another
//! cluster refuses it. Connections are made lazily and kept per peer; peer addresses come from
//! the membership (they are local routing state, not replicated by us).
//!
//! No message exceeds `MAX_PEER_MESSAGE`: an `AppendEntries` batch that would is cut to the
//! entries that fit and reported to openraft as a partial success (it sends the rest next), and
//! snapshots stream in chunks ([`crate::chunks`]). A single entry always fits: proposals above
//! `MAX_ENTRY_BYTES` are refused before they reach the log ([`check_entry_size`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb::RaftMessage;
use blixard_api::{
    RaftPeerClient, CLUSTER_HEADER, MAX_ENTRY_BYTES, MAX_PEER_MESSAGE, SNAPSHOT_CHUNK,
};
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

use crate::chunks::SnapshotHeader;
use crate::contact::PeerContact;
use crate::{NodeId, SnapshotData, StoreMetrics, TypeConfig};

type C = TypeConfig;

/// TLS client configuration a node speaks to its peers with (its node certificate).
pub type TlsConfig = Arc<rustls::ClientConfig>;

/// Creates peer clients; holds the cluster id every request is tagged with and the node's TLS
/// client configuration.
#[derive(Clone)]
pub struct PeerNetwork {
    cluster_id: Arc<str>,
    tls: TlsConfig,
    metrics: StoreMetrics,
    contact: Arc<PeerContact>,
}

impl PeerNetwork {
    /// Records every reply from a peer in `contact` (see [`PeerContact`]).
    pub fn with_contact(mut self, contact: Arc<PeerContact>) -> Self {
        self.contact = contact;
        self
    }

    /// `metrics` counts the snapshot chunks sent and the batches cut to size.
    pub fn new(cluster_id: impl Into<Arc<str>>, tls: TlsConfig, metrics: StoreMetrics) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            tls,
            metrics,
            contact: Arc::default(),
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
            metrics: self.metrics.clone(),
            contact: self.contact.clone(),
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
    metrics: StoreMetrics,
    contact: Arc<PeerContact>,
}

/// Builds a lazily-connecting TLS channel to a peer or client address.
pub fn channel(addr: &str, tls: &TlsConfig) -> Result<Channel, tonic::transport::Error> {
    blixard_pki::channel(addr, tls.clone())
}

/// A peer client with the peer message limits.
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
    Ok(tagged(cluster_id, RaftMessage { data }, timeout))
}

/// Wraps a message (or a stream of them) as a peer request carrying the cluster id.
fn tagged<T>(cluster_id: &str, msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = cluster_id.parse() {
        req.metadata_mut().insert(CLUSTER_HEADER, v);
    }
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    req
}

/// Bytes of JSON a value encodes to, without keeping the encoding.
pub fn encoded_len<T: Serialize>(v: &T) -> Result<usize, serde_json::Error> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v)?;
    Ok(c.0)
}

/// Refuses a request whose log entry would be larger than `MAX_ENTRY_BYTES`, so that every
/// entry fits in a peer message. Called before anything is proposed.
pub fn check_entry_size(req: &blixard_core::Request) -> Result<(), String> {
    let n = encoded_len(req).map_err(|e| format!("cannot encode the request: {e}"))?;
    if n > MAX_ENTRY_BYTES {
        return Err(format!(
            "the {} request is {n} bytes encoded, more than the {MAX_ENTRY_BYTES} bytes a log entry may have: make it smaller",
            req.command.kind()
        ));
    }
    Ok(())
}

/// JSON bytes an `AppendEntries` request may take: the peer limit, less the protobuf framing
/// of the `RaftMessage` around it (a tag and a length: a few bytes).
pub const APPEND_BUDGET: usize = MAX_PEER_MESSAGE - 64;

/// Cuts `req` to the longest prefix of its entries whose encoding fits in `budget` bytes
/// (at least one entry). Returns the encoding and, when entries were left out, the log id of
/// the last one sent.
pub fn fit_append(
    mut req: AppendEntriesRequest<C>,
    budget: usize,
) -> Result<(Vec<u8>, Option<openraft::alias::LogIdOf<C>>), String> {
    let data = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    if data.len() <= budget || req.entries.len() <= 1 {
        if data.len() > budget {
            return Err(format!(
                "a log entry of {} bytes does not fit in a peer message ({budget} bytes)",
                data.len()
            ));
        }
        return Ok((data, None));
    }
    let entries = std::mem::take(&mut req.entries);
    // The request without entries ("entries":[]), then each entry and its comma.
    let mut used = encoded_len(&req).map_err(|e| e.to_string())?;
    let mut keep = 0;
    for e in &entries {
        let n = encoded_len(e).map_err(|e| e.to_string())? + 1;
        if used + n > budget && keep > 0 {
            break;
        }
        used += n;
        keep += 1;
    }
    let mut entries = entries;
    entries.truncate(keep);
    let last = entries.last().map(|e| e.log_id);
    req.entries = entries;
    let data = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    if data.len() > budget {
        return Err(format!(
            "a log entry of {} bytes does not fit in a peer message ({budget} bytes)",
            data.len()
        ));
    }
    Ok((data, last))
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
        let data = serde_json::to_vec(req).map_err(|e| CallError::Network(e.to_string()))?;
        self.call_raw(rpc, data, timeout).await
    }

    async fn call_raw<Resp: DeserializeOwned>(
        &mut self,
        rpc: &'static str,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let mut client = self.client()?;
        let request = tagged(&self.cluster_id, RaftMessage { data }, Some(timeout));
        let res = match rpc {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            "pre_vote" => client.pre_vote(request).await,
            _ => return Err(CallError::Network(format!("unknown rpc {rpc}"))),
        };
        self.reply(rpc, res)
    }

    fn reply<Resp: DeserializeOwned>(
        &self,
        rpc: &'static str,
        res: Result<tonic::Response<RaftMessage>, tonic::Status>,
    ) -> Result<Resp, CallError> {
        if res.is_ok() {
            self.contact.heard(self.target);
        }
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

    /// Streams a snapshot in chunks of at most `chunk` bytes.
    async fn send_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        chunk: usize,
        timeout: Duration,
    ) -> Result<SnapshotResponse<C>, CallError> {
        let mut client = self.client()?;
        let data = snapshot.snapshot.into_inner();
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
            total: data.len() as u64,
        }
        .encode()
        .map_err(|e| CallError::Network(e.to_string()))?;
        tracing::info!(
            target_node = self.target,
            bytes = data.len(),
            chunk,
            "sending snapshot"
        );
        let sent = self.metrics.snapshot_chunks_sent.clone();
        let chunks = crate::chunks::split(header, data, chunk).inspect(move |_| {
            sent.inc();
        });
        let request = tagged(
            &self.cluster_id,
            futures::stream::iter(chunks),
            Some(timeout),
        );
        let res = client.install_snapshot(request).await;
        self.reply("snapshot", res)
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
        let (data, cut) =
            fit_append(req, APPEND_BUDGET).map_err(|m| rpc_err(CallError::Network(m)))?;
        let resp = self
            .call_raw("append", data, option.hard_ttl())
            .await
            .map_err(rpc_err)?;
        match (resp, cut) {
            // Only a prefix was sent: openraft sends the rest next.
            (AppendEntriesResponse::Success, Some(last)) => {
                self.metrics.appends_split.inc();
                Ok(AppendEntriesResponse::PartialSuccess(Some(last)))
            }
            (resp, _) => Ok(resp),
        }
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

    async fn pre_vote(
        &mut self,
        req: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call("pre_vote", &req, option.hard_ttl())
            .await
            .map_err(rpc_err)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let chunk = option
            .snapshot_chunk_size()
            .unwrap_or(SNAPSHOT_CHUNK)
            .clamp(1, SNAPSHOT_CHUNK);
        // Snapshots can be large; give them more time than a heartbeat.
        let call = self.send_snapshot(vote, snapshot, chunk, Duration::from_secs(60));
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

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::spec::{MAX_CMDLINE_LEN, MAX_LABELS, MAX_LABEL_LEN, MAX_PATH_LEN};
    use blixard_core::task::{MAX_TASK_COMMAND_BYTES, MAX_TASK_ENV, MAX_TASK_ENV_BYTES};
    use blixard_core::{Command, Request, TaskSpec, VmSpec};

    /// A string of `n` bytes that JSON escapes most expensively (`\u0001`: 6 bytes each).
    fn worst(n: usize) -> String {
        "\u{1}".repeat(n)
    }

    fn labels(tag: char) -> std::collections::BTreeMap<String, String> {
        (0..MAX_LABELS)
            .map(|i| {
                let k = format!("{tag}{i:02}{}", "k".repeat(MAX_LABEL_LEN - 3));
                (k, "v".repeat(MAX_LABEL_LEN))
            })
            .collect()
    }

    #[test]
    fn the_largest_valid_requests_fit_in_a_log_entry() {
        let mut vm = VmSpec::new("a".repeat(63));
        vm.kernel = Some(worst(MAX_PATH_LEN));
        vm.initrd = Some(worst(MAX_PATH_LEN));
        vm.disk_image = Some(worst(MAX_PATH_LEN));
        vm.cmdline = Some(worst(MAX_CMDLINE_LEN));
        vm.labels = labels('l');
        vm.constraints = labels('c');
        vm.anti_affinity = Some("g".repeat(MAX_LABEL_LEN));
        vm.validate().expect("a valid spec");
        let mut task = TaskSpec::new(vec![worst(MAX_TASK_COMMAND_BYTES)]);
        let per = MAX_TASK_ENV_BYTES / MAX_TASK_ENV;
        task.env = (0..MAX_TASK_ENV)
            .map(|i| (format!("K{i:02}"), worst(per - 3)))
            .collect();
        task.validate().expect("a valid task");
        for (what, cmd) in [
            ("vm", Command::CreateVm { spec: vm }),
            (
                "task",
                Command::SubmitTask {
                    id: "t".repeat(64),
                    spec: task,
                },
            ),
        ] {
            let mut req = Request::new(cmd, u64::MAX);
            req.request_id = Some("r".repeat(128));
            let n = encoded_len(&req).unwrap();
            println!("largest valid {what} request: {n} bytes encoded");
            assert!(n <= MAX_ENTRY_BYTES / 4, "{what}: {n} bytes");
            check_entry_size(&req).unwrap();
        }
        // Above the limit: refused with the sizes.
        let mut vm = VmSpec::new("big");
        vm.cmdline = Some("x".repeat(MAX_ENTRY_BYTES));
        let e = check_entry_size(&Request::new(Command::CreateVm { spec: vm }, 0)).unwrap_err();
        assert!(e.contains("a log entry may have"), "{e}");
    }

    fn append(entries: usize, bytes: usize) -> AppendEntriesRequest<C> {
        let lid = |t: u64, i: u64| serde_json::json!({"leader_id": {"term": t, "node_id": 1}, "index": i});
        let entries: Vec<_> = (0..entries)
            .map(|i| {
                let mut spec = VmSpec::new(format!("vm-{i}"));
                spec.cmdline = Some("x".repeat(bytes));
                let req = Request::new(Command::CreateVm { spec }, 0);
                serde_json::json!({"log_id": lid(2, 11 + i as u64), "payload": {"Normal": req}})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "vote": {"leader_id": {"term": 2, "node_id": 1}, "committed": true},
            "prev_log_id": lid(1, 10),
            "entries": entries,
            "leader_commit": lid(2, 12),
        }))
        .unwrap()
    }

    #[test]
    fn append_batches_are_cut_to_the_peer_limit() {
        // Small batches go as they are.
        let (data, cut) = fit_append(append(20, 100), APPEND_BUDGET).unwrap();
        assert!(cut.is_none());
        let back: AppendEntriesRequest<C> = serde_json::from_slice(&data).unwrap();
        assert_eq!(back.entries.len(), 20);
        // 300 entries of 100 KiB: cut to the prefix that fits, ending at its last log id.
        let (data, cut) = fit_append(append(300, 100 << 10), APPEND_BUDGET).unwrap();
        assert!(data.len() <= APPEND_BUDGET, "{} bytes", data.len());
        let back: AppendEntriesRequest<C> = serde_json::from_slice(&data).unwrap();
        let n = back.entries.len();
        assert!(n > 1 && n < 300, "{n} entries");
        assert_eq!(cut, Some(back.entries[n - 1].log_id));
        assert_eq!(back.entries[0].log_id.index, 11);
        // One more entry would not have fitted.
        let (more, _) = fit_append(append(n + 1, 100 << 10), usize::MAX).unwrap();
        assert!(more.len() > APPEND_BUDGET);
        // A single entry at the entry limit always fits.
        let (data, cut) = fit_append(append(2, MAX_ENTRY_BYTES - 300), APPEND_BUDGET).unwrap();
        assert!(data.len() <= APPEND_BUDGET);
        assert!(cut.is_some());
        // One entry above the budget cannot be sent: an error, not a panic.
        assert!(fit_append(append(1, 4096), 1024).is_err());
    }
}
