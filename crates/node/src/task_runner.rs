//! Runs the one-shot tasks the applied state assigns to this node, as host processes, and
//! reports their start and result through Raft.
//!
//! Stateless like the executor: what to run comes from the applied state; the only local
//! things are runtime handles (a cancel channel per running attempt) and, on disk under
//! `<data_dir>/tasks/<id>/`, the captured output (`output`, the last 64 KiB), a marker
//! (`attempt.json`) recording that an attempt was started, so a restarted daemon never starts
//! the same attempt twice, the supervisor's run directory `run/`, and the task's working
//! directory `work/` (fresh for each attempt).
//!
//! # Unprivileged
//!
//! A daemon running as root runs tasks as the node's task user (`--task-user`, default
//! `blixard-task`, created by scripts/setup.sh), with resource limits
//! ([`blixard_vmm::supervisor::Limits`]); the task cannot start when that user does not exist.
//! Only `work/` belongs to the task user: the task reaches it as its working directory (entered
//! before the drop), while `<data_dir>` and `tasks/<id>/` stay root's and closed, so it cannot
//! read the node's keys, state or other tasks, nor forge its own ending in `run/`. A daemon
//! that is not root runs tasks as its own user (it has nothing to drop).
//!
//! Each attempt runs under its own workload supervisor (`blixard_vmm::supervisor`), exactly
//! like a VM: detached from the daemon, it holds the process as its child, kills it at the
//! task's timeout, fences it when the node's lease cannot be proven valid (daemon killed,
//! frozen or cut off), kills it when `run/stop_requested` appears (cancellation, or an attempt
//! that is no longer this node's), keeps the output bounded and records the ending
//! (`exit_code`, `timed_out`, `fenced`, `exec_failed`). The daemon never signals a task
//! process itself; it identifies one by pid, start time and boot id (recorded in the marker).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blixard_core::{ApplyError, Command, TaskRecord, TaskState};
use blixard_vmm::{rundir, supervisor};
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::NodeError;
use crate::node::Node;

/// Output kept per task: the last this many bytes.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// How often the runner looks at the applied state even when nothing changed.
const PASS_INTERVAL: Duration = Duration::from_millis(500);

/// What the marker file records about the attempt this node started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    epoch: u64,
    attempt: u32,
    /// Process (and process group) id, once spawned.
    pid: Option<u32>,
    /// Its start time (`/proc/<pid>/stat` field 22) and the host's boot id: with the pid, the
    /// identity of the process (a recycled pid is never taken for it).
    #[serde(default)]
    starttime: Option<u64>,
    #[serde(default)]
    boot_id: Option<String>,
    /// The result was reported.
    done: bool,
}

pub struct TaskRunner {
    node: Arc<Node>,
    dir: PathBuf,
    /// (task id) -> (epoch, cancel sender) of the attempts running here.
    running: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
}

/// The directory of task `id` under a node's data directory.
pub fn task_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("tasks").join(id)
}

/// The captured output of task `id`.
pub fn output_path(data_dir: &Path, id: &str) -> PathBuf {
    task_dir(data_dir, id).join("output")
}

fn read_marker(dir: &Path) -> Option<Marker> {
    serde_json::from_slice(&std::fs::read(dir.join("attempt.json")).ok()?).ok()
}

fn write_marker(dir: &Path, m: &Marker) -> std::io::Result<()> {
    let tmp = dir.join("attempt.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(m).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join("attempt.json"))
}

/// The supervisor's run directory of the attempt recorded in `dir`.
fn run_dir(dir: &Path) -> PathBuf {
    dir.join("run")
}

/// True while the attempt's process, as recorded in the marker (pid, start time, boot id), is
/// alive. Never a bare pid: a recycled one is not the task.
fn recorded_alive(m: &Marker) -> bool {
    match (m.pid, m.starttime) {
        (Some(pid), Some(st)) => {
            m.boot_id.is_some() && m.boot_id == rundir::boot_id() && rundir::is_alive(pid, Some(st))
        }
        _ => false,
    }
}

/// Asks the attempt's supervisor to stop it (non-blocking).
fn request_stop(dir: &Path) {
    let run = run_dir(dir);
    if run.is_dir() {
        if let Err(e) = std::fs::write(run.join(rundir::STOP_REQUESTED), b"") {
            tracing::warn!(dir = %run.display(), error = %e, "cannot ask the task's supervisor to stop it");
        }
    }
}

/// Whether the attempt supervised in `dir` is over: its supervisor recorded the exit, or
/// neither the supervisor nor the recorded process is alive.
fn attempt_over(dir: &Path, m: &Marker) -> bool {
    let run = run_dir(dir);
    if !run.is_dir() || run.join(rundir::EXIT_CODE).exists() {
        return !recorded_alive(m);
    }
    let supervisor_alive = std::fs::read_to_string(run.join(rundir::SUPERVISOR_PID))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|p| rundir::is_alive(p, None));
    !supervisor_alive && !recorded_alive(m)
}

