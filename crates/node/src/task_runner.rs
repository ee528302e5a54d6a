//! Runs the one-shot tasks the applied state assigns to this node, as host processes, and
//! reports their start and result through Raft.
//!
//! Stateless like the executor: what to run comes from the applied state; the only local
//! things are runtime handles (a cancel channel per running attempt) and, on disk under
//! `<data_dir>/tasks/<id>/`, the captured output (`output`, the last 64 KiB) and a marker
//! (`attempt.json`) recording that an attempt was started, so a restarted daemon never starts
//! the same attempt twice: it stops what is left of it and reports it failed.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blixard_core::{ApplyError, Command, TaskRecord, TaskState};
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
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

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

/// Kills process group `pgid` (SIGKILL); errors (already gone) are ignored.
fn kill_group(pgid: u32) {
    if pgid > 1 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// The last [`OUTPUT_LIMIT`] bytes of a stream, and how many came before them.
#[derive(Default)]
struct Tail {
    buf: VecDeque<u8>,
    total: u64,
    dirty: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.buf.extend(data);
        while self.buf.len() > OUTPUT_LIMIT {
            let extra = self.buf.len() - OUTPUT_LIMIT;
            self.buf.drain(..extra);
        }
        self.dirty = true;
    }

    fn render(&self) -> Vec<u8> {
        let dropped = self.total - self.buf.len() as u64;
        let mut out = Vec::with_capacity(self.buf.len() + 48);
        if dropped > 0 {
            out.extend_from_slice(format!("[... {dropped} bytes truncated ...]\n").as_bytes());
        }
        out.extend(self.buf.iter());
        out
    }
}

