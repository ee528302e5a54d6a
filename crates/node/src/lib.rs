//! The blixard daemon.
//!
//! [`start`] wires a node together: it resolves the node's identity from its data directory
//! (or bootstraps/joins a cluster), opens the redb stores, starts openraft, serves the client
//! and peer gRPC services on one port, and runs the background tasks (worker registration,
//! learner promotion). [`NodeHandle::shutdown`] stops everything and waits for it.
//!
//! Everything distributed goes through Raft: this crate keeps only local state (the identity
//! file, connections, the Raft handle).

pub mod authz;
pub mod blocking;
pub mod capabilities;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod executor;
pub mod hostnet;
pub mod http;
mod leader_retry;
pub mod limits;
pub mod liveness;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod quorum;
pub mod security;
pub mod service;
pub mod snapshot;
pub mod stopping;
pub mod streams;
pub mod task_runner;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blixard_api::pb::blixard_server::BlixardServer;
use blixard_api::pb::enroll_server::EnrollServer;
use blixard_api::pb::networks_server::NetworksServer;
use blixard_api::pb::raft_peer_server::RaftPeerServer;
use blixard_api::{pb, BlixardClient, MAX_CLIENT_MESSAGE, MAX_CLIENT_REPLY, MAX_PEER_MESSAGE};
use blixard_core::Command;
use blixard_raft::Raft;
use blixard_transport::PeerNetwork;
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Bootstrap, NodeConfig};
pub use error::{NodeError, RetryReason};
pub use node::Node;

use crate::meta::NodeMeta;

/// A started node: its address, the shared node, and the tasks to wait for.
pub struct NodeHandle {
    pub node: Arc<Node>,
    pub addr: String,
    tasks: Vec<JoinHandle<()>>,
}

impl NodeHandle {
    /// Stops serving, stops Raft and waits for every task of this node.
    pub async fn shutdown(self) {
        self.node.request_shutdown();
        self.wait().await;
    }

    /// Waits until the node stops (after a shutdown request, or after it left the cluster).
    pub async fn wait(self) {
        self.node.stopped().await;
        for t in self.tasks {
            let _ = t.await;
        }
        // Every stream producer ends with the node; this waits for the last of them.
        self.node.streams.close(Duration::from_secs(5)).await;
        if let Err(e) = self.node.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        tracing::info!(node = self.node.id, "stopped");
    }
}

