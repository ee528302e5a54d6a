//! Byte budgets of the replicated state, beside the count limits of `spec` and `task`.
//!
//! Counts alone do not bound the state: 10,000 tasks of 32 KiB each, plus a copy of each reply
//! in the de-duplication table, are hundreds of MB of replicated state and a snapshot too large
//! to send. These budgets keep a full state small enough to snapshot and to catch a new node up
//! (about 100 MiB at most, all three full at once), while leaving room for the count limits
//! with ordinary sizes (100,000 VMs of about 300 bytes are 30 MB). Sizes are computed from the
//! values themselves, so `apply` stays deterministic.

use crate::spec::VmSpec;
use crate::task::TaskSpec;

/// All VM specs together.
pub const MAX_VM_SPEC_BYTES: usize = 64 << 20;
/// All task specs together (active and kept finished ones).
pub const MAX_TASK_SPEC_BYTES: usize = 32 << 20;
/// All remembered outcomes of the de-duplication table together; the oldest are forgotten
/// first, as when the count window is full.
pub const MAX_DEDUP_BYTES: usize = 16 << 20;

fn opt(s: &Option<String>) -> usize {
    s.as_ref().map_or(0, String::len)
}

/// What a VM spec weighs: its strings (the numbers are a small constant).
pub fn vm_spec_bytes(s: &VmSpec) -> usize {
    64 + s.name.len()
        + opt(&s.kernel)
        + opt(&s.initrd)
        + opt(&s.cmdline)
        + opt(&s.disk_image)
        + opt(&s.anti_affinity)
        + s.labels
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + s.constraints
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + s.features.iter().map(String::len).sum::<usize>()
}

/// What a task spec weighs: its command and environment.
pub fn task_spec_bytes(s: &TaskSpec) -> usize {
    64 + s.command.iter().map(String::len).sum::<usize>()
        + s.env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}
