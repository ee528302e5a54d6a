//! The node's lease as the supervisor sees it: the file format ([`Lease`]), the daemon's
//! writer ([`write_lease`]) and the supervisor's verdict ([`check_lease`]), all on
//! CLOCK_BOOTTIME ([`boottime_ms`]; see "The lease is on a monotonic clock" in the
//! [module docs](super)).

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::LEASE_TAG;
use crate::rundir;

/// Milliseconds of CLOCK_BOOTTIME: time since boot, counting suspend, never stepped.
pub fn boottime_ms() -> Option<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let ms = i128::from(ts.tv_sec()) * 1000 + i128::from(ts.tv_nsec()) / 1_000_000;
    u64::try_from(ms).ok()
}

/// A parsed lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub boot_id: String,
    /// CLOCK_BOOTTIME milliseconds; 0: revoked.
    pub deadline_ms: u64,
}

impl Lease {
    pub fn render(&self) -> String {
        format!("{LEASE_TAG} {} {}\n", self.boot_id, self.deadline_ms)
    }

    pub fn parse(text: &str) -> Result<Lease, String> {
        let f: Vec<&str> = text.split_whitespace().collect();
        match f.as_slice() {
            [tag, boot, deadline] if *tag == LEASE_TAG && !boot.is_empty() => Ok(Lease {
                boot_id: boot.to_string(),
                deadline_ms: deadline
                    .parse()
                    .map_err(|_| format!("malformed lease deadline {deadline:?}"))?,
            }),
            _ => Err(format!(
                "malformed lease {:?}",
                text.chars().take(80).collect::<String>()
            )),
        }
    }
}

/// Writes the lease file (atomically): valid until `deadline_ms` of CLOCK_BOOTTIME in this
/// boot. `0` revokes it.
pub fn write_lease(path: &Path, deadline_ms: u64) -> std::io::Result<()> {
    let boot_id = rundir::boot_id().ok_or_else(|| {
        std::io::Error::other("cannot read /proc/sys/kernel/random/boot_id (needed for the lease)")
    })?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let lease = Lease {
        boot_id,
        deadline_ms,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, lease.render())?;
    fs::rename(tmp, path)
}

/// `Ok(remaining)` only when the lease at `path` provably holds now; otherwise why not (the
/// workload must be killed).
pub fn check_lease(path: &Path) -> Result<Duration, String> {
    let text = fs::read_to_string(path).map_err(|e| {
        format!(
            "the node's lease file {} is unreadable ({e})",
            path.display()
        )
    })?;
    let lease = Lease::parse(&text)
        .map_err(|e| format!("the node's lease file {}: {e}", path.display()))?;
    let boot = rundir::boot_id().ok_or("cannot read this host's boot id")?;
    if lease.boot_id != boot {
        return Err(format!(
            "the node's lease was written during another boot of this host ({})",
            lease.boot_id
        ));
    }
    if lease.deadline_ms == 0 {
        return Err("the node gave its lease up (revoked)".into());
    }
    let now = boottime_ms().ok_or("cannot read CLOCK_BOOTTIME")?;
    if now >= lease.deadline_ms {
        return Err(format!(
            "the node's lease expired {} ms ago (no contact with the cluster)",
            now - lease.deadline_ms
        ));
    }
    Ok(Duration::from_millis(lease.deadline_ms - now))
}