/// Starts a node and returns once it serves requests and has entered its cluster.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    config.validate()?;
    let initial_lease = config.initial_liveness()?;
    let existing = meta::load(&config.data_dir)?;
    let dir = config.data_dir.display().to_string();
    match (&existing, &config.bootstrap) {
        (Some(m), _) if m.left => {
            return Err(NodeError::Config(format!(
                "{dir} belongs to node {} which left its cluster; start with a new --data-dir",
                m.node_id
            )))
        }
        (Some(m), _) if m.node_id != config.id => {
            return Err(NodeError::Config(format!("{dir} holds node {}, not node {}", m.node_id, config.id)))
        }
        (Some(m), Bootstrap::Init) => {
            return Err(NodeError::Config(format!(
                "{dir} already holds cluster {}; start without --init to resume it",
                m.cluster_id
            )))
        }
        (None, Bootstrap::Resume) => {
            return Err(NodeError::Config(format!("{dir} holds no cluster: start with --init or --join ADDR --token TOKEN")))
        }
        (None, Bootstrap::Join(_)) if config.join_token.is_none() => {
            return Err(NodeError::Config(
                "--join needs a join token: --token TOKEN or --token-file FILE (create one on a member with `blixard cluster token create`)".into(),
            ))
        }
        _ => {}
    }

    // Reuse the recorded address on restart when asked for any port.
    let bind: SocketAddr = match (&existing, config.listen.port()) {
        (Some(m), 0) => m.addr.parse().unwrap_or(config.listen),
        _ => config.listen,
    };
    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| NodeError::io(format!("cannot listen on {bind}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| NodeError::io("reading the bound address", e))?;
    let addr = config
        .advertise
        .clone()
        .unwrap_or_else(|| local.to_string());

    let http_listener = match config.http {
        Some(a) => Some(bind_http(&config, a).await?),
        None => None,
    };
    let http_addr = http_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string());
    // The node's identity: nothing is written for a joiner until the cluster accepted its token.
    let (cluster_id, join_via, tls) = match (&existing, &config.bootstrap) {
        (Some(m), _) => (
            m.cluster_id.clone(),
            None,
            security::NodeTls::load(&config.data_dir, config.id)?,
        ),
        (None, Bootstrap::Join(seed)) => {
            let token = config.join_token.as_deref().unwrap_or_default();
            let (cluster_id, tls) = security::enroll(seed, token, config.id, &addr).await?;
            tls.store(&config.data_dir)?;
            (cluster_id, Some(seed.clone()), tls)
        }
        (None, _) => {
            let cluster_id = uuid::Uuid::new_v4().to_string();
            let tls = security::NodeTls::init(&config.data_dir, &cluster_id, config.id)?;
            (cluster_id, None, tls)
        }
    };
    let tls = Arc::new(tls);

    let run_root = config.data_dir.join("vms");
    let driver = executor::make_driver(&config.driver, run_root.clone(), &run_root.join("lease"))?;
    let (log, sm) = blixard_raft::open_stores(&config.data_dir.join("raft")).map_err(|source| {
        NodeError::Storage {
            what: format!("opening stores in {dir}"),
            source,
        }
    })?;
    let state = sm.shared();
    let events = sm.events();
    let store_metrics = sm.metrics();
    let raft_config = openraft::Config {
        cluster_name: cluster_id.clone(),
        heartbeat_interval: millis(config.raft.heartbeat),
        election_timeout_min: millis(config.raft.election_min),
        election_timeout_max: millis(config.raft.election_max),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every),
        max_in_snapshot_log_to_keep: config.raft.keep_logs,
        install_snapshot_timeout: 10_000,
        snapshot_max_chunk_size: config.raft.snapshot_chunk as u64,
        // A node that merely missed heartbeats (a starved process on a loaded machine) asks
        // first whether it could win; it cannot while the others still hear the leader, so it
        // never bumps the term and deposes a healthy leader (ARCHITECTURE.md, "Raft timing").
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Config(e.to_string()))?;
    let liveness = liveness::Liveness::default();
    let network = PeerNetwork::new(
        cluster_id.as_str(),
        tls.client.clone(),
        store_metrics.clone(),
    )
    .with_contact(liveness.contact.clone());
    let raft = Raft::new(config.id, Arc::new(raft_config), network, log, sm)
        .await
        .map_err(|e| NodeError::Raft(format!("starting Raft: {e}")))?;

    let (shutdown, _) = watch::channel(false);
    let node = Arc::new(Node {
        id: config.id,
        addr: addr.clone(),
        cluster_id: cluster_id.as_str().into(),
        raft,
        state,
        events,
        metrics: metrics::Metrics {
            store: store_metrics,
            ..Default::default()
        },
        http_addr,
        config: config.clone(),
        shutdown,
        membership_lock: tokio::sync::Mutex::new(()),
        receiving_snapshot: tokio::sync::Mutex::new(()),
        driver: driver.clone(),
        liveness,
        peers: Default::default(),
        tls: tls.clone(),
        streams: Default::default(),
    });
    let mut identity = NodeMeta {
        node_id: config.id,
        cluster_id: cluster_id.clone(),
        addr: addr.clone(),
        left: false,
    };
    if existing.is_none() && join_via.is_none() {
        // Bootstrap: the initial membership is the first log entry.
        let members =
            std::collections::BTreeMap::from([(config.id, BasicNode { addr: addr.clone() })]);
        match node.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(node = config.id, cluster = %cluster_id, "initialized a new cluster")
            }
            Err(e) => tracing::info!(error = %e, "cluster already initialized"),
        }
    }
    identity.left = false;
    if join_via.is_none() {
        meta::store(&config.data_dir, &identity)?;
    }

    let mut tasks = vec![tokio::spawn(serve(node.clone(), listener))];
    if let Some(l) = http_listener {
        tasks.push(tokio::spawn(http::serve(node.clone(), l)));
    }
    if let Some(seed) = join_via {
        // The identity is recorded only once the cluster accepted it: a refused joiner leaves
        // nothing behind that a restart without flags could resume as a second "node N".
        if let Err(e) = join_cluster(&node, &seed).await {
            node.request_shutdown();
            if let Err(se) = node.raft.shutdown().await {
                tracing::debug!(error = %se, "raft shutdown after a refused join");
            }
            for t in &tasks {
                t.abort();
            }
            forget_identity(&config.data_dir);
            return Err(e);
        }
        meta::store(&config.data_dir, &identity)?;
    }
    match initial_lease {
        Some(cmd) if existing.is_none() && config.bootstrap == Bootstrap::Init => {
            // Before any heartbeat or registration: no lease exists yet, so the cluster's first
            // settings are judged by themselves.
            propose_until_done(node.clone(), cmd, "initial lease settings").await;
        }
        Some(_) => tracing::warn!(
            "--lease-ms, --grace-ms and --liveness-heartbeat-ms only seed a new cluster (--init); \
             this cluster's values stand (change them with `blixard cluster settings`)"
        ),
        None => {}
    }
    tasks.push(tokio::spawn({
        let node = node.clone();
        async move {
            // The admin credential's record first (only the node holding admin.credentials has
            // one to make): once this node is registered as a worker, it is in the state.
            authz::record_bootstrap_admin(node.clone()).await;
            register_worker(node).await;
        }
    }));
    tasks.push(tokio::spawn(housekeeping(node.clone())));
    // One reconciler for VMs and tasks (it carries tasks out through `task_runner`).
    tasks.push(tokio::spawn(
        executor::Executor::new(node.clone(), driver).run(),
    ));
    tasks.push(tokio::spawn(liveness::heartbeat_loop(node.clone())));
    tasks.push(tokio::spawn(liveness::leader_loop(node.clone())));
    tracing::info!(node = config.id, %addr, cluster = %cluster_id, "node started");
    Ok(NodeHandle { node, addr, tasks })
}

