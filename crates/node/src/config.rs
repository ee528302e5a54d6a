//! Daemon configuration: what `blixard node` is started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the node enters a cluster on its first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// Create a new cluster with this node as its only voter.
    Init,
    /// Join an existing cluster through any member.
    Join(String),
    /// Resume from the data directory (it must already hold a cluster).
    Resume,
}

/// Raft timing and log-compaction policy.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind the latest snapshot (for followers that lag a little).
    pub keep_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(500),
            election_max: Duration::from_millis(1000),
            snapshot_every: 10_000,
            keep_logs: 1_000,
        }
    }
}

/// Overrides for the capacity the node detects at start.
#[derive(Debug, Clone, Default)]
pub struct CapacityOverrides {
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Address to listen on for both the client API and peers. Port 0 picks a free port (kept
    /// across restarts: the chosen address is recorded in the data directory).
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node; defaults to the bound address.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub bootstrap: Bootstrap,
    /// The join token (`--token`), needed with `Bootstrap::Join` on the first start.
    pub join_token: Option<String>,
    /// Voters the cluster aims for; joining nodes beyond it stay learners.
    pub target_voters: usize,
    pub raft: RaftTuning,
    pub capacity: CapacityOverrides,
    pub labels: BTreeMap<String, String>,
    /// `qemu` or `process`.
    pub driver: String,
    pub liveness: LivenessTuning,
    /// CIDR of the `default` network, created by the node that runs `--init`.
    pub default_network_cidr: String,
    /// Build bridges, taps and VXLAN devices for VMs' networks on this host (qemu driver only;
    /// see `hostnet`).
    pub host_network: bool,
    /// Serve HTTP (health, metrics, JSON API, events, dashboard) here; port 0 picks a free
    /// port (the bound address is written to `http.addr` in the data directory).
    pub http: Option<SocketAddr>,
    /// Directories whose files VMs may be given as kernel, initrd or disk image
    /// (`--image-dir`, repeatable). Empty: `DATA_DIR/images` and the default guest directory.
    pub image_dirs: Vec<PathBuf>,
    /// The user tasks run as when the daemon runs as root (`--task-user`, default
    /// [`DEFAULT_TASK_USER`], created by scripts/setup.sh). A daemon that is not root runs
    /// tasks as its own user.
    pub task_user: String,
}

/// The user tasks run as by default.
pub const DEFAULT_TASK_USER: &str = "blixard-task";

/// Failure detection and fencing. The lease, its grace and the heartbeat interval are cluster
/// settings in the replicated state (`blixard cluster settings`), so that every node fences on
/// the numbers the leader judges by; the values here only seed them when a cluster is created
/// (`--init`) and are ignored otherwise.
#[derive(Debug, Clone)]
pub struct LivenessTuning {
    /// Initial heartbeat interval of a new cluster.
    pub heartbeat: Option<Duration>,
    /// Initial lease of a new cluster: a node that could not renew its lease for this long
    /// stops (fences) its workloads.
    pub lease: Option<Duration>,
    /// Initial grace of a new cluster: the leader declares a node down after lease + grace
    /// without heartbeats, so its workloads have stopped by the time they run elsewhere.
    pub grace: Option<Duration>,
    /// A voter down this long is replaced by a healthy learner, when there is one.
    pub replace_voter_after: Duration,
    /// VMs moved at once off a draining node.
    pub drain_parallelism: usize,
}

impl Default for LivenessTuning {
    fn default() -> Self {
        Self {
            heartbeat: None,
            lease: None,
            grace: None,
            replace_voter_after: Duration::from_secs(30),
            drain_parallelism: 2,
        }
    }
}

impl NodeConfig {
    pub fn new(
        id: u64,
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        bootstrap: Bootstrap,
    ) -> Self {
        Self {
            id,
            listen,
            advertise: None,
            data_dir: data_dir.into(),
            bootstrap,
            join_token: None,
            target_voters: 3,
            raft: RaftTuning::default(),
            capacity: CapacityOverrides::default(),
            labels: BTreeMap::new(),
            driver: "qemu".into(),
            liveness: LivenessTuning::default(),
            default_network_cidr: blixard_core::network::DEFAULT_CIDR.into(),
            host_network: true,
            http: None,
            image_dirs: Vec::new(),
            task_user: DEFAULT_TASK_USER.into(),
        }
    }
}