fn flush(tail: &Mutex<Tail>, path: &Path) {
    let bytes = {
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if !t.dirty {
            return;
        }
        t.dirty = false;
        t.render()
    };
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, bytes).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
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
        Arc::new(Self { node, dir, running: Mutex::new(HashMap::new()) })
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
        let (mine, known): (Vec<TaskRecord>, std::collections::HashSet<String>) = {
            let a = self.node.state.read();
            if !a.state.workers.contains_key(&self.node.id) {
                return;
            }
            let mine = a
                .state
                .tasks
                .values()
                .filter(|t| t.node_id == Some(self.node.id) && !t.state.is_finished())
                .cloned()
                .collect();
            (mine, a.state.tasks.keys().cloned().collect())
        };
        let applied = self.node.state.read().last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        let may_start = self.node.liveness.may_act(applied);
        let current: HashMap<&str, u64> = mine.iter().map(|t| (t.id.as_str(), t.epoch)).collect();

        // Attempts running here that are no longer this node's (reassigned, forgotten): stop them.
        for (id, (epoch, tx)) in self.running.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if current.get(id.as_str()) != Some(epoch) {
                let _ = tx.send(true);
            }
        }

        // Leftovers: attempts started here that are no longer this node's current ones.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let dir = e.path();
                if self.running.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&id) {
                    continue;
                }
                let marker = read_marker(&dir);
                let is_current = marker.as_ref().is_some_and(|m| current.get(id.as_str()) == Some(&m.epoch));
                if is_current {
                    continue;
                }
                if let Some(m) = &marker {
                    if !m.done {
                        if let Some(pid) = m.pid.filter(|p| alive(*p)) {
                            tracing::warn!(task = %id, epoch = m.epoch, pid, "stopping a leftover attempt that is no longer this node's");
                            kill_group(pid);
                        }
                        let _ = write_marker(&dir, &Marker { done: true, ..m.clone() });
                    }
                }
                if !known.contains(&id) {
                    // Forgotten by the cluster (retention): drop its output too.
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }

        for t in mine {
            let handle = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(&t.id).map(|(e, tx)| (*e, tx.clone()));
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
                    // Started by an earlier run of this daemon: its result is unknown.
                    if let Some(pid) = m.pid.filter(|p| alive(*p)) {
                        kill_group(pid);
                    }
                    let reason = format!(
                        "blixard on node {} restarted while attempt {} was running; the process was stopped and its result is unknown",
                        self.node.id, t.attempt
                    );
                    tracing::warn!(task = %t.id, epoch = t.epoch, "{reason}");
                    let ending = Ending { state: TaskState::Failed, exit_code: None, reason: Some(reason) };
                    self.spawn_report(t.clone(), m, ending);
                    continue;
                }
                _ => {}
            }
            if t.cancel_requested {
                let m = Marker { epoch: t.epoch, attempt: t.attempt, pid: None, done: false };
                let ending = Ending { state: TaskState::Cancelled, exit_code: None, reason: Some("cancelled before it started".into()) };
                self.spawn_report(t.clone(), m, ending);
                continue;
            }
            if !may_start {
                continue;
            }
            let (tx, rx) = watch::channel(false);
            self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(t.id.clone(), (t.epoch, tx));
            let this = self.clone();
            tokio::spawn(async move {
                let id = t.id.clone();
                if let Err(e) = this.run_attempt(t, rx).await {
                    tracing::warn!(task = %id, error = %e, "task attempt");
                }
                this.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            });
        }
    }

    /// Reports `ending` for an attempt not running here, then marks it done.
    fn spawn_report(self: &Arc<Self>, t: TaskRecord, m: Marker, ending: Ending) {
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
            let _ = this.report_result(&t, ending, None).await;
            let _ = write_marker(&dir, &Marker { done: true, ..m });
            this.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.id);
        });
    }

    async fn run_attempt(&self, t: TaskRecord, mut cancel: watch::Receiver<bool>) -> Result<(), NodeError> {
        let dir = task_dir(&self.node.config.data_dir, &t.id);
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::Io(format!("creating {}: {e}", dir.display())))?;
        let out_path = dir.join("output");
        let _ = std::fs::remove_file(&out_path);
        let mut marker = Marker { epoch: t.epoch, attempt: t.attempt, pid: None, done: false };
        write_marker(&dir, &marker).map_err(|e| NodeError::Io(format!("writing the attempt marker: {e}")))?;
        tracing::info!(task = %t.id, epoch = t.epoch, attempt = t.attempt, "starting task");

        let started = Instant::now();
        let mut cmd = tokio::process::Command::new(&t.spec.command[0]);
        cmd.args(&t.spec.command[1..])
            .envs(&t.spec.env)
            .env("BLIXARD_TASK_ID", &t.id)
            .env("BLIXARD_TASK_ATTEMPT", t.attempt.to_string())
            .current_dir(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let ending = Ending {
                    state: TaskState::Failed,
                    exit_code: None,
                    reason: Some(format!("cannot start '{}': {e}", t.spec.command[0])),
                };
                let r = self.report_result(&t, ending, Some(started.elapsed())).await;
                let _ = write_marker(&dir, &Marker { done: true, ..marker });
                return r;
            }
        };
        let pid = child.id().unwrap_or(0);
        marker.pid = Some(pid);
        let _ = write_marker(&dir, &marker);

        let tail = Arc::new(Mutex::new(Tail { dirty: true, ..Tail::default() }));
        let mut readers = Vec::new();
        for mut stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tail = tail.clone();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tail.lock().unwrap_or_else(|p| p.into_inner()).push(&buf[..n]);
                }
            }));
        }

        // Started: tell the cluster (best effort; the result is what counts).
        match self.node.propose(Command::ReportTaskStarted { id: t.id.clone(), node_id: self.node.id, epoch: t.epoch }, None).await {
            Ok(_) => {}
            Err(NodeError::Rejected(e)) => {
                // No longer this node's attempt (reassigned, cancelled or forgotten): stop.
                tracing::info!(task = %t.id, epoch = t.epoch, "start refused, stopping: {e}");
                kill_group(pid);
                let _ = child.wait().await;
                tail.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
                flush(&tail, &out_path);
                let _ = write_marker(&dir, &Marker { done: true, ..marker });
                return Ok(());
            }
            Err(e) => tracing::info!(task = %t.id, error = %e, "reporting the start"),
        }

        let timeout = Duration::from_secs(t.spec.timeout_secs);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut flush_tick = tokio::time::interval(Duration::from_millis(500));
        let mut lease_tick = tokio::time::interval(Duration::from_millis(250));
        let ending = loop {
            tokio::select! {
                status = child.wait() => {
                    kill_group(pid);
                    break match status {
                        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                            (Some(0), _) => Ending { state: TaskState::Succeeded, exit_code: Some(0), reason: None },
                            (Some(c), _) => Ending { state: TaskState::Failed, exit_code: Some(c), reason: Some(format!("exited with code {c}")) },
                            (None, sig) => Ending { state: TaskState::Failed, exit_code: None, reason: Some(format!("killed by signal {}", sig.unwrap_or(0))) },
                        },
                        Err(e) => Ending { state: TaskState::Failed, exit_code: None, reason: Some(format!("waiting for the process: {e}")) },
                    };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    kill_group(pid);
                    let _ = child.wait().await;
                    break Ending { state: TaskState::TimedOut, exit_code: None, reason: Some(format!("timed out after {}s; its process group was killed", t.spec.timeout_secs)) };
                }
                r = cancel.changed() => {
                    if r.is_ok() && !*cancel.borrow() {
                        continue;
                    }
                    kill_group(pid);
                    let _ = child.wait().await;
                    break Ending { state: TaskState::Cancelled, exit_code: None, reason: Some("cancelled by request; its process group was killed".into()) };
                }
                _ = lease_tick.tick() => {
                    if !self.node.liveness.lease_valid() {
                        // Cut off from the cluster: the task may be retried elsewhere.
                        kill_group(pid);
                        let _ = child.wait().await;
                        break Ending { state: TaskState::Failed, exit_code: None, reason: Some(format!("node {} lost contact with the cluster (lease expired); stopped", self.node.id)) };
                    }
                }
                _ = flush_tick.tick() => flush(&tail, &out_path),
            }
        };
        let elapsed = started.elapsed();
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
        tail.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
        flush(&tail, &out_path);
        tracing::info!(task = %t.id, epoch = t.epoch, state = ending.state.as_str(), "task ended");
        let r = self.report_result(&t, ending, Some(elapsed)).await;
        let _ = write_marker(&dir, &Marker { done: true, ..marker });
        r
    }

    /// Proposes the result, retrying while there is no leader; a refusal (the attempt is no
    /// longer current) ends it.
    async fn report_result(&self, t: &TaskRecord, ending: Ending, elapsed: Option<Duration>) -> Result<(), NodeError> {
        let cmd = Command::ReportTaskResult {
            id: t.id.clone(),
            node_id: self.node.id,
            epoch: t.epoch,
            state: ending.state,
            exit_code: ending.exit_code,
            duration_ms: elapsed.map(|d| d.as_millis() as u64),
            reason: ending.reason,
        };
        loop {
            match self.node.propose(cmd.clone(), None).await {
                Ok(_) => return Ok(()),
                Err(NodeError::Rejected(e @ (ApplyError::StaleAttempt { .. } | ApplyError::NotFound { .. }))) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes_with_a_marker() {
        let mut t = Tail::default();
        t.push(b"hello\n");
        assert_eq!(t.render(), b"hello\n");
        t.push(&vec![b'x'; OUTPUT_LIMIT]);
        t.push(b"END");
        let r = t.render();
        let text = String::from_utf8_lossy(&r);
        assert!(text.starts_with("[... 9 bytes truncated ...]\n"), "{}", &text[..40]);
        assert!(text.ends_with("xEND"));
        assert_eq!(r.len() - "[... 9 bytes truncated ...]\n".len(), OUTPUT_LIMIT);
    }
}
