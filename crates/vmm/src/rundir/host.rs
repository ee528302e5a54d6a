//! Facts about this host's processes: whether a recorded pid is still the same process (pid +
//! start time), signalling and waiting for one, ending an orphaned process group, the boot
//! id and the wall clock. Everything a driver decides about liveness starts here.

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Start time (clock ticks since boot) of a live, non-zombie process; `None` otherwise.
pub fn process_starttime(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // state is field 3; starttime is field 22.
    fields.nth(18)?.parse().ok()
}

/// Alive, not a zombie, and (when known) the same process that was recorded.
pub fn is_alive(pid: u32, starttime: Option<u64>) -> bool {
    match (process_starttime(pid), starttime) {
        (Some(now), Some(recorded)) => now == recorded,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// SIGKILL what is left of the process group of a dead workload whose supervisor is gone too
/// (killed with `kill -9`: the workload died with it, its descendants did not). The group id
/// is the workload's pid. Linux does not hand out a number still in use as a group id, so a
/// group `pgid` without a process `pgid` is the workload's leftovers; a process numbered `pgid`
/// means the number was reused, and nothing is sent. True if leftovers were signalled.
pub fn end_orphaned_group(pgid: u32) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    if raw <= 1 || process_starttime(pgid).is_some() {
        return false;
    }
    let group = nix::unistd::Pid::from_raw(raw);
    if nix::sys::signal::killpg(group, None).is_err() {
        return false;
    }
    tracing::warn!(
        pgid,
        "the workload's supervisor is gone and its process group still has members: killing them"
    );
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).is_ok()
}

/// Send `signal` to `pid` if it is still the recorded process; false if it is gone.
pub(crate) fn signal(pid: u32, starttime: Option<u64>, signal: nix::sys::signal::Signal) -> bool {
    if !is_alive(pid, starttime) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(pid, ?signal, error = %e, "kill failed");
            false
        }
    }
}

/// Wait until `pid` is gone; true if it is.
pub(crate) async fn wait_dead(pid: u32, starttime: Option<u64>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !is_alive(pid, starttime) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `137` -> "exit status 137 (killed by SIGKILL)".
pub fn describe_exit(code: i32) -> String {
    match code {
        126 => return format!("exit status {code} (the program is not executable)"),
        127 => return format!("exit status {code} (program not found: is it installed?)"),
        _ => {}
    }
    if code > 128 {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(code - 128) {
            return format!("exit status {code} (killed by {sig})");
        }
    }
    format!("exit status {code}")
}

/// This boot of the host (Linux), if readable.
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Wall-clock milliseconds since the Unix epoch (0 before it); the node's `now_ms` too.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
