//! `blixard node` without a subcommand: the daemon. Its flags ([`DaemonArgs`]), turned into a
//! [`blixard_node::NodeConfig`] and run until SIGTERM or SIGINT; and the process's logging.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::duration;

pub(crate) mod config_file;

#[derive(Args)]
pub(crate) struct DaemonArgs {
    /// Read the daemon's settings from this TOML file (keys: these flags without the leading
    /// dashes, e.g. `data-dir = "/var/lib/blixard"`, `[labels]`); flags given here win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's id (a positive integer, unique in the cluster, never reused).
    #[arg(long)]
    id: Option<u64>,
    /// Address to serve clients and peers on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Address others reach this node at (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Where this node keeps its Raft log, state and identity.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bootstrap a new cluster with this node as its only voter.
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// Join the cluster through any member (with --token or --token-file).
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// Join token (`blixard cluster token create` on a member).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the join token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// VM driver: qemu or process.
    #[arg(long, default_value = "qemu", value_parser = ["qemu", "process"])]
    driver: String,
    /// Voters the cluster aims for; nodes joining beyond it stay learners.
    #[arg(long, default_value_t = 3)]
    target_voters: usize,
    /// Override the detected vCPUs offered to VMs.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Override the detected memory offered to VMs, in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Override the detected disk offered to VMs, in GiB.
    #[arg(long)]
    disk_gb: Option<u64>,
    /// Node label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 50, allow_hyphen_values = true, value_parser = duration::ms_arg)]
    heartbeat_ms: u64,
    /// Raft election timeout (minimum) in milliseconds; the maximum is twice it. A follower
    /// stands for election after hearing nothing from the leader for the maximum (the leader
    /// lease) plus a random timeout between the two (ARCHITECTURE.md, "Raft timing").
    #[arg(long, default_value_t = 250, allow_hyphen_values = true, value_parser = duration::ms_arg)]
    election_ms: u64,
    /// Build a snapshot every this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Log entries kept behind the latest snapshot.
    #[arg(long, default_value_t = 1_000)]
    keep_logs: u64,
    /// Snapshot bytes per chunk sent to a lagging follower (at most 1 MiB; for tests).
    #[arg(long, default_value_t = blixard_api::SNAPSHOT_CHUNK, hide = true)]
    snapshot_chunk_bytes: usize,
    /// With --init: how often nodes heartbeat the leader, in milliseconds (default 1000).
    /// A cluster setting afterwards (`cluster settings --heartbeat-ms`).
    #[arg(long, allow_hyphen_values = true, value_parser = duration::ms_arg)]
    liveness_heartbeat_ms: Option<u64>,
    /// With --init: lease in milliseconds (default 10000): a node that cannot renew it for
    /// this long stops its workloads. A cluster setting afterwards (`cluster settings`).
    #[arg(long, allow_hyphen_values = true, value_parser = duration::ms_arg)]
    lease_ms: Option<u64>,
    /// With --init: extra wait after the lease before the leader declares a silent node down
    /// (default 5000). A cluster setting afterwards (`cluster settings`).
    #[arg(long, allow_hyphen_values = true, value_parser = duration::ms_arg)]
    grace_ms: Option<u64>,
    /// Seconds a voter may stay down before a healthy learner replaces it.
    #[arg(long, default_value_t = 30)]
    replace_voter_after: u64,
    /// Serve HTTPS here (a certificate of the cluster CA: trust DATA_DIR/tls/ca.pem): /healthz,
    /// /readyz, /metrics, the JSON API (/v1/, described by /v1/openapi.json), the event stream
    /// (/v1/events) and the dashboard (/ui/). Port 0 picks a free port (written to
    /// DATA_DIR/http.addr).
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<SocketAddr>,
    /// VMs moved at once off a draining node.
    #[arg(long, default_value_t = 2)]
    drain_parallelism: usize,
    /// CIDR of the `default` network (used with --init).
    #[arg(long, default_value = blixard_core::network::DEFAULT_CIDR)]
    network_cidr: String,
    /// Do not create bridges, taps and VXLAN devices on this host: VMs keep their addresses
    /// in the cluster state but get no network interface.
    #[arg(long)]
    no_host_network: bool,
    /// A directory whose files VMs may name as --kernel, --initrd or --disk-image
    /// (repeatable; default DATA_DIR/images and the default guest directory). Anything
    /// outside them is refused.
    #[arg(long = "image-dir", value_name = "DIR")]
    image_dirs: Vec<PathBuf>,
    /// The user tasks run as when the node runs as root (created by scripts/setup.sh).
    #[arg(long, value_name = "NAME", default_value = blixard_node::config::DEFAULT_TASK_USER)]
    task_user: String,
}

fn parse_labels(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => anyhow::bail!("label '{l}' must be KEY=VALUE"),
        })
        .collect()
}

pub(crate) fn init_logging(daemon: bool) {
    let default = if daemon {
        "info,openraft=warn"
    } else {
        "warn,openraft=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BLIXARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) async fn run_daemon(a: DaemonArgs) -> anyhow::Result<()> {
    use blixard_node::config::{Bootstrap, CapacityOverrides, RaftTuning};
    let id =
        a.id.ok_or_else(|| anyhow::anyhow!("--id is required to run a node"))?;
    let data_dir = a
        .data_dir
        .ok_or_else(|| anyhow::anyhow!("--data-dir is required to run a node"))?;
    let bootstrap = match (a.init, a.join) {
        (true, _) => Bootstrap::Init,
        (false, Some(seed)) => Bootstrap::Join(seed),
        (false, None) => Bootstrap::Resume,
    };
    let mut config = blixard_node::NodeConfig::new(id, a.listen, data_dir, bootstrap);
    config.join_token = match (a.token, a.token_file) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| {
                    anyhow::anyhow!("cannot read the join token file {}: {e}", f.display())
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    config.advertise = a.advertise;
    config.driver = a.driver;
    config.target_voters = a.target_voters.max(1);
    config.capacity = CapacityOverrides {
        vcpus: a.vcpus,
        memory_mb: a.memory_mb,
        disk_gb: a.disk_gb,
    };
    config.labels = parse_labels(&a.labels)?;
    config.default_network_cidr = a.network_cidr;
    config.host_network = !a.no_host_network;
    config.raft = RaftTuning {
        heartbeat: Duration::from_millis(a.heartbeat_ms.max(10)),
        election_min: Duration::from_millis(a.election_ms.max(a.heartbeat_ms * 3)),
        election_max: Duration::from_millis(a.election_ms.max(a.heartbeat_ms * 3) * 2),
        snapshot_every: a.snapshot_every.max(1),
        keep_logs: a.keep_logs,
        snapshot_chunk: a.snapshot_chunk_bytes.clamp(1, blixard_api::SNAPSHOT_CHUNK),
    };
    config.liveness = blixard_node::config::LivenessTuning {
        heartbeat: a.liveness_heartbeat_ms.map(Duration::from_millis),
        lease: a.lease_ms.map(Duration::from_millis),
        grace: a.grace_ms.map(Duration::from_millis),
        replace_voter_after: Duration::from_secs(a.replace_voter_after),
        drain_parallelism: a.drain_parallelism.max(1),
    };
    config.http = a.http;
    config.image_dirs = a.image_dirs;
    if a.task_user.is_empty() {
        anyhow::bail!("--task-user must name a user");
    }
    config.task_user = a.task_user;
    blixard_node::run(config, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
