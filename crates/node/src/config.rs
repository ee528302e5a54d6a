//! Daemon configuration: what `blixard node` is started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use blixard_core::Command;

use crate::error::NodeError;

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
    /// Snapshot data bytes per chunk sent to a lagging follower (at most
    /// `blixard_api::SNAPSHOT_CHUNK`; smaller only to exercise the chunked path in tests).
    pub snapshot_chunk: usize,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(250),
            election_max: Duration::from_millis(500),
            snapshot_every: 10_000,
            keep_logs: 1_000,
            snapshot_chunk: blixard_api::SNAPSHOT_CHUNK,
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
    /// Serve HTTPS (health, metrics, JSON API, events, dashboard) here; port 0 picks a free
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

    /// Checks the configuration before anything is started or written. Every entry point
    /// goes through it: [`crate::start`] calls it first, so in-process nodes (tests, the
    /// harness) are held to the same rules as `blixard node`.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |m: String| Err(NodeError::Config(m));
        if self.id == 0 {
            return bad("the node id (--id) must be a positive integer".into());
        }
        if self.target_voters == 0 {
            return bad("the target number of voters (--target-voters) must be at least 1".into());
        }
        blixard_core::spec::validate_labels(&self.labels)
            .map_err(|e| NodeError::Config(format!("labels (--label): {e}")))?;
        self.default_network_cidr
            .parse::<blixard_core::Cidr>()
            .map_err(|e| NodeError::Config(format!("--network-cidr: {e}")))?;
        let r = &self.raft;
        if r.heartbeat.is_zero() || r.election_min <= r.heartbeat || r.election_max < r.election_min
        {
            return bad(format!(
                "Raft timing: need 0 < heartbeat ({:?}) < election_min ({:?}) <= election_max ({:?})",
                r.heartbeat, r.election_min, r.election_max
            ));
        }
        if r.snapshot_every == 0 {
            return bad("--snapshot-every must be at least 1".into());
        }
        if self.liveness.drain_parallelism == 0 {
            return bad("--drain-parallelism must be at least 1".into());
        }
        self.initial_liveness()?;
        Ok(())
    }

    /// The lease settings a new cluster starts with, when the configuration overrides any;
    /// refused when they are invalid.
    pub(crate) fn initial_liveness(&self) -> Result<Option<Command>, NodeError> {
        let t = &self.liveness;
        let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let (lease_ms, grace_ms, heartbeat_ms) = (ms(t.lease), ms(t.grace), ms(t.heartbeat));
        if lease_ms.is_none() && grace_ms.is_none() && heartbeat_ms.is_none() {
            return Ok(None);
        }
        blixard_core::LivenessSettings::default()
            .merged(lease_ms, grace_ms, heartbeat_ms, 0, true)
            .validate()
            .map_err(|e| NodeError::Config(format!("lease settings: {e}")))?;
        Ok(Some(Command::SetLivenessSettings {
            lease_ms,
            grace_ms,
            heartbeat_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> NodeConfig {
        NodeConfig::new(
            1,
            "127.0.0.1:0".parse().unwrap(),
            "/nonexistent",
            Bootstrap::Init,
        )
    }

    #[test]
    fn validate_refuses_what_the_daemon_refuses() {
        assert!(config().validate().is_ok());
        let refused = |f: &dyn Fn(&mut NodeConfig)| {
            let mut c = config();
            f(&mut c);
            matches!(c.validate(), Err(NodeError::Config(_)))
        };
        assert!(refused(&|c| c.id = 0));
        assert!(refused(&|c| c.target_voters = 0));
        assert!(refused(&|c| c.default_network_cidr = "10.0.0.0/33".into()));
        assert!(refused(&|c| {
            c.labels.insert("Bad Key".into(), "v".into());
        }));
        assert!(refused(&|c| c.raft.election_min = c.raft.heartbeat));
        assert!(refused(&|c| c.raft.snapshot_every = 0));
        assert!(refused(&|c| c.liveness.drain_parallelism = 0));
        // A lease shorter than two heartbeats.
        assert!(refused(&|c| {
            c.liveness.lease = Some(Duration::from_millis(100));
            c.liveness.heartbeat = Some(Duration::from_millis(100));
        }));
    }
}
