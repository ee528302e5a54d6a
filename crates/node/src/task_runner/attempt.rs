//! One task attempt on disk: its marker (`attempt.json`), its supervisor's run directory and
//! the files that say how it ended, its working directory, and the process checks and stop
//! requests that go with them. Plain functions over `<data_dir>/tasks/<id>/`; the
//! [`super::TaskRunner`] calls them on the blocking pool.

use super::*;

/// What the marker file records about the attempt this node started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Marker {
    pub(super) epoch: u64,
    pub(super) attempt: u32,
    /// Process (and process group) id, once spawned.
    pub(super) pid: Option<u32>,
    /// Its start time (`/proc/<pid>/stat` field 22) and the host's boot id: with the pid, the
    /// identity of the process (a recycled pid is never taken for it).
    #[serde(default)]
    pub(super) starttime: Option<u64>,
    #[serde(default)]
    pub(super) boot_id: Option<String>,
    /// The result was reported.
    pub(super) done: bool,
}

/// The directory of task `id` under a node's data directory.
pub fn task_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("tasks").join(id)
}

/// The captured output of task `id`.
pub fn output_path(data_dir: &Path, id: &str) -> PathBuf {
    task_dir(data_dir, id).join("output")
}

pub(super) fn read_marker(dir: &Path) -> Option<Marker> {
    serde_json::from_slice(&std::fs::read(dir.join("attempt.json")).ok()?).ok()
}

pub(super) fn write_marker(dir: &Path, m: &Marker) -> std::io::Result<()> {
    let tmp = dir.join("attempt.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(m).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join("attempt.json"))
}

/// The supervisor's run directory of the attempt recorded in `dir`.
pub(super) fn run_dir(dir: &Path) -> PathBuf {
    dir.join("run")
}

/// True while the attempt's process, as recorded in the marker (pid, start time, boot id), is
/// alive. Never a bare pid: a recycled one is not the task.
pub(super) fn recorded_alive(m: &Marker) -> bool {
    match (m.pid, m.starttime) {
        (Some(pid), Some(st)) => {
            m.boot_id.is_some() && m.boot_id == rundir::boot_id() && rundir::is_alive(pid, Some(st))
        }
        _ => false,
    }
}

/// Asks the attempt's supervisor to stop it (non-blocking).
pub(super) fn request_stop(dir: &Path) {
    let run = run_dir(dir);
    if run.is_dir() {
        if let Err(e) = std::fs::write(run.join(rundir::STOP_REQUESTED), b"") {
            tracing::warn!(dir = %run.display(), error = %e, "cannot ask the task's supervisor to stop it");
        }
    }
}

/// Whether the attempt supervised in `dir` is over: its supervisor recorded the exit, or
/// neither the supervisor nor the recorded process is alive.
pub(super) fn attempt_over(dir: &Path, m: &Marker) -> bool {
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
pub(super) async fn stop_attempt(dir: &Path, m: &Marker) {
    let over = |ask: bool| {
        let (dir, m) = (dir.to_path_buf(), m.clone());
        async move {
            blocking::fs(move || {
                let over = attempt_over(&dir, &m);
                if !over && ask {
                    request_stop(&dir);
                }
                Ok(over)
            })
            .await
            .unwrap_or(false)
        }
    };
    if over(true).await {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !over(false).await {
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(dir = %dir.display(), pid = ?m.pid, "a task attempt did not stop within 10s of being asked to");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How the attempt supervised in `dir` ended, from its supervisor's files (once `exit_code`
/// is there). `cancelled`: this daemon asked for the stop because of a cancellation.
pub(super) fn ending_from_files(dir: &Path, cancelled: bool, node_id: u64) -> Ending {
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
pub(super) fn task_user(name: &str) -> Result<Option<supervisor::RunAs>, String> {
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
pub(super) fn prepare_work_dir(
    dir: &Path,
    run_as: Option<&supervisor::RunAs>,
) -> Result<PathBuf, NodeError> {
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

/// Marks the attempt recorded in `dir` done (its result was reported).
pub(super) async fn mark_done(dir: &Path, m: Marker) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    blocking::fs(move || write_marker(&dir, &Marker { done: true, ..m })).await
}

/// True once the node was asked to stop.
pub(super) fn stopping(node: &Node) -> bool {
    *node.shutdown_signal().borrow()
}

/// How an attempt ended.
pub(super) struct Ending {
    pub(super) state: TaskState,
    pub(super) exit_code: Option<i32>,
    pub(super) reason: Option<String>,
}
