//! The command line: every subcommand and flag of `blixard` (clap derive). The daemon's flags
//! are in [`crate::daemon::DaemonArgs`]; `main` dispatches on what is parsed here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::daemon::DaemonArgs;
use crate::{auth, client, console, duration, extras, network, transport};

#[derive(Parser)]
#[command(
    name = "blixard",
    version = extras::LONG_VERSION,
    about = "Distributed microVM orchestrator"
)]
pub(crate) struct Cli {
    /// Address of any cluster member.
    #[arg(
        long,
        global = true,
        env = "BLIXARD_ADDR",
        default_value = "127.0.0.1:7001"
    )]
    pub(crate) addr: String,
    /// Print exactly one JSON document on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Credentials file for client commands (the admin's is DATA_DIR/admin.credentials on the
    /// node started with --init).
    #[arg(long, global = true, env = "BLIXARD_CREDENTIALS", value_name = "FILE")]
    pub(crate) credentials: Option<PathBuf>,
    /// Connect and request timeout of client commands (e.g. 500ms, 10s, 2m), given before the
    /// subcommand (`blixard --timeout 5s vm list`: the subcommands' own `--timeout` are other
    /// things). `vm wait`, `task wait` and `--follow` keep their own waits.
    #[arg(
        long,
        env = "BLIXARD_TIMEOUT",
        value_name = "DUR",
        default_value = transport::DEFAULT_TIMEOUT,
        value_parser = transport::parse_duration
    )]
    pub(crate) timeout: Duration,
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub(crate) enum Cmd {
    /// Run the daemon (`blixard node --id N ...`) or manage workers (`node list|drain|undrain`).
    #[command(args_conflicts_with_subcommands = true)]
    Node {
        #[command(subcommand)]
        sub: Option<NodeCmd>,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Cluster membership and status.
    Cluster {
        #[command(subcommand)]
        sub: ClusterCmd,
    },
    /// Virtual machines.
    Vm {
        #[command(subcommand)]
        sub: VmCmd,
    },
    /// Client credentials and bearer tokens, with roles (viewer, operator, admin).
    Auth {
        #[command(subcommand)]
        sub: auth::AuthCmd,
    },
    /// Networks VMs take their addresses from.
    Network {
        #[command(subcommand)]
        sub: network::NetworkCmd,
    },
    /// One-shot tasks: a command run once on a node the scheduler picks.
    Task {
        #[command(subcommand)]
        sub: TaskCmd,
    },
    /// Cluster events (VM, node, membership, task, settings changes), each with the Raft log
    /// index that produced it.
    Events {
        /// Only events after this log index (resume from the last index you saw).
        #[arg(long)]
        since: Option<u64>,
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print the URL of the dashboard of the node at --addr (started with --http).
    Dashboard,
    /// Print this binary's version and the commit it was built from.
    Version,
    /// Print a shell completion script: `blixard completions bash > /etc/bash_completion.d/blixard`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Measure the cluster (closed-loop load from this machine).
    Bench {
        #[command(subcommand)]
        sub: BenchCmd,
    },
    /// The built-in idle workload the process driver runs (prints a readiness line, then
    /// waits for SIGTERM).
    #[command(name = "__workload", hide = true)]
    Workload,
}

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
    /// Replicated writes per second and latency, for each number of concurrent clients.
    Writes {
        /// Client counts to run, one after the other.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        /// Seconds per client count.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Spread clients over these members (default: --addr).
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<String>,
        /// Send every request to the leader (found through the first address).
        #[arg(long)]
        leader: bool,
    },
    /// Reads per second (`vm status` of one record per client), linearizable or stale.
    Reads {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, value_delimiter = ',')]
        addrs: Vec<String>,
        #[arg(long)]
        leader: bool,
        /// Serve from the node's applied state, without the leader round trip.
        #[arg(long)]
        stale: bool,
    },
    /// Own 3-node cluster: kill -9 the leader, time until a survivor accepts a write.
    Failover {
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Extra `blixard node` argument for the bench nodes (repeatable), e.g.
        /// --node-arg=--election-ms=300.
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
    /// Own 3-node cluster: RSS of each node and `vm list` time as it fills with VM records.
    Memory {
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        records: Vec<usize>,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
    /// Own 3-node cluster with RECORDS VM records: time for a new node to catch up.
    Catchup {
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
    /// Own 3-node cluster: COUNT `vm create` through Raft, each placed, end to end.
    Creates {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
    /// Own clusters of each size in NODES (VOTERS voters, the rest learners): time to form,
    /// idle CPU, time to place VMS, the leader's CPU and memory, learners' memory, elections.
    Scale {
        /// Cluster sizes, one after the other (each a new cluster).
        #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
        nodes: Vec<usize>,
        /// Voters (`--target-voters` of every node); the others stay learners.
        #[arg(long, default_value_t = 3)]
        voters: usize,
        /// VMs to create (stopped: placed and reserved) through Raft once formed.
        #[arg(long, default_value_t = 10_000)]
        vms: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Nodes started (and joining) at once while forming.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Seconds the formed cluster idles while its CPU is measured (0: skip).
        #[arg(long, default_value_t = 10)]
        idle: u64,
        /// Scheduler strategy set once formed: spread (VMs over all nodes) or binpack.
        #[arg(long, default_value = "spread", value_parser = ["spread", "binpack"])]
        strategy: String,
        /// Tokio worker threads per node (TOKIO_WORKER_THREADS; default: one per core).
        #[arg(long)]
        node_threads: Option<usize>,
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
    /// Raw QEMU boot vs blixard create -> running, same kernel and initramfs, same run.
    Boot {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 256)]
        memory: u64,
    },
}

#[derive(Subcommand)]
pub(crate) enum NodeCmd {
    /// List registered workers.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Stop placing new VMs on a node and move its VMs elsewhere; shows progress until done.
    Drain {
        id: u64,
        /// Give up waiting after this many seconds (the drain goes on).
        #[arg(long, default_value_t = 300, allow_hyphen_values = true, value_parser = duration::secs_arg)]
        timeout: u64,
        /// Return at once instead of showing progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// Let a drained node receive VMs again.
    Undrain { id: u64 },
}

#[derive(Subcommand)]
pub(crate) enum ClusterCmd {
    /// This node's view of the cluster: leader, term, applied index, members.
    Status {
        #[arg(long)]
        stale: bool,
    },
    /// Remove a member (voter or learner) through Raft.
    Remove {
        id: u64,
        /// Remove it even when it is the leader or when fewer than three voters would remain.
        #[arg(long)]
        force: bool,
    },
    /// The node at --addr leaves the cluster gracefully (and stops).
    Leave {
        /// Leave even when fewer than three voters would remain.
        #[arg(long)]
        force: bool,
    },
    /// Join tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        sub: TokenCmd,
    },
    /// Show or change the scheduler's cluster-wide settings.
    Settings {
        /// Default placement strategy.
        #[arg(long)]
        strategy: Option<blixard_core::Strategy>,
        /// vCPU overcommit in percent (100 = none, up to 1000).
        #[arg(long)]
        vcpu_overcommit: Option<u32>,
        /// Lease in milliseconds: a node that cannot renew it for this long stops its workloads.
        #[arg(long, allow_hyphen_values = true, value_parser = duration::ms_arg)]
        lease_ms: Option<u64>,
        /// Extra silence past the lease before the leader declares a node down (> 0).
        #[arg(long, allow_hyphen_values = true, value_parser = duration::ms_arg)]
        grace_ms: Option<u64>,
        /// How often nodes heartbeat the leader (the lease must span at least two).
        #[arg(long, allow_hyphen_values = true, value_parser = duration::ms_arg)]
        heartbeat_ms: Option<u64>,
    },
}

#[derive(Subcommand)]
pub(crate) enum TokenCmd {
    /// Create a single-use join token (printed once; `--json`: {"token","id","expires_at_ms"}).
    Create {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600, allow_hyphen_values = true, value_parser = duration::secs_arg)]
        ttl: u64,
    },
    /// List join tokens and what became of them.
    List,
    /// Make a join token unusable.
    Revoke { id: String },
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub(crate) enum VmCmd {
    /// Create a VM and place it on a node.
    Create(client::CreateArgs),
    /// Ask for a VM to run.
    Start { name: String },
    /// Ask for a VM to stop.
    Stop { name: String },
    /// Stop a VM, wait until it is stopped, then start it again.
    Restart {
        name: String,
        #[arg(long, default_value_t = 60, allow_hyphen_values = true, value_parser = duration::secs_arg)]
        timeout: u64,
    },
    /// Forget a VM.
    Delete {
        name: String,
        /// Delete it even while it runs (it is stopped at once).
        #[arg(long)]
        force: bool,
    },
    /// Print the guest console.
    Logs {
        name: String,
        /// Only the last N lines.
        #[arg(long, value_name = "N", conflicts_with = "follow")]
        tail: Option<usize>,
        /// Keep printing as the console grows.
        #[arg(long, short)]
        follow: bool,
        /// Print the console of the run before the last restart on the VM's node.
        #[arg(long, conflicts_with = "follow")]
        previous: bool,
    },
    /// Show one VM.
    Status {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// List VMs.
    List {
        #[arg(long)]
        stale: bool,
        #[command(flatten)]
        filter: extras::VmFilter,
    },
    /// Attach to a VM's serial console (interactive; detach with Ctrl-]).
    Console(console::ConsoleArgs),
    /// Wait until a VM reaches a state.
    Wait {
        name: String,
        #[arg(long)]
        state: blixard_core::VmState,
        #[arg(long, default_value_t = 60, allow_hyphen_values = true, value_parser = duration::secs_arg)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
pub(crate) enum TaskCmd {
    /// Submit a task: `blixard task submit [options] -- COMMAND [ARGS...]`; prints its id.
    Submit(client::SubmitArgs),
    /// Show one task.
    Status {
        id: String,
        #[arg(long)]
        stale: bool,
    },
    /// List tasks (oldest first).
    List {
        #[arg(long)]
        stale: bool,
        /// Only tasks in this state.
        #[arg(long)]
        state: Option<blixard_core::TaskState>,
        /// Only tasks on this node.
        #[arg(long)]
        node: Option<u64>,
    },
    /// Wait until a task ends: exit 0 when it succeeded.
    Wait {
        id: String,
        #[arg(long, default_value_t = 300, allow_hyphen_values = true, value_parser = duration::secs_arg)]
        timeout: u64,
    },
    /// Print a task's captured output (stdout and stderr, the last 64 KiB).
    Logs {
        id: String,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Cancel a task (its process group is killed).
    Cancel { id: String },
}