/// Stops the attempt recorded in `dir` if it still runs, and waits until it is over.
async fn stop_attempt(dir: &Path, m: &Marker) {
    if attempt_over(dir, m) {
        return;
    }
    request_stop(dir);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !attempt_over(dir, m) {
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(dir = %dir.display(), pid = ?m.pid, "a task attempt did not stop within 10s of being asked to");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the attempt supervised in `dir` ended, from its supervisor's files (once `exit_code`
/// is there). `cancelled`: this daemon asked for the stop because of a cancellation.
fn ending_from_files(dir: &Path, cancelled: bool, node_id: u64) -> Ending {
    let run = run_dir(dir);
    let read = |f: &str| {
        std::fs::read_to_string(run.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let code: Option<i32> = read(rundir::EXIT_CODE).and_then(|s| s.parse().ok());
    let failed = |reason: String| Ending {
        state: TaskState::Failed,
        exit_code: None,
        reason: Some(reason),
    };
    if let Some(why) = read(supervisor::EXEC_FAILED) {
        return failed(why);
    }
    if let Some(why) = read(supervisor::TIMED_OUT) {
        return Ending {
            state: TaskState::TimedOut,
            exit_code: None,
            reason: Some(why),
        };
    }
    if let Some(why) = read(rundir::FENCED) {
        return failed(format!(
            "node {node_id} could not prove its lease valid, so the task was stopped: {why}"
        ));
    }
    if cancelled {
        return Ending {
            state: TaskState::Cancelled,
            exit_code: None,
            reason: Some("cancelled by request; its process group was killed".into()),
        };
    }
    match code {
        Some(0) => Ending {
            state: TaskState::Succeeded,
            exit_code: Some(0),
            reason: None,
        },
        Some(c) if (1..=128).contains(&c) => Ending {
            state: TaskState::Failed,
            exit_code: Some(c),
            reason: Some(format!("exited with code {c}")),
        },
        Some(c) if c > 128 => failed(format!("killed by signal {}", c - 128)),
        _ => failed(
            "the process is gone without a recorded exit status (its supervisor was killed)".into(),
        ),
    }
}

/// The user a task runs as: `name` when this daemon is root (an error when it does not
/// exist), `None` (the daemon's own user) otherwise.
fn task_user(name: &str) -> Result<Option<supervisor::RunAs>, String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Some(supervisor::RunAs {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })),
        Ok(None) => Err(format!(
            "the task user '{name}' does not exist on this host: run scripts/setup.sh (as root) to create it, or start the node with --task-user NAME"
        )),
        Err(e) => Err(format!("cannot look up the task user '{name}': {e}")),
    }
}

/// The task's working directory `dir/work`, fresh and owned by the task's user (`dir` itself
/// closed to everyone else).
fn prepare_work_dir(dir: &Path, run_as: Option<&supervisor::RunAs>) -> Result<PathBuf, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let work = dir.join("work");
    let io = |what: &str, e: std::io::Error| NodeError::io(format!("{what} {}", work.display()), e);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| NodeError::io(format!("closing {}", dir.display()), e))?;
    std::fs::create_dir(&work).map_err(|e| io("creating", e))?;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("setting the mode of", e))?;
    if let Some(r) = run_as {
        std::os::unix::fs::chown(&work, Some(r.uid), Some(r.gid))
            .map_err(|e| io("handing over", e))?;
    }
    Ok(work)
}

