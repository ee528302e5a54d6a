//! Identifiers, resource quantities, VM specifications and the limits every input is checked
//! against. Validation lives here so that the API layer and `apply` enforce the same rules.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;

/// A node's identity in the cluster, fixed for the node's lifetime.
pub type NodeId = u64;

/// Longest VM name (the contract: `[a-z0-9][a-z0-9-]{0,62}`).
pub const MAX_NAME_LEN: usize = 63;
/// Largest vCPU count one VM may ask for.
pub const MAX_VCPUS: u32 = 256;
/// Largest memory one VM may ask for, in MiB (4 TiB).
pub const MAX_MEMORY_MB: u64 = 4 * 1024 * 1024;
/// Smallest memory one VM may ask for, in MiB.
pub const MIN_MEMORY_MB: u64 = 16;
/// Largest disk one VM may ask for, in GiB.
pub const MAX_DISK_GB: u64 = 64 * 1024;
/// Most labels on one VM or node.
pub const MAX_LABELS: usize = 32;
/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 63;
/// Longest path (kernel, initrd, image) accepted.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest kernel command line accepted.
pub const MAX_CMDLINE_LEN: usize = 4096;
/// Longest client request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest node address accepted.
pub const MAX_ADDR_LEN: usize = 256;
/// Most VMs the cluster will hold.
pub const MAX_VMS: usize = 100_000;
/// Most workers the cluster will hold.
pub const MAX_WORKERS: usize = 1_024;
/// Highest VM priority.
pub const MAX_PRIORITY: u8 = 100;
/// Priority of a VM that does not ask for one.
pub const DEFAULT_PRIORITY: u8 = 50;
/// Most required features on one VM.
pub const MAX_FEATURES: usize = 16;
/// The node features the scheduler knows. `kvm` is satisfied by workers that registered with
/// `kvm = true`.
pub const KNOWN_FEATURES: &[&str] = &["kvm"];

/// How the scheduler chooses among the nodes a VM fits on.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Strategy {
    /// Fill the fullest node that fits, keeping others empty.
    #[default]
    Binpack,
    /// Use the emptiest node that fits.
    Spread,
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Binpack => "binpack",
            Strategy::Spread => "spread",
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "binpack" => Ok(Self::Binpack),
            "spread" => Ok(Self::Spread),
            other => Err(format!(
                "unknown placement strategy '{}': use binpack or spread",
                truncate_for_message(other)
            )),
        }
    }
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

/// An amount of the three resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
}

impl Resources {
    pub fn new(vcpus: u32, memory_mb: u64, disk_gb: u64) -> Self {
        Self {
            vcpus,
            memory_mb,
            disk_gb,
        }
    }

    /// True when `other` fits inside `self`.
    pub fn fits(&self, other: &Resources) -> bool {
        other.vcpus <= self.vcpus
            && other.memory_mb <= self.memory_mb
            && other.disk_gb <= self.disk_gb
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(other.vcpus),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            disk_gb: self.disk_gb.saturating_sub(other.disk_gb),
        }
    }

    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_add(other.vcpus),
            memory_mb: self.memory_mb.saturating_add(other.memory_mb),
            disk_gb: self.disk_gb.saturating_add(other.disk_gb),
        }
    }
}

/// What the executor does when a VM's process ends without being asked to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RestartPolicy {
    Always,
    #[default]
    OnFailure,
    Never,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "on-failure" => Ok(Self::OnFailure),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown restart policy '{other}': use always, on-failure or never"
            )),
        }
    }
}

impl RestartPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

