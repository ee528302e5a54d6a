//! Runs the one-shot tasks the applied state assigns to this node, as host processes, and
//! reports their start and result through Raft.
//!
//! It has no loop of its own: the executor's pass observes (`TaskRunner::observe`), plans
//! with the pure `blixard_core::planner::plan_tasks` beside the VM plan, and hands the task
//! actions here (`TaskRunner::perform`). Every filesystem call runs on the blocking pool.
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

use blixard_core::planner::{AttemptMarker, TaskAction, TaskObserved};
use blixard_core::{ApplyError, Command, TaskRecord, TaskState};
use blixard_vmm::{rundir, supervisor};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::blocking;
use crate::error::NodeError;
use crate::node::Node;

mod attempt;
use attempt::*;
pub use attempt::{output_path, task_dir};

/// Output kept per task: the last this many bytes.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// How long shutdown waits for the attempts' handlers.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// Carries out the task actions the executor's pass plans
/// ([`blixard_core::planner::plan_tasks`]); it has no loop of its own.
pub struct TaskRunner {
    node: Arc<Node>,
    dir: PathBuf,
    /// (task id) -> (epoch, cancel sender) of the attempts handled here (run, or stopped and
    /// reported).
    running: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
    /// The handlers of those attempts: joined on shutdown.
    tracker: TaskTracker,
}

impl TaskRunner {
    pub fn new(node: Arc<Node>) -> Arc<Self> {
        let dir = node.config.data_dir.join("tasks");
        Arc::new(Self {
            node,
            dir,
            running: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
        })
    }