/// How an attempt ended.
struct Ending {
    state: TaskState,
    exit_code: Option<i32>,
    reason: Option<String>,
}

impl TaskRunner {
    pub fn new(node: Arc<Node>) -> Arc<Self> {
        let dir = node.config.data_dir.join("tasks");
        Arc::new(Self {
            node,
            dir,
            running: Mutex::new(HashMap::new()),
        })
    }

    pub async fn run(self: Arc<Self>) {
        let mut applied = self.node.raft.metrics();
        loop {
            self.pass().await;
            tokio::select! {
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
                _ = applied.changed() => tokio::time::sleep(Duration::from_millis(20)).await,
                _ = self.node.stopped() => return,
            }
        }
    }

    async fn pass(self: &Arc<Self>) {
        // Read with the index they were applied at, under one guard (see the executor).
        let (mine, known, applied): (Vec<TaskRecord>, std::collections::HashSet<String>, u64) = {
            let a = self.node.state.read();
            if !a.state.workers.contains_key(&self.node.id) {
                return;
            }
            let applied = a.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
            let mine = a
                .state
                .tasks
                .values()
                .filter(|t| t.node_id == Some(self.node.id) && !t.state.is_finished())
                .cloned()
                .collect();
            (mine, a.state.tasks.keys().cloned().collect(), applied)
        };
        let may_start = self.node.liveness.may_act(applied);
        let current: HashMap<&str, u64> = mine.iter().map(|t| (t.id.as_str(), t.epoch)).collect();

        // Attempts running here that are no longer this node's (reassigned, forgotten): stop them.
        for (id, (epoch, tx)) in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if current.get(id.as_str()) != Some(epoch) {
                let _ = tx.send(true);
            }
        }