/// Starts a node and runs it until `shutdown` resolves or the node leaves its cluster.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let handle = start(config).await?;
    let node = handle.node.clone();
    tokio::select! {
        _ = shutdown => {
            tracing::info!("shutdown requested");
            // Before anything stops: the cluster shows it as shutting down, not up.
            node.announce_shutdown().await;
        }
        _ = node.stopped() => {}
    }
    handle.shutdown().await;
    Ok(())
}

/// Asks the cluster (through `seed`, which forwards to the leader) to add this node.
async fn join_cluster(node: &Arc<Node>, seed: &str) -> Result<(), NodeError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ch = blixard_transport::network::channel(seed, &node.tls.client)
            .map_err(|e| NodeError::Config(format!("bad address {seed}: {e}")))?;
        let mut c = BlixardClient::new(ch);
        match c
            .join(pb::JoinRequest {
                node_id: node.id,
                addr: node.addr.clone(),
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                tracing::info!(
                    node = node.id,
                    voter = r.voter,
                    leader = r.leader_id,
                    "joined the cluster"
                );
                return Ok(());
            }
            // The cluster's answers are final; anything else (unreachable, a connection reset
            // or "transport error" while the leader changes, a timeout) is retried until the
            // deadline, as enrollment does.
            Err(s) => match NodeError::from_status(s) {
                e if e.is_retry() && tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "join: retrying");
                }
                e => {
                    node.request_shutdown();
                    let s = tonic::Status::from(e);
                    return Err(NodeError::Forwarded(tonic::Status::new(
                        s.code(),
                        format!("joining through {seed}: {}", s.message()),
                    )));
                }
            },
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Streams a client may reset before the server accepted them, per connection, before h2
/// answers with GOAWAY (see `serve`).
const PENDING_RESET_STREAMS: usize = 1024;

