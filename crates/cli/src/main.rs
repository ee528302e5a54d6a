//! `blixard`: the daemon (`blixard node --id ...`) and the command-line client.
//!
//! This file only parses arguments and dispatches; the daemon lives in `blixard-node`, the
//! client commands in [`client`], and printing in [`output`].

mod auth;
mod bench;
mod client;
mod console;
mod duration;
mod extras;
mod network;
mod output;
mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "blixard",
    version = extras::LONG_VERSION,
    about = "Distributed microVM orchestrator"
)]
struct Cli {
    /// Address of any cluster member.
    #[arg(
        long,
        global = true,
        env = "BLIXARD_ADDR",
        default_value = "127.0.0.1:7001"
    )]
    addr: String,
    /// Print exactly one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Credentials file for client commands (the admin's is DATA_DIR/admin.credentials on the
    /// node started with --init).
    #[arg(long, global = true, env = "BLIXARD_CREDENTIALS", value_name = "FILE")]
    credentials: Option<PathBuf>,
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
    timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

#[derive(Args)]
struct DaemonArgs {
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
    #[arg(long, requires = "join", conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the join token.
    #[arg(long, requires = "join", value_name = "FILE")]
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
    /// Serve HTTP here: /healthz, /readyz, /metrics, the JSON API (/v1/), the event stream
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

#[derive(Subcommand)]
enum BenchCmd {
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
    /// Raw QEMU boot vs blixard create -> running, same kernel and initramfs, same run.
    Boot {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value_t = 256)]
        memory: u64,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
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
enum ClusterCmd {
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
enum TokenCmd {
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
enum VmCmd {
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
enum TaskCmd {
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

fn parse_labels(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    raw.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => anyhow::bail!("label '{l}' must be KEY=VALUE"),
        })
        .collect()
}

fn init_logging(daemon: bool) {
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

async fn run_daemon(a: DaemonArgs) -> anyhow::Result<()> {
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

/// `blixard ... | head -1`: once the reader is gone, printing fails with a broken pipe, which
/// `println!` turns into a panic. That is not an error of ours: end quietly, as `cat` does.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    // The workload supervisor (`blixard supervise ...`, started by the daemon, hidden): plain
    // synchronous code, before any runtime or logging is set up.
    if std::env::args_os().nth(1).is_some_and(|a| a == "supervise") {
        let code = blixard_vmm::supervisor::main(std::env::args_os().skip(1).collect());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    quiet_on_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return output::usage_error(e),
    };
    let daemon = matches!(&cli.command, Cmd::Node { sub: None, .. } | Cmd::Workload);
    init_logging(daemon);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    client::set_credentials(cli.credentials.clone());
    transport::set_timeout(cli.timeout);
    let res = rt.block_on(async move {
        let c = client::Client::new(cli.addr.clone(), cli.json);
        match cli.command {
            Cmd::Node { sub: None, daemon } => run_daemon(daemon).await,
            Cmd::Bench {
                sub: BenchCmd::Boot { runs, memory },
            } => bench::boot(cli.addr.clone(), runs.max(1), memory, cli.json).await,
            Cmd::Bench {
                sub:
                    BenchCmd::Writes {
                        clients,
                        duration,
                        addrs,
                        leader,
                    },
            } => {
                let addrs = if addrs.is_empty() {
                    vec![cli.addr.clone()]
                } else {
                    addrs
                };
                bench::writes(bench::Params {
                    addrs,
                    clients,
                    duration: Duration::from_secs(duration),
                    json: cli.json,
                    leader_only: leader,
                    op: bench::Op::Write,
                })
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Reads {
                        clients,
                        duration,
                        addrs,
                        leader,
                        stale,
                    },
            } => {
                let addrs = if addrs.is_empty() {
                    vec![cli.addr.clone()]
                } else {
                    addrs
                };
                bench::writes(bench::Params {
                    addrs,
                    clients,
                    duration: Duration::from_secs(duration),
                    json: cli.json,
                    leader_only: leader,
                    op: bench::Op::Read { stale },
                })
                .await
            }
            Cmd::Bench {
                sub: BenchCmd::Failover { trials, node_args },
            } => {
                bench::suite::interruptible(bench::suite::failover(
                    trials.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Memory {
                        records,
                        clients,
                        node_args,
                    },
            } => {
                bench::suite::interruptible(bench::suite::memory(
                    records,
                    clients.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Catchup {
                        records,
                        clients,
                        node_args,
                    },
            } => {
                bench::suite::interruptible(bench::suite::catchup(
                    records,
                    clients.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Creates {
                        count,
                        clients,
                        node_args,
                    },
            } => {
                bench::suite::interruptible(bench::suite::creates(
                    count.max(1),
                    clients.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Dashboard => c.dashboard().await,
            Cmd::Version => {
                extras::version(cli.json);
                Ok(())
            }
            Cmd::Completions { shell } => {
                extras::completions(shell, Cli::command());
                Ok(())
            }
            Cmd::Events { since, follow } => c.events(since, follow).await,
            Cmd::Workload => blixard_vmm::idle_workload()
                .await
                .map_err(anyhow::Error::from),
            Cmd::Node { sub: Some(s), .. } => match s {
                NodeCmd::List { stale } => c.node_list(stale).await,
                NodeCmd::Drain {
                    id,
                    timeout,
                    no_wait,
                } => c.node_drain(id, timeout, no_wait).await,
                NodeCmd::Undrain { id } => c.node_set_state(id, "up").await,
            },
            Cmd::Cluster { sub } => match sub {
                ClusterCmd::Status { stale } => c.cluster_status(stale).await,
                ClusterCmd::Remove { id, force } => {
                    if !force {
                        extras::check_remove(&c, id).await?;
                    }
                    c.cluster_remove(id).await
                }
                ClusterCmd::Leave { force } => {
                    if !force {
                        extras::check_leave(&c).await?;
                    }
                    c.cluster_leave().await
                }
                ClusterCmd::Settings {
                    strategy,
                    vcpu_overcommit,
                    lease_ms,
                    grace_ms,
                    heartbeat_ms,
                } => {
                    c.cluster_settings(
                        strategy,
                        vcpu_overcommit,
                        [lease_ms, grace_ms, heartbeat_ms],
                    )
                    .await
                }
                ClusterCmd::Token {
                    sub: TokenCmd::Create { ttl },
                } => c.token_create(ttl).await,
                ClusterCmd::Token {
                    sub: TokenCmd::List,
                } => c.token_list().await,
                ClusterCmd::Token {
                    sub: TokenCmd::Revoke { id },
                } => c.token_revoke(&id).await,
            },
            Cmd::Network { sub } => network::run(&c, sub).await,
            Cmd::Auth { sub } => auth::run(&c, sub).await,
            Cmd::Task { sub } => match sub {
                TaskCmd::Submit(args) => c.task_submit(args).await,
                TaskCmd::Status { id, stale } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_status(&id, stale).await
                }
                TaskCmd::List { stale, state, node } => c.task_list(stale, state, node).await,
                TaskCmd::Wait { id, timeout } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_wait(&id, timeout).await
                }
                TaskCmd::Logs { id, tail } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_logs(&id, tail).await
                }
                TaskCmd::Cancel { id } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_cancel(&id).await
                }
            },
            Cmd::Vm { sub } => match sub {
                VmCmd::Create(args) => c.vm_create(args).await,
                VmCmd::Start { name } => c.vm_set_desired(&name, "running").await,
                VmCmd::Stop { name } => c.vm_set_desired(&name, "stopped").await,
                VmCmd::Restart { name, timeout } => c.vm_restart(&name, timeout).await,
                VmCmd::Delete { name, force } => {
                    if !force {
                        extras::check_delete(&c, &name).await?;
                    }
                    c.vm_delete(&name).await
                }
                VmCmd::Logs {
                    name,
                    tail,
                    follow,
                    previous,
                } => c.vm_logs(&name, follow, previous, tail).await,
                VmCmd::Status { name, stale } => c.vm_status(&name, stale).await,
                VmCmd::Console(a) => console::run(&c.addr, a).await,
                VmCmd::List { stale, filter } => c.vm_list(stale, &filter).await,
                VmCmd::Wait {
                    name,
                    state,
                    timeout,
                } => c.vm_wait(&name, state, timeout).await,
            },
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Whatever the message echoes (a name typed with terminal escapes...), control
            // characters are printed escaped.
            let msg: String = format!("{e:#}")
                .chars()
                .flat_map(|c| match c {
                    '\n' | '\t' => vec![c],
                    c if c.is_control() => c.escape_default().collect(),
                    c => vec![c],
                })
                .collect();
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