    /// What this node holds of its tasks, for [`blixard_core::planner::plan_tasks`]: the
    /// attempts it handles now, then the markers on disk. In that order: a handler lets go of
    /// its attempt only after writing the final marker, and only the executor's pass takes new
    /// attempts on, so a task seen unhandled here cannot have a marker older than the one read.
    pub async fn observe(&self) -> std::io::Result<Vec<TaskObserved>> {
        let mut handling: HashMap<String, u64> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, (epoch, _))| (id.clone(), *epoch))
            .collect();
        let dir = self.dir.clone();
        let markers = blocking::fs(move || {
            let mut out = Vec::new();
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            };
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                out.push((id, read_marker(&e.path())));
            }
            Ok(out)
        })
        .await?;
        let mut observed: Vec<TaskObserved> = markers
            .into_iter()
            .map(|(id, m)| TaskObserved {
                handling: handling.remove(&id),
                marker: m.map(|m| AttemptMarker {
                    epoch: m.epoch,
                    done: m.done,
                }),
                id,
            })
            .collect();
        observed.extend(handling.into_iter().map(|(id, epoch)| TaskObserved {
            id,
            handling: Some(epoch),
            marker: None,
        }));
        Ok(observed)
    }

    /// Carries out one planned action. Attempts and reports run as tracked tasks (one per
    /// task at most: a task with a handler is not taken on again); the rest is done here.
    pub async fn perform(self: &Arc<Self>, action: TaskAction) {
        // Once the node stops, its attempts are left to their supervisors as they are: a
        // handler that returned because of the stop must not look like an attempt to resume.
        if stopping(&self.node) {
            return;
        }
        match action {
            TaskAction::Signal { id } => {
                if let Some((_, tx)) = self
                    .running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&id)
                {
                    let _ = tx.send(true);
                }
            }
            TaskAction::Retire { id } => {
                let dir = self.dir.join(&id);
                let r = blocking::fs(move || {
                    let Some(m) = read_marker(&dir) else {
                        return Ok(());
                    };
                    if m.done {
                        return Ok(());
                    }
                    if !attempt_over(&dir, &m) {
                        tracing::warn!(task = %id, epoch = m.epoch, pid = ?m.pid, "stopping a leftover attempt that is no longer this node's");
                        request_stop(&dir);
                    }
                    write_marker(&dir, &Marker { done: true, ..m })
                })
                .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "retiring a leftover task attempt; will retry");
                }
            }
            TaskAction::Forget { id } => {
                // Forgotten by the cluster (retention): drop its output too.
                let dir = self.dir.join(&id);
                if let Err(e) = blocking::fs(move || std::fs::remove_dir_all(dir)).await {
                    tracing::warn!(task = %id, error = %e, "removing a forgotten task's directory");
                }
            }
            TaskAction::Resume { task } => {
                // Started by an earlier run of this daemon: reported after its supervisor
                // stopped it (or from what it recorded, if it had ended).
                self.spawn_report(task, None);
            }
            TaskAction::CancelUnstarted { task } => {
                let ending = Ending {
                    state: TaskState::Cancelled,
                    exit_code: None,
                    reason: Some("cancelled before it started".into()),
                };
                self.spawn_report(task, Some(ending));
            }
            TaskAction::Start { task } => {
                self.spawn_claimed(task, "task attempt", |this, task, cancel| async move {
                    this.run_attempt(task, cancel).await
                });
            }
        }
    }

    /// Runs `handler` for task `t` as its one handler (nothing if another has it): tracked for
    /// shutdown, its error logged as `what`, the claim released when it ends.
    fn spawn_claimed<F, Fut, E>(self: &Arc<Self>, t: TaskRecord, what: &'static str, handler: F)
    where
        F: FnOnce(Arc<Self>, TaskRecord, watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let (tx, rx) = watch::channel(false);
        if !self.claim(&t, tx) {
            return;
        }
        let id = t.id.clone();
        let this = self.clone();
        let fut = handler(self.clone(), t, rx);
        self.tracker.spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(task = %id, error = %e, "{what}");
            }
            this.release(&id);
        });
    }

    /// Claims task `t` for one handler (with its cancel channel): false when a handler
    /// already has it.
    fn claim(&self, t: &TaskRecord, cancel: watch::Sender<bool>) -> bool {
        let mut r = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if r.contains_key(&t.id) {
            return false;
        }
        r.insert(t.id.clone(), (t.epoch, cancel));
        true
    }

    /// Lets go of task `id` after its handler ended, so the next pass plans it again, unless
    /// the node is stopping: then the attempt stays claimed, and nothing in this run of the
    /// daemon resumes it (the next run does, from its marker).
    fn release(&self, id: &str) {
        if stopping(&self.node) {
            return;
        }
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Waits for the attempts' handlers once the node stops. They return on shutdown without
    /// reporting (the supervisors keep the processes; a restarted daemon finds the markers and
    /// resumes them), so this is short; it gives up after [`SHUTDOWN_WAIT`] in any case.
    pub async fn shutdown(&self) {
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tracker.len(),
                "task handlers still busy at shutdown; leaving them"
            );
        }
    }

    /// Reports the ending of the current attempt of `t` that is not running here, then marks
    /// it done. `None`: an attempt an earlier run of this daemon started; it is stopped first
    /// if it still runs, and reported failed (or as it ended, if it ended by itself meanwhile).
    fn spawn_report(self: &Arc<Self>, t: TaskRecord, ending: Option<Ending>) {
        self.spawn_claimed(
            t,
            "reporting a task attempt; will retry",
            |this, t, _cancel| async move { this.report_unstarted(t, ending).await },
        );
    }

    async fn report_unstarted(&self, t: TaskRecord, ending: Option<Ending>) -> std::io::Result<()> {
        let dir = task_dir(&self.node.config.data_dir, &t.id);
        let d = dir.clone();
        let found = blocking::fs(move || {
            std::fs::create_dir_all(&d)?;
            Ok(read_marker(&d))
        })
        .await?;
        let m = match (&ending, found) {
            (None, Some(m)) if m.epoch == t.epoch && !m.done => m,
            // Planned from a marker that has changed since: the next pass looks again.
            (None, _) => return Ok(()),
            (Some(_), _) => Marker {
                epoch: t.epoch,
                attempt: t.attempt,
                pid: None,
                starttime: None,
                boot_id: None,
                done: false,
            },
        };
        let ending = match ending {
            Some(e) => e,
            None => {
                let run = run_dir(&dir);
                let ended_by_itself = blocking::fs(move || {
                    Ok(run.join(rundir::EXIT_CODE).exists()
                        && !run.join(rundir::STOP_REQUESTED).exists())
                })
                .await?;
                if stopping(&self.node) {
                    return Ok(());
                }
                stop_attempt(&dir, &m).await;
                if ended_by_itself {
                    let (d, node_id) = (dir.clone(), self.node.id);
                    blocking::fs(move || Ok(ending_from_files(&d, false, node_id))).await?
                } else {
                    let reason = format!(
                        "blixard on node {} restarted while attempt {} was running; the process was stopped and its result is unknown",
                        self.node.id, t.attempt
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
        if self.report_result(&t, ending, None).await.is_err() && stopping(&self.node) {
            return Ok(());
        }
        mark_done(&dir, m).await
    }

    async fn run_attempt(
        &self,
        t: TaskRecord,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<(), NodeError> {
        let dir = task_dir(&self.node.config.data_dir, &t.id);
        let d = dir.clone();
        let old = blocking::fs(move || {
            std::fs::create_dir_all(&d)?;
            Ok(read_marker(&d))
        })
        .await
        .map_err(|e| NodeError::io(format!("creating {}", dir.display()), e))?;
        // An earlier attempt of this task on this node must be over before this one starts.
        if let Some(old) = old {
            stop_attempt(&dir, &old).await;
        }
        let run = run_dir(&dir);
        let out_path = dir.join("output");
        let mut marker = Marker {
            epoch: t.epoch,
            attempt: t.attempt,
            pid: None,
            starttime: None,
            boot_id: None,
            done: false,
        };
        let user = self.node.config.task_user.clone();
        let (d, r, o, m) = (dir.clone(), run.clone(), out_path.clone(), marker.clone());
        let prepared = blocking::fs(move || {
            let _ = std::fs::remove_file(&o);
            let _ = std::fs::remove_dir_all(&r);
            std::fs::create_dir_all(&r)?;
            let run_as = match task_user(&user) {
                Ok(run_as) => run_as,
                Err(why) => {
                    write_marker(&d, &m)?;
                    return Ok(Err(why));
                }
            };
            let work = prepare_work_dir(&d, run_as.as_ref());
            if work.is_ok() {
                write_marker(&d, &m)?;
            }
            Ok(Ok((run_as, work)))
        })
        .await
        .map_err(|e| NodeError::io(format!("preparing {}", dir.display()), e))?;
        let (run_as, work) = match prepared {
            Ok((run_as, work)) => (run_as, work?),
            Err(why) => {
                tracing::warn!(task = %t.id, "{why}");
                let ending = Ending {
                    state: TaskState::Failed,
                    exit_code: None,
                    reason: Some(format!("node {}: {why}", self.node.id)),
                };
                let r = self.report_result(&t, ending, None).await;
                if r.is_ok() || !stopping(&self.node) {
                    let _ = mark_done(&dir, marker).await;
                }
                return r;
            }
        };
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
        let launched = blocking::driver(async move {
            supervisor::launch(&supervisor::default_command(), &spec, &envs)
                .await
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|| Err("the daemon is shutting down".to_string()));
        if let Err(e) = launched {
            let ending = Ending {
                state: TaskState::Failed,
                exit_code: None,
                reason: Some(format!("cannot start '{}': {e}", t.spec.command[0])),
            };
            let r = self
                .report_result(&t, ending, Some(started.elapsed()))
                .await;
            if r.is_ok() || !stopping(&self.node) {
                let _ = mark_done(&dir, marker).await;
            }
            return r;
        }
        // The supervisor records the pid right after spawning (or the exit, if it never ran).
        let pid_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = run.clone();
            let (pid, exited) = blocking::fs(move || {
                let pid = std::fs::read_to_string(r.join(rundir::PID))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                let identity = pid.map(|p| (p, rundir::process_starttime(p), rundir::boot_id()));
                Ok((identity, r.join(rundir::EXIT_CODE).exists()))
            })
            .await
            .unwrap_or((None, false));
            if let Some((pid, starttime, boot_id)) = pid {
                marker.pid = Some(pid);
                marker.starttime = starttime;
                marker.boot_id = boot_id;
                let (d, m) = (dir.clone(), marker.clone());
                let _ = blocking::fs(move || write_marker(&d, &m)).await;
                break;
            }
            if exited {
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
                let _ = mark_done(&dir, marker).await;
                return Ok(());
            }
            Err(e) => tracing::info!(task = %t.id, error = %e, "reporting the start"),
        }

        // The supervisor enforces the timeout, the lease and the output bound; this waits for
        // the ending it records, and relays a cancellation. When the daemon stops, it leaves
        // the attempt to its supervisor: the marker stays open and the next run resumes it.
        let mut cancelled = false;
        loop {
            let (d, m) = (dir.clone(), marker.clone());
            let over = blocking::fs(move || {
                Ok(run_dir(&d).join(rundir::EXIT_CODE).exists() || attempt_over(&d, &m))
            })
            .await
            .unwrap_or(false);
            if over {
                break;
            }
            tokio::select! {
                r = cancel.changed(), if !cancelled => {
                    if r.is_err() || *cancel.borrow() {
                        cancelled = true;
                        let d = dir.clone();
                        let _ = blocking::fs(move || {
                            request_stop(&d);
                            Ok(())
                        })
                        .await;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.node.stopped() => return Ok(()),
            }
        }
        let (d, node_id) = (dir.clone(), self.node.id);
        let ending = blocking::fs(move || Ok(ending_from_files(&d, cancelled, node_id)))
            .await
            .map_err(|e| NodeError::io(format!("reading how task {} ended", t.id), e))?;
        let elapsed = started.elapsed();
        tracing::info!(task = %t.id, epoch = t.epoch, state = ending.state.as_str(), "task ended");
        let r = self.report_result(&t, ending, Some(elapsed)).await;
        if r.is_ok() || !stopping(&self.node) {
            let _ = mark_done(&dir, marker).await;
        }
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