/// Binds the HTTP(S) listener and records its address in `DATA_DIR/http.addr` (port 0 picks one).
async fn bind_http(config: &NodeConfig, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::io(format!("cannot listen for HTTP on {addr}"), e))?;
    let local = l
        .local_addr()
        .map_err(|e| NodeError::io("reading the bound HTTP address", e))?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| NodeError::io(format!("creating {}", config.data_dir.display()), e))?;
    let file = config.data_dir.join("http.addr");
    std::fs::write(&file, local.to_string())
        .map_err(|e| NodeError::io(format!("writing {}", file.display()), e))?;
    tracing::info!(https = %local, "serving HTTPS: dashboard at https://{local}/ui/");
    Ok(l)
}

/// Serves the client, peer and enrollment services until shutdown, over TLS 1.3 only.
async fn serve(node: Arc<Node>, listener: TcpListener) {
    use tonic::service::interceptor::InterceptedService;
    let api = service::Api { node: node.clone() };
    let stop_node = node.clone();
    let incoming = blixard_pki::incoming(listener, node.tls.server.clone());
    let (n1, n2) = (node.clone(), node.clone());
    let client_auth = move |r| security::authenticate_client(&n1, r);
    let n3 = node.clone();
    let networks_auth = move |r| security::authenticate_client(&n3, r);
    let peer_auth = move |r| security::authenticate_peer(&n2, r);
    let res = tonic::transport::Server::builder()
        // Raft cancels RPCs that outlive their timeout (heartbeats every 50 ms, pre-votes and
        // votes after 500 ms): around a frozen or partitioned node a healthy peer resets many
        // streams on one connection. h2's rapid-reset guard (20 by default) then sent GOAWAY
        // between members and left the cluster without a leader (harness seed 14). A larger
        // bound keeps the guard against floods.
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESET_STREAMS))
        // Bounded work per connection, and a deadline on every request that is not a stream
        // (`limits`): a flood or a stuck handler cannot pile up without end.
        .concurrency_limit_per_connection(limits::MAX_REQUESTS_PER_CONNECTION)
        .layer(limits::RequestTimeoutLayer::default())
        // Every request is authorised here first (role table: `blixard_core::auth`).
        .layer(authz::AuthzLayer { node: node.clone() })
        .add_service(
            blixard_api::pb::auth_server::AuthServer::new(authz::AuthService {
                node: node.clone(),
            })
            .max_decoding_message_size(MAX_CLIENT_MESSAGE),
        )
        .add_service(InterceptedService::new(
            BlixardServer::new(api.clone())
                .max_decoding_message_size(MAX_CLIENT_MESSAGE)
                .max_encoding_message_size(MAX_CLIENT_REPLY),
            client_auth,
        ))
        .add_service(InterceptedService::new(
            NetworksServer::new(api.clone()).max_decoding_message_size(MAX_CLIENT_MESSAGE),
            networks_auth,
        ))
        .add_service(InterceptedService::new(
            RaftPeerServer::new(api)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
            peer_auth,
        ))
        .add_service(
            EnrollServer::new(security::EnrollService { node: node.clone() })
                .max_decoding_message_size(MAX_ENROLL_MESSAGE)
                .max_encoding_message_size(MAX_ENROLL_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, async move { stop_node.stopped().await })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "gRPC server failed");
        node.request_shutdown();
    }
}

/// Largest enrollment message (a token and an address; the reply carries a few PEMs).
const MAX_ENROLL_MESSAGE: usize = 64 * 1024;

