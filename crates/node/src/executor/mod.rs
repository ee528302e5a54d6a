//! The executor: makes this host run exactly the VMs and tasks the applied state places on it.
//!
//! It is stateless in the sense of the design's first law: desired state comes from the
//! applied Raft state, observed state from the driver (which rediscovers everything from the
//! host) and from the task attempts' markers, and the difference is a pure plan
//! (`blixard_core::planner::plan` for VMs, `plan_tasks` for tasks), made in one pass from one
//! read of the applied state. Tasks are carried out by [`TaskRunner`]. What it observes
//! it reports back through Raft, tagged with the placement epoch. The only things it keeps are
//! local runtime handles: which VMs have an action in flight, and restart backoff timers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blixard_core::planner::{self, Action, Observed, RunState, TaskAction};
use blixard_core::{ApplyError, Command, VmSpec};
use blixard_vmm::{DriverError, VmConfig, VmDriver};
use openraft::async_runtime::WatchReceiver;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::blocking;
use crate::error::NodeError;
use crate::hostnet::{HostNet, WantedNet};
use crate::node::Node;
use crate::task_runner::TaskRunner;

/// File in the data directory naming the prefix of this node's network devices.
pub const NETDEV_PREFIX_FILE: &str = "netdev-prefix";
/// How often host network devices are checked when nothing changed.
const NET_RESYNC: Duration = Duration::from_secs(10);
/// How often the executor compares desired and observed state even when nothing changed.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);
/// Graceful stop timeout before the VM is forced off.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Restart backoff: doubles per consecutive failure, capped.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// VMs acted on at once (starts, stops, removals, reports); the others wait their turn.
pub const MAX_CONCURRENT_ACTIONS: usize = 64;
/// How long shutdown waits for the actions in flight.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Local {
    /// VMs with actions being carried out.
    inflight: HashSet<String>,
    /// Counts finished action runs; `finished[name]` is the count when the VM's last run ended.
    /// A pass that began observing before a VM's actions ended has a stale picture of it (a
    /// start that finished since is not in it) and leaves the VM to the next pass.
    actions_done: u64,
    finished: HashMap<String, u64>,
    /// Consecutive restarts and when the next one may happen.
    backoff: HashMap<String, (u32, Instant)>,
    /// The host network last made to match (networks, taps) and when.
    net_synced: Option<(
        BTreeMap<u32, WantedNet>,
        std::collections::BTreeSet<String>,
        Instant,
    )>,
    /// The last host-networking error logged.
    net_error: Option<String>,
    /// The applied index the last VM plan was made at: a later pass after an applied change
    /// re-plans only the VMs the entries since then touched (`vms_touched_since`).
    planned_at: Option<u64>,
    /// When the last full pass (every VM of this node, every observed VM) was planned.
    last_full: Option<Instant>,
}

impl Local {
    /// `name` has actions in flight, or had some end after the count read as `at`.
    fn changed_since(&self, name: &str, at: u64) -> bool {
        self.inflight.contains(name) || self.finished.get(name).is_some_and(|&d| d > at)
    }
}

pub struct Executor {
    node: Arc<Node>,
    driver: Arc<dyn VmDriver>,
    /// Bridges, VXLAN devices and taps for VMs' networks (qemu with host networking only).
    hostnet: Option<HostNet>,
    /// Default guest (kernel, initrd) for VMs that name none; built lazily.
    default_guest: Mutex<Option<(PathBuf, PathBuf)>>,
    local: Mutex<Local>,
    /// The tasks assigned to this node: planned in the same pass, carried out there.
    tasks: Arc<TaskRunner>,
    /// The per-VM action runs in flight: joined on shutdown.
    actions: TaskTracker,
    /// Bounds how many of them act at once.
    permits: Arc<Semaphore>,
}

/// Maps what the driver sees onto the planner's vocabulary.
pub fn to_observed(o: &blixard_vmm::Observed) -> Observed {
    let run = match &o.state {
        blixard_vmm::RunState::Starting => RunState::Starting,
        blixard_vmm::RunState::Running => RunState::Running,
        blixard_vmm::RunState::Stopped { exit_code } => RunState::Exited {
            code: *exit_code,
            requested: true,
            reason: None,
        },
        blixard_vmm::RunState::Failed { reason } => RunState::Exited {
            code: None,
            requested: false,
            reason: Some(short_reason(reason)),
        },
    };
    Observed {
        name: o.name.clone(),
        epoch: o.epoch,
        run,
    }
}