        // Leftovers: attempts started here that are no longer this node's current ones.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let dir = e.path();
                if self
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&id)
                {
                    continue;
                }
                let marker = read_marker(&dir);
                let is_current = marker
                    .as_ref()
                    .is_some_and(|m| current.get(id.as_str()) == Some(&m.epoch));
                if is_current {
                    continue;
                }
                if let Some(m) = &marker {
                    if !m.done {
                        if !attempt_over(&dir, m) {
                            tracing::warn!(task = %id, epoch = m.epoch, pid = ?m.pid, "stopping a leftover attempt that is no longer this node's");
                            request_stop(&dir);
                        }
                        let _ = write_marker(
                            &dir,
                            &Marker {
                                done: true,
                                ..m.clone()
                            },
                        );
                    }
                }
                if !known.contains(&id) {
                    // Forgotten by the cluster (retention): drop its output too.
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }

        for t in mine {
            let handle = self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&t.id)
                .map(|(e, tx)| (*e, tx.clone()));
            if let Some((epoch, tx)) = handle {
                if epoch == t.epoch && t.cancel_requested {
                    let _ = tx.send(true);
                }
                continue;
            }
            let dir = task_dir(&self.node.config.data_dir, &t.id);
            match read_marker(&dir) {
                Some(m) if m.epoch == t.epoch && m.done => continue,
                Some(m) if m.epoch == t.epoch => {
                    // Started by an earlier run of this daemon: reported below, after its
                    // supervisor stopped it (or from what it recorded, if it had ended).
                    self.spawn_report(t.clone(), m, None);
                    continue;
                }
                _ => {}
            }
            if t.cancel_requested {
                let m = Marker {
                    epoch: t.epoch,
                    attempt: t.attempt,
                    pid: None,
                    starttime: None,
                    boot_id: None,
                    done: false,
                };
                let ending = Ending {
                    state: TaskState::Cancelled,
                    exit_code: None,
                    reason: Some("cancelled before it started".into()),
                };
                self.spawn_report(t.clone(), m, Some(ending));
                continue;
            }
            if !may_start {
                continue;
            }
            let (tx, rx) = watch::channel(false);
            self.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(t.id.clone(), (t.epoch, tx));
            let this = self.clone();
            tokio::spawn(async move {
                let id = t.id.clone();
                if let Err(e) = this.run_attempt(t, rx).await {
                    tracing::warn!(task = %id, error = %e, "task attempt");
                }
                this.running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            });
        }
    }

    /// Reports `ending` for an attempt not running here, then marks it done. `None`: an
    /// attempt an earlier run of this daemon started; it is stopped first if it still runs,
    /// and reported failed (or as it ended, if it ended by itself meanwhile).
    fn spawn_report(self: &Arc<Self>, t: TaskRecord, m: Marker, ending: Option<Ending>) {
        let (tx, _rx) = watch::channel(false);
        {
            let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if r.contains_key(&t.id) {
                return;
            }
            r.insert(t.id.clone(), (t.epoch, tx));
        }
        let this = self.clone();
        tokio::spawn(async move {
            let dir = task_dir(&this.node.config.data_dir, &t.id);
            let _ = std::fs::create_dir_all(&dir);
            let ending = match ending {
                Some(e) => e,
                None => {
                    let run = run_dir(&dir);
                    let ended_by_itself = run.join(rundir::EXIT_CODE).exists()
                        && !run.join(rundir::STOP_REQUESTED).exists();
                    stop_attempt(&dir, &m).await;
                    if ended_by_itself {
                        ending_from_files(&dir, false, this.node.id)
                    } else {
                        let reason = format!(
                            "blixard on node {} restarted while attempt {} was running; the process was stopped and its result is unknown",
                            this.node.id, t.attempt
                        );
                        tracing::warn!(task = %t.id, epoch = t.epoch, "{reason}");
                        Ending {
                            state: TaskState::Failed,
                            exit_code: None,
                            reason: Some(reason),
                        }
                    }
                }
            };
            let _ = this.report_result(&t, ending, None).await;
            let _ = write_marker(&dir, &Marker { done: true, ..m });
            this.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&t.id);
        });
    }

    async fn run_attempt(
        &self,
        t: TaskRecord,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let dir = task_dir(&self.node.config.data_dir, &t.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| NodeError::io(format!("creating {}", dir.display()), e))?;
        // An earlier attempt of this task on this node must be over before this one starts.
        if let Some(old) = read_marker(&dir) {
            stop_attempt(&dir, &old).await;
        }
        let run = run_dir(&dir);
        let out_path = dir.join("output");
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run)
            .map_err(|e| NodeError::io(format!("creating {}", run.display()), e))?;
        let run_as = match task_user(&self.node.config.task_user) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(task = %t.id, "{why}");
                let marker = Marker {
                    epoch: t.epoch,
                    attempt: t.attempt,
                    pid: None,
                    starttime: None,
                    boot_id: None,
                    done: false,
                };
                write_marker(&dir, &marker)
                    .map_err(|e| NodeError::io("writing the attempt marker", e))?;
                let ending = Ending {
                    state: TaskState::Failed,
                    exit_code: None,
                    reason: Some(format!("node {}: {why}", self.node.id)),
                };
                let r = self.report_result(&t, ending, None).await;
                let _ = write_marker(
                    &dir,
                    &Marker {
                        done: true,
                        ..marker
                    },
                );
                return r;
            }
        };
        let work = prepare_work_dir(&dir, run_as.as_ref())?;
        let mut marker = Marker {
            epoch: t.epoch,
            attempt: t.attempt,
            pid: None,
            starttime: None,
            boot_id: None,
            done: false,
        };
        write_marker(&dir, &marker).map_err(|e| NodeError::io("writing the attempt marker", e))?;
        tracing::info!(task = %t.id, epoch = t.epoch, attempt = t.attempt, "starting task");

        let started = Instant::now();
        let spec = supervisor::Spec {
            dir: run.clone(),
            name: t.id.clone(),
            epoch: t.epoch,
            out: out_path.clone(),
            cwd: Some(work),
            timeout: Some(Duration::from_secs(t.spec.timeout_secs)),
            output_limit: Some(OUTPUT_LIMIT),
            stop_kills: true,
            limits: run_as.as_ref().map(|_| supervisor::Limits::default()),
            run_as,
            argv: t.spec.command.clone(),
            stdin_fifo: None,
            stdout: None,
        };
        let mut envs: Vec<(String, String)> = t
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        envs.push(("BLIXARD_TASK_ID".into(), t.id.clone()));
        envs.push(("BLIXARD_TASK_ATTEMPT".into(), t.attempt.to_string()));
        envs.push((
            blixard_vmm::LEASE_FILE_ENV.into(),
            crate::liveness::lease_file(&self.node)
                .display()
                .to_string(),
        ));
        if let Err(e) = supervisor::launch(&supervisor::default_command(), &spec, &envs).await {
            let ending = Ending {
                state: TaskState::Failed,
                exit_code: None,
                reason: Some(format!("cannot start '{}': {e}", t.spec.command[0])),
            };
            let r = self
                .report_result(&t, ending, Some(started.elapsed()))
                .await;
            let _ = write_marker(
                &dir,
                &Marker {
                    done: true,
                    ..marker
                },
            );
            return r;
        }
        // The supervisor records the pid right after spawning (or the exit, if it never ran).
        let pid_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pid) = std::fs::read_to_string(run.join(rundir::PID))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                marker.pid = Some(pid);
                marker.starttime = rundir::process_starttime(pid);
                marker.boot_id = rundir::boot_id();
                let _ = write_marker(&dir, &marker);
                break;
            }
            if run.join(rundir::EXIT_CODE).exists() {
                break;
            }
            if tokio::time::Instant::now() >= pid_deadline {
                tracing::warn!(task = %t.id, "the task's supervisor recorded no pid within 10s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // Started: tell the cluster (best effort; the result is what counts).
        match self
            .node
            .propose(
                Command::ReportTaskStarted {
                    id: t.id.clone(),
                    node_id: self.node.id,
                    epoch: t.epoch,
                },
                None,
            )
            .await
        {
            Ok(_) => {}
            Err(NodeError::Rejected(e)) => {
                // No longer this node's attempt (reassigned, cancelled or forgotten): stop.
                tracing::info!(task = %t.id, epoch = t.epoch, "start refused, stopping: {e}");
                stop_attempt(&dir, &marker).await;
                let _ = write_marker(
                    &dir,
                    &Marker {
                        done: true,
                        ..marker
                    },
                );
                return Ok(());
            }
            Err(e) => tracing::info!(task = %t.id, error = %e, "reporting the start"),
        }

        // The supervisor enforces the timeout, the lease and the output bound; this waits for
        // the ending it records, and relays a cancellation.
        let mut cancelled = false;
        loop {
            if run.join(rundir::EXIT_CODE).exists() || attempt_over(&dir, &marker) {
                break;
            }
            tokio::select! {
                r = cancel.changed(), if !cancelled => {
                    if r.is_err() || *cancel.borrow() {
                        cancelled = true;
                        request_stop(&dir);
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let ending = ending_from_files(&dir, cancelled, self.node.id);
        let elapsed = started.elapsed();
        tracing::info!(task = %t.id, epoch = t.epoch, state = ending.state.as_str(), "task ended");
        let r = self.report_result(&t, ending, Some(elapsed)).await;
        let _ = write_marker(
            &dir,
            &Marker {
                done: true,
                ..marker
            },
        );
        r
    }

    /// Proposes the result, retrying while there is no leader; a refusal (the attempt is no
    /// longer current) ends it.
    async fn report_result(
        &self,
        t: &TaskRecord,
        ending: Ending,
        elapsed: Option<Duration>,
    ) -> Result<(), NodeError> {
        let cmd = Command::ReportTaskResult {
            id: t.id.clone(),
            node_id: self.node.id,
            epoch: t.epoch,
            state: ending.state,
            exit_code: ending.exit_code,
            duration_ms: elapsed.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            reason: ending.reason,
        };
        loop {
            match self.node.propose(cmd.clone(), None).await {
                Ok(_) => return Ok(()),
                Err(NodeError::Rejected(
                    e @ (ApplyError::StaleAttempt { .. } | ApplyError::NotFound { .. }),
                )) => {
                    tracing::info!(task = %t.id, epoch = t.epoch, "result refused: {e}");
                    return Ok(());
                }
                Err(NodeError::Rejected(e)) => return Err(NodeError::Rejected(e)),
                Err(e) => {
                    tracing::info!(task = %t.id, error = %e, "reporting the result; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.node.stopped() => return Err(e),
                    }
                }
            }
        }
    }
}