/// Removes what a refused joiner wrote in its data directory (its Raft stores, run directory
/// and certificate); the directory itself and anything else in it stay.
fn forget_identity(data_dir: &std::path::Path) {
    for dir in ["raft", "vms", security::TLS_DIR] {
        let p = data_dir.join(dir);
        if let Err(e) = std::fs::remove_dir_all(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), error = %e, "cleaning up after a refused join");
            }
        }
    }
    let _ = std::fs::remove_file(meta::path(data_dir));
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Proposes `cmd` until it is applied (or refused), retrying while there is no leader.
pub(crate) async fn propose_until_done(node: Arc<Node>, cmd: Command, what: &'static str) {
    loop {
        tokio::select! {
            res = node.propose(cmd.clone(), None) => match res {
                Ok(_) => {
                    tracing::info!(node = node.id, what, "applied");
                    return;
                }
                Err(NodeError::Rejected(e)) => {
                    tracing::error!(node = node.id, what, error = %e, "refused");
                    return;
                }
                Err(e) => tracing::debug!(what, error = %e, "retrying"),
            },
            _ = node.stopped() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = node.stopped() => return,
        }
    }
}

/// Registers this node as a worker through Raft (re-registering after a restart updates its
/// detected capacity), retrying until it succeeds or the node stops.
async fn register_worker(node: Arc<Node>) {
    let caps = capabilities::detect(&node.config.data_dir, &node.config.capacity);
    let cmd = Command::RegisterWorker {
        id: node.id,
        addr: node.addr.clone(),
        capacity: caps.capacity,
        kvm: caps.kvm,
        labels: node.config.labels.clone(),
    };
    if matches!(node.config.bootstrap, Bootstrap::Init) {
        ensure_default_network(&node).await;
    }
    loop {
        tokio::select! {
            res = node.propose(cmd.clone(), None) => match res {
                Ok(_) => {
                    tracing::info!(node = node.id, capacity = ?caps.capacity, kvm = caps.kvm, "registered as worker");
                    // A cluster from before networks (or whose first node crashed before
                    // creating it) gets its default network now.
                    let missing = !node.state.read().state.networks.contains_key(blixard_core::network::DEFAULT_NETWORK);
                    if missing {
                        ensure_default_network(&node).await;
                    }
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "worker registration: retrying"),
            },
            _ = node.stopped() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = node.stopped() => return,
        }
    }
}

/// Creates the `default` network from this node's `--network-cidr` unless it exists; retries
/// while there is no leader, gives up (logged) when the cluster refuses it.
async fn ensure_default_network(node: &Arc<Node>) {
    let cidr = node.config.default_network_cidr.clone();
    let cmd = Command::EnsureDefaultNetwork { cidr: cidr.clone() };
    loop {
        tokio::select! {
            res = node.propose(cmd.clone(), None) => match res {
                Ok(_) => {
                    tracing::info!(%cidr, "default network present");
                    return;
                }
                Err(NodeError::Rejected(e)) => {
                    tracing::error!(%cidr, error = %e, "cannot create the default network: VMs without --network get no address");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "default network: retrying"),
            },
            _ = node.stopped() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            _ = node.stopped() => return,
        }
    }
}

/// Periodic work: on the leader, promote caught-up learners and forget departed workers; on
/// every node, stop once the log says this node was removed.
async fn housekeeping(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut was_member = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = node.stopped() => return,
        }
        if node.removed_from_cluster(&mut was_member) {
            tracing::warn!(
                node = node.id,
                "this node was removed from the cluster; stopping its VMs and shutting down"
            );
            node.stop_all_vms().await;
            if let Err(e) = mark_left(&node) {
                tracing::error!(error = %e, "recording departure");
            }
            node.request_shutdown();
            return;
        }
        node.promote_learners().await;
        security::revoke_departed(&node).await;
        node.forget_departed_workers().await;
    }
}

/// Records that this node left its cluster, so its data directory is not resumed.
pub(crate) fn mark_left(node: &Node) -> Result<(), NodeError> {
    let m = NodeMeta {
        node_id: node.id,
        cluster_id: node.cluster_id.to_string(),
        addr: node.addr.clone(),
        left: true,
    };
    meta::store(&node.config.data_dir, &m)
}
