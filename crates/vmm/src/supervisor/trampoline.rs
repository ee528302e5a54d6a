//! The trampoline (`blixard supervise --exec PARENT DIR -- argv`): the supervisor's child that
//! applies the confinement, ties itself to its parent (`PR_SET_PDEATHSIG`) and `exec`s the
//! workload (see "The workload dies with its supervisor" in the [module docs](super)).

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::sys::signal::Signal;

use super::spec::Confine;
use super::EXEC_FAILED;
use crate::rundir;

/// Written (empty) by the trampoline before it drops its privileges; holds the reason when the
/// workload then cannot be executed (the supervisor renames it to [`EXEC_FAILED`]).
pub(super) const EXEC_FAILED_PENDING: &str = "exec_failed.pending";

/// Applies the limits and drops to the user (in this order: limits may need root).
fn drop_privileges(confine: &Confine) -> Result<(), String> {
    if let Some(l) = &confine.limits {
        l.apply()?;
    }
    if let Some(r) = &confine.run_as {
        use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
        let gid = Gid::from_raw(r.gid);
        let uid = Uid::from_raw(r.uid);
        setgroups(&[gid]).map_err(|e| format!("cannot set the groups of {}: {e}", r.name))?;
        setgid(gid).map_err(|e| format!("cannot switch to group {}: {e}", r.gid))?;
        setuid(uid).map_err(|e| format!("cannot switch to user {} ({}): {e}", r.name, r.uid))?;
        // Never run with privileges left over.
        if nix::unistd::getuid() != uid
            || nix::unistd::geteuid() != uid
            || nix::unistd::getegid() != gid
            || (r.uid != 0 && setuid(Uid::from_raw(0)).is_ok())
        {
            return Err(format!("switching to user {} did not take", r.name));
        }
    }
    Ok(())
}

/// The trampoline: drop privileges, die with the parent, check it is still there, become the
/// workload.
pub(super) fn exec(parent: i32, dir: &Path, confine: &Confine, argv: &[String]) -> i32 {
    // Opened while the run directory is still writable (close-on-exec: it closes when the
    // workload starts).
    let mut pending = fs::File::create(dir.join(EXEC_FAILED_PENDING)).ok();
    if let Err(why) = drop_privileges(confine) {
        let why = format!("cannot start '{}': {why}", argv[0]);
        let _ = rundir::write_atomic(&dir.join(EXEC_FAILED), why.as_bytes());
        eprintln!("{why}");
        return 126;
    }
    let mut fail = |why: &str| {
        if let Some(f) = pending.as_mut() {
            let _ = f.write_all(why.as_bytes());
        } else {
            let _ = rundir::write_atomic(&dir.join(EXEC_FAILED), why.as_bytes());
        }
        eprintln!("{why}");
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        fail(&format!(
            "cannot tie the workload to its supervisor (prctl PR_SET_PDEATHSIG): {e}"
        ));
        return 126;
    }
    // The supervisor may have died between the fork and the prctl: then nobody would kill us.
    if nix::unistd::getppid().as_raw() != parent {
        return 125;
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if let Some(r) = &confine.run_as {
        cmd.env("USER", &r.name).env("LOGNAME", &r.name);
        if let Ok(cwd) = std::env::current_dir() {
            cmd.env("HOME", cwd);
        }
    }
    let err = cmd.exec();
    fail(&format!("cannot start '{}': {err}", argv[0]));
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}
