//! The executor: makes this host run exactly the VMs the applied state places on it.
//!
//! It is stateless in the sense of the design's first law: desired state comes from the
//! applied Raft state, observed state from the driver (which rediscovers everything from the
//! host), and the difference is a pure plan (`blixard_core::planner::plan`). What it observes
//! it reports back through Raft, tagged with the placement epoch. The only things it keeps are
//! local runtime handles: which VMs have an action in flight, and restart backoff timers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blixard_core::planner::{self, Action, Observed, RunState};
use blixard_core::{ApplyError, Command, VmRecord, VmSpec};
use blixard_vmm::{DriverError, VmConfig, VmDriver};
use openraft::async_runtime::WatchReceiver;

use crate::error::NodeError;
use crate::node::Node;

/// How often the executor compares desired and observed state even when nothing changed.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);
/// Graceful stop timeout before the VM is forced off.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Restart backoff: doubles per consecutive failure, capped.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Local {
    /// VMs with actions being carried out.
    inflight: HashSet<String>,
    /// Consecutive restarts and when the next one may happen.
    backoff: HashMap<String, (u32, Instant)>,
}

pub struct Executor {
    node: Arc<Node>,
    driver: Arc<dyn VmDriver>,
    /// Default guest (kernel, initrd) for VMs that name none; built lazily.
    default_guest: Mutex<Option<(PathBuf, PathBuf)>>,
    local: Mutex<Local>,
}

/// Maps what the driver sees onto the planner's vocabulary.
pub fn to_observed(o: &blixard_vmm::Observed) -> Observed {
    let run = match &o.state {
        blixard_vmm::RunState::Starting => RunState::Starting,
        blixard_vmm::RunState::Running => RunState::Running,
        blixard_vmm::RunState::Stopped { exit_code } => RunState::Exited { code: *exit_code, requested: true, reason: None },
        blixard_vmm::RunState::Failed { reason } => {
            RunState::Exited { code: None, requested: false, reason: Some(short_reason(reason)) }
        }
    };
    Observed { name: o.name.clone(), epoch: o.epoch, run }
}

/// The first line of a failure reason, plus the last console line if there is one: enough for
/// `vm status`; the full story stays in the console log.
fn short_reason(reason: &str) -> String {
    let mut r: String = reason.lines().next().unwrap_or("").chars().take(300).collect();
    if let Some(last) = reason.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("---")) {
        if !r.contains(last.trim()) {
            r.push_str(" | last output: ");
            r.extend(last.trim().chars().take(200));
        }
    }
    r
}

impl Executor {
    pub fn new(node: Arc<Node>, driver: Arc<dyn VmDriver>) -> Arc<Self> {
        Arc::new(Self { node, driver, default_guest: Mutex::new(None), local: Mutex::new(Local::default()) })
    }

    pub fn driver(&self) -> &Arc<dyn VmDriver> {
        &self.driver
    }

    /// Runs until the node stops. VMs keep running after it returns (they are detached).
    pub async fn run(self: Arc<Self>) {
        let mut applied = self.node.raft.metrics();
        loop {
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!(error = %e, "reconcile");
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
                _ = applied.changed() => {
                    // Coalesce bursts of applied entries.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = self.node.stopped() => return,
            }
        }
    }

