//! What this host offers, detected at start: vCPUs, memory, the data directory's disk, and
//! whether KVM is usable. Registered as the worker's capacity through Raft.

use std::path::Path;

use blixard_core::Resources;

use crate::config::CapacityOverrides;

/// Detected resources and features.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub capacity: Resources,
    pub kvm: bool,
}

pub fn detect(data_dir: &Path, overrides: &CapacityOverrides) -> Capabilities {
    let vcpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total_mb(&s))
        .unwrap_or(0);
    let disk_gb = nix::sys::statvfs::statvfs(data_dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()) / (1024 * 1024 * 1024))
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    Capabilities {
        capacity: Resources {
            vcpus: overrides.vcpus.unwrap_or(vcpus),
            memory_mb: overrides.memory_mb.unwrap_or(memory_mb),
            disk_gb: overrides.disk_gb.unwrap_or(disk_gb),
        },
        kvm: kvm_usable(&cpuinfo, kvm_opens),
    }
}

/// KVM is usable only when the CPU advertises hardware virtualization and /dev/kvm opens:
/// some hosts expose /dev/kvm without it, and stock guest kernels hang there.
pub fn kvm_usable(cpuinfo: &str, kvm_opens: bool) -> bool {
    let flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_whitespace());
    kvm_opens && flags.into_iter().any(|f| f == "vmx" || f == "svm")
}

fn parse_meminfo_total_mb(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_needs_flags_and_device() {
        let with = "processor: 0\nflags\t\t: fpu vme vmx sse\n";
        let without = "processor: 0\nflags\t\t: fpu vme sse\n";
        assert!(kvm_usable(with, true));
        assert!(!kvm_usable(with, false));
        assert!(!kvm_usable(without, true));
    }

    #[test]
    fn meminfo_is_parsed() {
        assert_eq!(
            parse_meminfo_total_mb("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24000)
        );
        assert_eq!(parse_meminfo_total_mb("garbage"), None);
    }
}
