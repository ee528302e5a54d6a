//! The steps of a VM's life that both drivers share: preparing a run directory for a start
//! ([`prepare_start`]), pinning the supervisor's pid ([`record_pid`]), stopping gracefully
//! then by force ([`stop_with`]) and removing the directory ([`remove`]).

use std::path::Path;
use std::time::Duration;

use super::files::read_last;
use super::*;
use crate::{DriverError, VmConfig};

/// First half of `start`, shared by the drivers. `Ok(None)`: a VM with this name and epoch is
/// already alive (nothing to do). `Ok(Some(_))`: a fresh run directory with `meta.json`
/// written, ready for [`RunDir::launch`]. Leftovers of an exited VM are removed.
pub(crate) async fn prepare_start(
    run_root: &Path,
    cfg: &VmConfig,
    epoch: u64,
    driver: &'static str,
) -> Result<Option<(RunDir, Meta)>, DriverError> {
    let rd = RunDir::new(run_root, &cfg.name);
    if let Some(mut old) = rd.read_meta()? {
        match rd.liveness(&mut old).await {
            Liveness::Alive { .. } | Liveness::Launching if old.epoch == epoch => {
                tracing::debug!(vm = %cfg.name, epoch, "already running");
                return Ok(None);
            }
            Liveness::Alive { .. } | Liveness::Launching => {
                return Err(DriverError::AlreadyRunning {
                    name: cfg.name.clone(),
                    running_epoch: old.epoch,
                    requested_epoch: epoch,
                });
            }
            Liveness::Exited { .. } => {
                tracing::info!(vm = %cfg.name, old_epoch = old.epoch, epoch, "replacing the run directory of an exited VM");
            }
        }
    }
    // Keep the previous run's console (bounded) for `vm logs --previous`.
    let previous = read_last(&rd.path(CONSOLE), PREVIOUS_CONSOLE_LIMIT);
    rd.remove()?;
    rd.create()?;
    if let Some(bytes) = previous {
        if let Err(e) = write_atomic(&rd.path(PREVIOUS_CONSOLE), &bytes) {
            tracing::warn!(vm = %cfg.name, error = %e, "cannot keep the previous console");
        }
    }
    let meta = Meta {
        name: cfg.name.clone(),
        epoch,
        pid: None,
        pid_starttime: None,
        driver: driver.to_string(),
        config: cfg.clone(),
        started_at_unix_ms: unix_ms(),
        boot_id: boot_id(),
    };
    rd.write_meta(&meta)?;
    Ok(Some((rd, meta)))
}

/// Second half of `start`: wait for the supervisor to record the pid, pin it in `meta.json`.
pub(crate) async fn record_pid(
    rd: &RunDir,
    meta: &mut Meta,
    logs: &[&str],
) -> Result<u32, DriverError> {
    match rd.wait_pid(Duration::from_secs(10)).await {
        Ok(pid) => {
            match process_starttime(pid) {
                Some(starttime) => {
                    meta.pid = Some(pid);
                    meta.pid_starttime = Some(starttime);
                    rd.write_meta(meta)?;
                }
                // Already gone: its exit is for `list` (or the caller's check) to report.
                None => tracing::debug!(vm = %meta.name, pid, "process exited right after start"),
            }
            Ok(pid)
        }
        Err(code) => {
            let reason = match rd.exited_state(code, logs) {
                crate::RunState::Failed { reason } => reason,
                other => format!("{other:?}"),
            };
            Err(DriverError::StartFailed {
                name: meta.name.clone(),
                reason: if code.is_none() {
                    format!("no pid recorded within 10s; {reason}")
                } else {
                    reason
                },
            })
        }
    }
}

/// Stop skeleton shared by the drivers: mark the stop as requested, run `graceful`, wait up
/// to `grace`, then `forced`, then SIGKILL. Unknown or exited VM: `Ok`.
pub(crate) async fn stop_with<G, F, GF, FF>(
    run_root: &Path,
    name: &str,
    grace: Duration,
    graceful: G,
    forced: F,
) -> Result<(), DriverError>
where
    G: FnOnce(RunDir, u32, Option<u64>) -> GF,
    F: FnOnce(RunDir, u32, Option<u64>) -> FF,
    GF: std::future::Future<Output = ()>,
    FF: std::future::Future<Output = ()>,
{
    crate::validate_name(name)?;
    let rd = RunDir::new(run_root, name);
    let Some(mut meta) = rd.read_meta()? else {
        return Ok(());
    };
    match rd.liveness(&mut meta).await {
        // Already gone: keep what it was (a crash stays `Failed`).
        Liveness::Exited { .. } => return Ok(()),
        Liveness::Alive { .. } => rd.mark_stop_requested()?,
        Liveness::Launching => {
            // Started a moment ago: the pid is about to be recorded.
            rd.mark_stop_requested()?;
            let _ = rd.wait_pid(Duration::from_secs(5)).await;
        }
    }
    let Some((pid, starttime)) = rd.resolve_pid(&mut meta) else {
        return Ok(());
    };
    if !is_alive(pid, starttime) {
        return Ok(());
    }
    tracing::info!(vm = name, pid, ?grace, "stopping");
    graceful(rd.clone(), pid, starttime).await;
    if !wait_dead(pid, starttime, grace).await {
        tracing::info!(vm = name, pid, "grace period over, forcing");
        forced(rd.clone(), pid, starttime).await;
        if !wait_dead(pid, starttime, Duration::from_secs(3)).await {
            signal(pid, starttime, nix::sys::signal::Signal::SIGKILL);
            let waited = Duration::from_secs(5);
            if !wait_dead(pid, starttime, waited).await {
                return Err(DriverError::StopTimeout {
                    name: name.to_string(),
                    pid,
                    waited,
                });
            }
        }
    }
    // Let the supervisor record the exit status so `list` reports it.
    rd.wait_exit_code(Duration::from_secs(2)).await;
    Ok(())
}

/// `remove` shared by the drivers.
pub(crate) async fn remove(run_root: &Path, name: &str) -> Result<(), DriverError> {
    crate::validate_name(name)?;
    let rd = RunDir::new(run_root, name);
    if let Some(mut meta) = rd.read_meta()? {
        if !matches!(rd.liveness(&mut meta).await, Liveness::Exited { .. }) {
            return Err(DriverError::StillRunning {
                name: name.to_string(),
            });
        }
    }
    rd.remove()
}