    /// One pass: observe, plan, and start the actions of every VM not already busy.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), NodeError> {
        let observed: Vec<Observed> = self
            .driver
            .list()
            .await
            .map_err(|e| NodeError::Io(format!("listing VMs: {e}")))?
            .iter()
            .map(to_observed)
            .collect();
        let mine: Vec<VmRecord> = {
            let a = self.node.state.read();
            // Only act on an applied state that knows this node; before registration (or after
            // a restore that lost it) the plan would stop everything.
            if !a.state.workers.contains_key(&self.node.id) {
                return Ok(());
            }
            a.state.vms.values().filter(|v| v.node_id == Some(self.node.id)).cloned().collect()
        };
        {
            let mut l = self.local.lock().unwrap_or_else(|p| p.into_inner());
            for o in &observed {
                if matches!(o.run, RunState::Running) {
                    l.backoff.remove(&o.name);
                }
            }
        }
        let mut actions = planner::plan(self.node.id, mine.iter(), &observed);
        // Without a lease (cut off from the cluster), or before catching up with what the
        // leader had committed when it renewed it, start nothing: the cluster may be moving
        // these VMs elsewhere. (The supervisors fence running VMs when the lease expires.)
        let applied = self.node.state.read().last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        if !self.node.liveness.may_act(applied) {
            actions.retain(|a| !matches!(a, Action::Start { .. }));
        }
        let mut per_vm: BTreeMap<String, Vec<Action>> = BTreeMap::new();
        for a in actions {
            let name = match &a {
                Action::Start { spec, .. } => spec.name.clone(),
                Action::Stop { name } | Action::Remove { name } | Action::Report { name, .. } => name.clone(),
            };
            per_vm.entry(name).or_default().push(a);
        }
        for (name, actions) in per_vm {
            {
                let mut l = self.local.lock().unwrap_or_else(|p| p.into_inner());
                if !l.inflight.insert(name.clone()) {
                    continue;
                }
            }
            let this = self.clone();
            tokio::spawn(async move {
                for a in actions {
                    if let Err(e) = this.perform(&a).await {
                        tracing::warn!(vm = %name, action = ?action_kind(&a), error = %e, "action failed; will retry");
                        break;
                    }
                }
                this.local.lock().unwrap_or_else(|p| p.into_inner()).inflight.remove(&name);
            });
        }
        Ok(())
    }

    async fn perform(&self, action: &Action) -> Result<(), NodeError> {
        match action {
            Action::Start { spec, epoch, restart } => {
                if *restart && !self.restart_allowed(&spec.name) {
                    return Ok(());
                }
                let cfg = self.vm_config(spec)?;
                tracing::info!(vm = %spec.name, epoch, restart, "starting VM");
                match self.driver.start(&cfg, *epoch).await {
                    // Counted once per restart, by the node that did it.
                    Ok(()) if *restart => self.report_as(&spec.name, *epoch, blixard_core::VmState::Starting, None, true).await,
                    Ok(()) => Ok(()),
                    Err(e @ (DriverError::MissingFile { .. } | DriverError::GuestKernelMissing { .. } | DriverError::InvalidConfig { .. } | DriverError::BusyboxMissing { .. })) => {
                        // It will not get better by retrying: record the failure.
                        self.report(&spec.name, *epoch, blixard_core::VmState::Failed, Some(e.to_string())).await
                    }
                    Err(e) => Err(NodeError::Io(e.to_string())),
                }
            }
            Action::Stop { name } => {
                tracing::info!(vm = %name, "stopping VM");
                self.driver.stop(name, STOP_GRACE).await.map_err(|e| NodeError::Io(e.to_string()))
            }
            Action::Remove { name } => {
                tracing::info!(vm = %name, "removing VM run state");
                self.local.lock().unwrap_or_else(|p| p.into_inner()).backoff.remove(name);
                self.driver.remove(name).await.map_err(|e| NodeError::Io(e.to_string()))
            }
            Action::Report { name, epoch, state, reason } => self.report(name, *epoch, *state, reason.clone()).await,
        }
    }

    async fn report(&self, name: &str, epoch: u64, state: blixard_core::VmState, reason: Option<String>) -> Result<(), NodeError> {
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
        let cmd = Command::ReportVmStatus { name: name.to_string(), node_id: self.node.id, epoch, state, reason, restarted };
        match self.node.propose(cmd, None).await {
            Ok(_) => {
                tracing::info!(vm = %name, epoch, state = state.as_str(), "reported");
                Ok(())
            }
            // The placement moved on (or the VM is gone): the next plan sees it.
            Err(NodeError::Rejected(ApplyError::StaleEpoch { .. } | ApplyError::NotFound { .. })) => Ok(()),
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
        let delay = BACKOFF_BASE.saturating_mul(1u32 << entry.0.min(5)).min(BACKOFF_MAX);
        entry.0 += 1;
        entry.1 = now + delay;
        true
    }

    fn vm_config(&self, spec: &VmSpec) -> Result<VmConfig, NodeError> {
        let mut cfg = VmConfig::new(spec.name.clone());
        cfg.vcpus = spec.vcpus;
        cfg.memory_mb = spec.memory_mb;
        cfg.cmdline = spec.cmdline.clone();
        cfg.kernel = spec.kernel.as_ref().map(PathBuf::from);
        cfg.initrd = spec.initrd.as_ref().map(PathBuf::from);
        cfg.disk_image = spec.disk_image.as_ref().map(PathBuf::from);
        if self.driver.kind() == "qemu" && cfg.kernel.is_none() {
            let (k, i) = self.default_guest()?;
            cfg.kernel = Some(k);
            if cfg.initrd.is_none() {
                cfg.initrd = Some(i);
            }
        }
        Ok(cfg)
    }

    fn default_guest(&self) -> Result<(PathBuf, PathBuf), NodeError> {
        let mut g = self.default_guest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.as_ref() {
            return Ok(v.clone());
        }
        let v = blixard_vmm::guest::default_guest(&blixard_vmm::guest::guest_dir()).map_err(|e| NodeError::Config(e.to_string()))?;
        *g = Some(v.clone());
        Ok(v)
    }
}

fn action_kind(a: &Action) -> &'static str {
    match a {
        Action::Start { .. } => "start",
        Action::Stop { .. } => "stop",
        Action::Remove { .. } => "remove",
        Action::Report { .. } => "report",
    }
}

/// Builds the driver named in the configuration.
pub fn make_driver(kind: &str, run_root: PathBuf, lease_file: &std::path::Path) -> Result<Arc<dyn VmDriver>, NodeError> {
    let lease = lease_file.display().to_string();
    match kind {
        "process" => {
            let exe = std::env::current_exe().map_err(|e| NodeError::Config(format!("cannot find own executable: {e}")))?;
            let argv = vec![exe.display().to_string(), "__workload".to_string()];
            let mut d = blixard_vmm::ProcessDriver::new(run_root, argv).with_env(blixard_vmm::LEASE_FILE_ENV, lease);
            if let Ok(f) = std::env::var(blixard_vmm::EVENTS_FILE_ENV) {
                d = d.with_env(blixard_vmm::EVENTS_FILE_ENV, f);
            }
            Ok(Arc::new(d))
        }
        "qemu" => {
            let found = std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
                .unwrap_or(false);
            if !found {
                return Err(NodeError::Config(
                    "qemu-system-x86_64 not found: run scripts/setup.sh (as root) or start with --driver process".into(),
                ));
            }
            Ok(Arc::new(blixard_vmm::QemuDriver::new(run_root).with_env(blixard_vmm::LEASE_FILE_ENV, lease)))
        }
        other => Err(NodeError::Config(format!("unknown driver '{other}': use qemu or process"))),
    }
}