/// Everything a user asks for when creating a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub anti_affinity: Option<String>,
    /// Pin the VM to this node.
    pub node: Option<NodeId>,
    pub restart: RestartPolicy,
    /// Start the VM once placed (`--no-start` clears it).
    pub start: bool,
    /// Placement strategy for this VM; `None` uses the cluster default.
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Node label selector: every pair must be among the node's labels.
    #[serde(default)]
    pub constraints: BTreeMap<String, String>,
    /// Node features the VM needs (see [`KNOWN_FEATURES`]).
    #[serde(default)]
    pub features: BTreeSet<String>,
    /// 0 to 100, higher is more important; pending VMs are placed highest priority first.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// When nothing fits, may evict strictly-lower-priority VMs from one node.
    #[serde(default)]
    pub preempt: bool,
    /// Root disk image (raw, or qcow2 by its `.qcow2` extension), attached as virtio-blk.
    #[serde(default)]
    pub disk_image: Option<String>,
    /// Attach the disk image read-only instead of through a copy-on-write overlay.
    #[serde(default)]
    pub disk_readonly: bool,
    /// The network to take an address from; `None`: `default` when the cluster has it.
    #[serde(default)]
    pub network: Option<String>,
    /// A specific address on that network instead of the next free one.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
}

impl VmSpec {
    /// A spec with the contract's defaults: 1 vCPU, 256 MiB, no disk, started.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            vcpus: 1,
            memory_mb: 256,
            disk_gb: 0,
            kernel: None,
            initrd: None,
            cmdline: None,
            labels: BTreeMap::new(),
            anti_affinity: None,
            node: None,
            restart: RestartPolicy::default(),
            start: true,
            strategy: None,
            constraints: BTreeMap::new(),
            features: BTreeSet::new(),
            priority: DEFAULT_PRIORITY,
            preempt: false,
            disk_image: None,
            disk_readonly: false,
            network: None,
            ip: None,
        }
    }

    pub fn resources(&self) -> Resources {
        Resources::new(self.vcpus, self.memory_mb, self.disk_gb)
    }

    /// Checks every field against the limits; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ApplyError> {
        validate_name(&self.name)?;
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ApplyError::invalid(format!(
                "vcpus must be between 1 and {MAX_VCPUS}, got {}",
                self.vcpus
            )));
        }
        if self.memory_mb < MIN_MEMORY_MB || self.memory_mb > MAX_MEMORY_MB {
            return Err(ApplyError::invalid(format!(
                "memory must be between {MIN_MEMORY_MB} and {MAX_MEMORY_MB} MiB, got {}",
                self.memory_mb
            )));
        }
        if self.disk_gb > MAX_DISK_GB {
            return Err(ApplyError::invalid(format!(
                "disk must be at most {MAX_DISK_GB} GiB, got {}",
                self.disk_gb
            )));
        }
        for (what, p) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("disk image", &self.disk_image),
        ] {
            if let Some(p) = p {
                if p.is_empty() || p.len() > MAX_PATH_LEN || p.contains('\0') {
                    return Err(ApplyError::invalid(format!(
                        "{what} path must be 1 to {MAX_PATH_LEN} bytes"
                    )));
                }
                if obviously_outside_images(p) {
                    return Err(ApplyError::invalid(image_refusal(what, p)));
                }
            }
        }
        if let Some(c) = &self.cmdline {
            if c.len() > MAX_CMDLINE_LEN || c.contains('\0') {
                return Err(ApplyError::invalid(format!(
                    "cmdline must be at most {MAX_CMDLINE_LEN} bytes"
                )));
            }
        }
        validate_labels(&self.labels)?;
        if let Some(n) = &self.network {
            crate::network::validate_network_name(n)?;
        }
        if let Some(g) = &self.anti_affinity {
            validate_label_part("anti-affinity group", g)?;
        }
        if self.priority > MAX_PRIORITY {
            return Err(ApplyError::invalid(format!(
                "priority must be between 0 and {MAX_PRIORITY}, got {}",
                self.priority
            )));
        }
        validate_labels(&self.constraints)
            .map_err(|e| ApplyError::invalid(format!("invalid node constraint: {e}")))?;
        if self.features.len() > MAX_FEATURES {
            return Err(ApplyError::invalid(format!(
                "at most {MAX_FEATURES} features, got {}",
                self.features.len()
            )));
        }
        for f in &self.features {
            if !KNOWN_FEATURES.contains(&f.as_str()) {
                return Err(ApplyError::invalid(format!(
                    "unknown feature '{}': known features are {}",
                    truncate_for_message(f),
                    KNOWN_FEATURES.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Names follow `[a-z0-9][a-z0-9-]{0,62}`.
/// The one refusal of a kernel, initrd or disk image a node will not open: outside its image
/// directories, or not there (a client never learns which host files exist). Given by the
/// spec check for obviously bad paths and by the node that would open the file.
pub fn image_refusal(what: &str, path: &str) -> String {
    format!(
        "{what} {:?} is not a file in the node's image directories: name a file inside them (blixard node --image-dir; default DATA_DIR/images and the default guest directory)",
        truncate_for_message(path)
    )
}

/// Paths no image directory can hold: a `..` component, or under /proc, /sys or /dev.
fn obviously_outside_images(p: &str) -> bool {
    let path = std::path::Path::new(p);
    path.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
        || ["/proc", "/sys", "/dev"]
            .iter()
            .any(|root| path.starts_with(root))
}

pub fn validate_name(name: &str) -> Result<(), ApplyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApplyError::invalid(format!(
            "invalid name '{}': use 1 to {MAX_NAME_LEN} characters of a-z, 0-9 and '-', starting with a letter or digit",
            truncate_for_message(name)
        )))
    }
}

pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ApplyError> {
    if labels.len() > MAX_LABELS {
        return Err(ApplyError::invalid(format!(
            "at most {MAX_LABELS} labels, got {}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        validate_label_part("label key", k)?;
        if v.len() > MAX_LABEL_LEN || v.chars().any(|c| c.is_control()) {
            return Err(ApplyError::invalid(format!(
                "label value for '{k}' must be at most {MAX_LABEL_LEN} printable characters"
            )));
        }
    }
    Ok(())
}

fn validate_label_part(what: &str, s: &str) -> Result<(), ApplyError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(ApplyError::invalid(format!(
            "invalid {what} '{}': use 1 to {MAX_LABEL_LEN} characters of letters, digits, '-', '_', '.', '/'",
            truncate_for_message(s)
        )))
    }
}

/// Keeps error messages short when the input is huge.
pub(crate) fn truncate_for_message(s: &str) -> String {
    // Control characters (terminal escapes) are shown escaped, never echoed raw.
    let escaped: String;
    let s = if s.chars().any(char::is_control) {
        escaped = s
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect();
        escaped.as_str()
    } else {
        s
    };
    if s.len() <= 80 {
        s.to_string()
    } else {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        for ok in ["a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn obviously_bad_image_paths_get_the_one_refusal() {
        for bad in [
            "../../../../etc/passwd",
            "a/../b",
            "/proc/self/environ",
            "/dev/sda",
            "/sys/x",
        ] {
            let mut s = VmSpec::new("v");
            s.kernel = Some(bad.into());
            let e = s.validate().expect_err(bad).to_string();
            assert!(e.contains(&image_refusal("kernel", bad)), "{e}");
        }
        let mut s = VmSpec::new("v");
        s.disk_image = Some("base.img".into());
        s.kernel = Some("/var/lib/blixard/guest/vmlinuz".into());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn spec_limits_are_enforced() {
        let mut s = VmSpec::new("vm");
        assert!(s.validate().is_ok());
        s.vcpus = 0;
        assert!(s.validate().is_err());
        s.vcpus = 1;
        s.memory_mb = MAX_MEMORY_MB + 1;
        assert!(s.validate().is_err());
        s.memory_mb = 256;
        s.cmdline = Some("x".repeat(MAX_CMDLINE_LEN + 1));
        let e = s.validate().unwrap_err();
        assert!(e.to_string().contains("cmdline"));
    }
}