/// The first line of a failure reason, plus the last console line if there is one: enough for
/// `vm status`; the full story stays in the console log.
fn short_reason(reason: &str) -> String {
    let mut r: String = reason
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    if let Some(last) = reason
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("---"))
    {
        if !r.contains(last.trim()) {
            r.push_str(" | last output: ");
            r.extend(last.trim().chars().take(200));
        }
    }
    r
}

impl Executor {
    pub fn new(node: Arc<Node>, driver: Arc<dyn VmDriver>) -> Arc<Self> {
        let hostnet = (node.config.host_network && driver.kind() == "qemu")
            .then(|| HostNet::new(&node.cluster_id, node.id, &node.addr));
        if let Some(h) = &hostnet {
            // For operators and tests: which host devices belong to this node.
            let path = node.config.data_dir.join(NETDEV_PREFIX_FILE);
            if let Err(e) = std::fs::write(&path, h.prefix()) {
                tracing::warn!(path = %path.display(), error = %e, "recording the network device prefix");
            }
        }
        Arc::new(Self {
            tasks: TaskRunner::new(node.clone()),
            node,
            driver,
            hostnet,
            default_guest: Mutex::new(None),
            local: Mutex::new(Local::default()),
            actions: TaskTracker::new(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_ACTIONS)),
        })
    }

    pub fn driver(&self) -> &Arc<dyn VmDriver> {
        &self.driver
    }

    /// Runs until the node stops. VMs keep running after it returns (they are detached); the
    /// actions in flight are waited for (at most [`SHUTDOWN_WAIT`]) before it returns.
    pub async fn run(self: Arc<Self>) {
        let mut applied = self.node.raft.metrics();
        loop {
            // A full pass at least every RECONCILE_INTERVAL (it sees what only the host
            // observed: a VM process that exited); after an applied change in between, only the
            // VMs the change touched are planned, so a pass costs what changed, not every VM.
            let full = self
                .local
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_full
                .is_none_or(|t| t.elapsed() >= RECONCILE_INTERVAL);
            if let Err(e) = self.reconcile(full).await {
                self.node.metrics.reconcile_errors.inc();
                tracing::warn!(error = %e, "reconcile");
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
                _ = applied.changed() => {
                    // Coalesce bursts of applied entries.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = self.node.stopped() => break,
            }
        }
        self.actions.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.actions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.actions.len(),
                "VM actions still in flight at shutdown; leaving them"
            );
        }
        self.tasks.shutdown().await;
    }

    /// One pass for VMs and tasks alike: observe, plan (pure: `planner::plan` for VMs,
    /// `planner::plan_tasks` for tasks, from one read of the applied state), drop every start
    /// while the node may not act, and carry out the actions of every VM or task not busy.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), NodeError> {
        self.reconcile(true).await
    }

    /// A pass: `full` plans every VM of this node and every observed VM; otherwise only the
    /// VMs whose rows changed since the last plan (and those whose actions ended since), when
    /// that is known (else it is a full pass after all). Host networking always plans in full
    /// (its devices follow every VM of the node).
    async fn reconcile(self: &Arc<Self>, full: bool) -> Result<(), NodeError> {
        // Read before observing: any VM whose actions end after this point is judged stale.
        let (observed_at, planned_at, recheck) = {
            let l = self.local.lock().unwrap_or_else(|p| p.into_inner());
            let recheck: BTreeSet<String> = l.finished.keys().cloned().collect();
            (l.actions_done, l.planned_at, recheck)
        };
        let full = full || self.hostnet.is_some();
        // The two halves fail apart: a failed observation skips only its own plan (planning
        // from nothing would start everything again), never the other's.
        let driver = self.driver.clone();
        let vms_seen: Result<Vec<Observed>, NodeError> =
            match blocking::driver(async move { driver.list().await }).await {
                Some(Ok(l)) => Ok(l.iter().map(to_observed).collect()),
                Some(Err(e)) => Err(NodeError::Driver(e)),
                None => Err(shutting_down("listing VMs")),
            };
        let tasks_seen = self
            .tasks
            .observe()
            .await
            .map_err(|e| NodeError::io("reading this node's task attempts", e));
        // The plans and the index they were made at, under one guard: the lease check below
        // must judge the state the plan is made from (a backlog applied in between would let a
        // plan from before a move pass the "caught up" check, and restart a moved VM here).
        // The records are borrowed, not copied: only the specs of VMs to start are cloned.
        let (mut actions, mut task_actions, taps, applied, was_full) = {
            let a = self.node.state.read();
            // Only act on an applied state that knows this node; before registration (or after
            // a restore that lost it) the plan would stop everything.
            if !a.state.workers.contains_key(&self.node.id) {
                return vms_seen.and(tasks_seen).map(|_| ());
            }
            let applied = a.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
            // The events journal is fed under the state's write lock, so under this read guard
            // it holds exactly the entries up to `applied`.
            let changed = match planned_at {
                Some(at) if !full && at <= applied => {
                    self.node.events.vms_touched_since(at).map(|mut names| {
                        names.extend(recheck);
                        names
                    })
                }
                _ => None,
            };
            let mine = a
                .state
                .vms
                .values()
                .filter(|v| v.node_id == Some(self.node.id));
            let taps: Vec<String> = match &self.hostnet {
                Some(h) => mine
                    .clone()
                    .filter(|v| v.ip.is_some())
                    .map(|v| h.tap_name(v.name()))
                    .collect(),
                None => Vec::new(),
            };
            let was_full = changed.is_none();
            (
                vms_seen
                    .as_ref()
                    .map(|observed| match &changed {
                        Some(names) => {
                            planner::plan_changed(&a.state, self.node.id, names, observed)
                        }
                        None => planner::plan(self.node.id, mine, observed),
                    })
                    .unwrap_or_default(),
                tasks_seen
                    .as_ref()
                    .map(|observed| planner::plan_tasks(self.node.id, &a.state.tasks, observed))
                    .unwrap_or_default(),
                taps,
                applied,
                was_full,
            )
        };
        if vms_seen.is_ok() {
            let mut l = self.local.lock().unwrap_or_else(|p| p.into_inner());
            l.planned_at = Some(applied);
            if was_full {
                l.last_full = Some(Instant::now());
            }
        }
        let observed = match &vms_seen {
            Ok(o) => o.as_slice(),
            Err(_) => &[],
        };
        {
            let mut l = self.local.lock().unwrap_or_else(|p| p.into_inner());
            for o in observed {
                if matches!(o.run, RunState::Running) {
                    l.backoff.remove(&o.name);
                }
            }
        }
        if vms_seen.is_ok() {
            self.confirm_released(observed, observed_at).await;
            if let Some(h) = &self.hostnet {
                self.sync_network(h, taps, observed).await;
            }
        }
        // Without a lease (cut off from the cluster), or before catching up with what the
        // leader had committed when it renewed it, start nothing, VM or task: the cluster may
        // be moving them elsewhere. (The supervisors fence running ones when the lease expires.)
        if !self.node.liveness.may_act(applied) {
            let planned = actions.len();
            actions.retain(|a| !matches!(a, Action::Start { .. }));
            task_actions.retain(|a| !matches!(a, TaskAction::Start { .. }));
            if actions.len() < planned {
                // The starts held back here are planned again by the next pass: a full one
                // (nothing that changes the state need happen before this node may act).
                self.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .planned_at = None;
            }
        }
        let mut per_vm: BTreeMap<String, Vec<Action>> = BTreeMap::new();
        for a in actions {
            let name = match &a {
                Action::Start { spec, .. } => spec.name.clone(),
                Action::Stop { name } | Action::Remove { name } | Action::Report { name, .. } => {
                    name.clone()
                }
            };
            per_vm.entry(name).or_default().push(a);
        }
        // A pass that began before a shutdown request starts nothing new after it.
        if *self.node.shutdown_signal().borrow() {
            return vms_seen.and(tasks_seen).map(|_| ());
        }
        for (name, actions) in per_vm {
            {
                let mut l = self.local.lock().unwrap_or_else(|p| p.into_inner());
                if l.changed_since(&name, observed_at) || !l.inflight.insert(name.clone()) {
                    continue;
                }
            }
            let this = self.clone();
            let permits = self.permits.clone();
            self.actions.spawn(async move {
                // At most MAX_CONCURRENT_ACTIONS VMs are acted on at once; the rest wait here
                // (still in flight: no later pass plans them again meanwhile).
                let _permit = permits.acquire_owned().await;
                for a in actions {
                    if let Err(e) = this.perform(&a).await {
                        this.node.metrics.reconcile_errors.inc();
                        tracing::warn!(vm = %name, action = ?action_kind(&a), error = %e, "action failed; will retry");
                        break;
                    }
                }
                let mut l = this.local.lock().unwrap_or_else(|p| p.into_inner());
                l.inflight.remove(&name);
                l.actions_done += 1;
                let done = l.actions_done;
                l.finished.insert(name, done);
            });
        }
        for a in task_actions {
            self.tasks.perform(a).await;
        }
        // Later passes observe after `observed_at`: older completions no longer matter to them.
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finished
            .retain(|_, d| *d > observed_at);
        vms_seen.and(tasks_seen).map(|_| ())
    }

    /// Addresses of deleted VMs stay quarantined until their node confirms the placement no
    /// longer runs (see `blixard_core::network`): confirm those of this node whose VM (that
    /// epoch) is not alive here and has no action in flight.
    async fn confirm_released(&self, observed: &[Observed], observed_at: u64) {
        let waiting: Vec<(String, u64)> = {
            let a = self.node.state.read();
            a.state
                .networks
                .values()
                .flat_map(|n| n.leases.values())
                .filter_map(|l| match l {
                    blixard_core::Lease::Quarantined { name, node, epoch }
                        if *node == self.node.id =>
                    {
                        Some((name.clone(), *epoch))
                    }
                    _ => None,
                })
                .collect()
        };
        if waiting.is_empty() {
            return;
        }
        // In flight, or finished after `observed` was taken: what we saw of it may be stale.
        let busy: HashSet<String> = {
            let l = self.local.lock().unwrap_or_else(|p| p.into_inner());
            waiting
                .iter()
                .filter(|(n, _)| l.changed_since(n, observed_at))
                .map(|(n, _)| n.clone())
                .collect()
        };
        // A VM's run directory holds one run at a time and epochs only grow, so a copy of the
        // name alive here at the quarantined epoch or an older one may be that placement's
        // workload (or an older one that never stopped): only a newer live copy proves it gone.
        let alive = |name: &str, epoch: u64| {
            observed.iter().any(|o| {
                o.name == name
                    && o.epoch <= epoch
                    && matches!(o.run, RunState::Starting | RunState::Running)
            })
        };
        let done: Vec<(String, u64)> = waiting
            .into_iter()
            .filter(|(n, e)| !busy.contains(n) && !alive(n, *e))
            .collect();
        if done.is_empty() {
            return;
        }
        let cmd = Command::ReleaseAddresses {
            node_id: self.node.id,
            vms: done.clone(),
        };
        match self.node.propose(cmd, None).await {
            Ok(_) => {
                tracing::info!(vms = ?done, "confirmed deleted VMs stopped: their addresses are free")
            }
            Err(e) => tracing::debug!(error = %e, "confirming released addresses: will retry"),
        }
    }

    async fn perform(self: &Arc<Self>, action: &Action) -> Result<(), NodeError> {
        match action {
            Action::Start {
                spec,
                epoch,
                restart,
            } => {
                if *restart && !self.restart_allowed(&spec.name) {
                    return Ok(());
                }
                // Building the default guest and resolving image paths touch the disk.
                let (this, s) = (self.clone(), spec.clone());
                let prepared = tokio::task::spawn_blocking(move || {
                    let mut cfg = this.vm_config(&s)?;
                    Ok::<_, NodeError>(this.resolve_host_files(&s, &mut cfg).map(|()| cfg))
                })
                .await
                .map_err(|e| {
                    NodeError::io(
                        format!("preparing VM '{}'", spec.name),
                        std::io::Error::other(e),
                    )
                })??;
                let mut cfg = match prepared {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        // Refused (outside the image directories, or missing): final.
                        tracing::warn!(vm = %spec.name, error = %e, "refusing a host file");
                        return self
                            .report(
                                &spec.name,
                                *epoch,
                                blixard_core::VmState::Failed,
                                Some(e.to_string()),
                            )
                            .await;
                    }
                };
                self.attach_network(&mut cfg).await?;
                tracing::info!(vm = %spec.name, epoch, restart, "starting VM");
                let (driver, e) = (self.driver.clone(), *epoch);
                let started = blocking::driver(async move { driver.start(&cfg, e).await })
                    .await
                    .ok_or_else(|| shutting_down("starting a VM"))?;
                match started {
                    // Counted once per restart, by the node that did it.
                    Ok(()) if *restart => {
                        self.report_as(
                            &spec.name,
                            *epoch,
                            blixard_core::VmState::Starting,
                            None,
                            true,
                        )
                        .await
                    }
                    Ok(()) => Ok(()),
                    Err(
                        e @ (DriverError::MissingFile { .. }
                        | DriverError::GuestKernelMissing { .. }
                        | DriverError::InvalidConfig { .. }
                        | DriverError::BusyboxMissing { .. }),
                    ) => {
                        // It will not get better by retrying: record the failure.
                        self.report(
                            &spec.name,
                            *epoch,
                            blixard_core::VmState::Failed,
                            Some(e.to_string()),
                        )
                        .await
                    }
                    Err(e) => Err(NodeError::Driver(e)),
                }
            }
            Action::Stop { name } => {
                tracing::info!(vm = %name, "stopping VM");
                let (driver, n) = (self.driver.clone(), name.clone());
                blocking::driver(async move { driver.stop(&n, STOP_GRACE).await })
                    .await
                    .ok_or_else(|| shutting_down("acting on a VM"))?
                    .map_err(NodeError::Driver)
            }
            Action::Remove { name } => {
                tracing::info!(vm = %name, "removing VM run state");
                self.local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .backoff
                    .remove(name);
                let (driver, n) = (self.driver.clone(), name.clone());
                blocking::driver(async move { driver.remove(&n).await })
                    .await
                    .ok_or_else(|| shutting_down("acting on a VM"))?
                    .map_err(NodeError::Driver)
            }
            Action::Report {
                name,
                epoch,
                state,
                reason,
            } => self.report(name, *epoch, *state, reason.clone()).await,
        }
    }

    async fn report(
        &self,
        name: &str,
        epoch: u64,
        state: blixard_core::VmState,
        reason: Option<String>,
    ) -> Result<(), NodeError> {
        self.report_as(name, epoch, state, reason, false).await
    }

    async fn report_as(
        &self,
        name: &str,
        epoch: u64,
        state: blixard_core::VmState,
        reason: Option<String>,
        restarted: bool,
    ) -> Result<(), NodeError> {
        let cmd = Command::ReportVmStatus {
            name: name.to_string(),
            node_id: self.node.id,
            epoch,
            state,
            reason,
            restarted,
        };
        match self.node.propose(cmd, None).await {
            Ok(_) => {
                tracing::info!(vm = %name, epoch, state = state.as_str(), "reported");
                Ok(())
            }
            // The placement moved on (or the VM is gone): the next plan sees it.
            Err(NodeError::Rejected(
                ApplyError::StaleEpoch { .. } | ApplyError::NotFound { .. },
            )) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies restart backoff; returns whether a restart may happen now.
    fn restart_allowed(&self, name: &str) -> bool {
        let mut l = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let entry = l.backoff.entry(name.to_string()).or_insert((0, now));
        if now < entry.1 {
            return false;
        }
        let delay = BACKOFF_BASE
            .saturating_mul(1u32 << entry.0.min(5))
            .min(BACKOFF_MAX);
        entry.0 += 1;
        entry.1 = now + delay;
        true
    }
}

/// A driver call that could not run: the runtime is shutting down.
fn shutting_down(what: &str) -> NodeError {
    NodeError::io(what, std::io::Error::other("the daemon is shutting down"))
}

fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::Start { .. } => "start",
        Action::Stop { .. } => "stop",
        Action::Remove { .. } => "remove",
        Action::Report { .. } => "report",
    }
}

mod host;
mod network;
pub use host::make_driver;
