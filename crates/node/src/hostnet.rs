//! Host networking for VMs: per network a Linux bridge carrying this node's address on it (so
//! the host reaches its VMs), a VXLAN device on that bridge joining the other nodes' bridges of
//! the same network (VNI from the replicated state, one unicast flood entry per peer node), and
//! per VM a persistent tap device on the bridge that QEMU opens.
//!
//! Like the rest of the executor it is level-triggered: [`HostNet::sync`] compares what the
//! applied state asks for with the devices found on the host (`ip -j -d link show`) and fixes
//! the difference, so a restart (or a crash) converges: leftover bridges, VXLAN devices and
//! taps of this node are removed, a running VM's tap is kept. Devices are changed with the `ip`
//! and `bridge` commands of iproute2.
//!
//! Names are deterministic and fit IFNAMSIZ (15 bytes): `bx` + 4 hex digits of a hash of
//! (cluster id, node id) — so several nodes, or several clusters, can share a host without
//! touching each other's devices — then `b<vni hex>` (bridge), `v<vni hex>` (VXLAN) or
//! `t<8 hex digits of a hash of the VM name>` (tap).
//!
//! Limits: VXLAN needs each node's advertised address to be an IPv4 address other nodes reach
//! (nodes on the same address, e.g. several on 127.0.0.1, are not tunnelled to each other);
//! the guest's MTU is not lowered for the VXLAN overhead (50 bytes), so across nodes large
//! frames need an underlay MTU above 1550. The process driver has no networking: a node running
//! it skips all of this.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use crate::error::NodeError;

/// UDP port of the VXLAN tunnels (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// One network as this node must have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedNet {
    pub vni: u32,
    /// This node's address on the network and the prefix length.
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// The underlay addresses of the other nodes.
    pub peers: BTreeSet<Ipv4Addr>,
}

/// A link as `ip -j -d link show` reports it (the fields used here).
#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    operstate: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    addr_info: Vec<Addr>,
}

#[derive(Debug, Deserialize)]
struct Addr {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Debug, Deserialize)]
struct Fdb {
    mac: String,
    #[serde(default)]
    dst: Option<String>,
}

fn short_hash(s: &str, digits: usize) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..digits].to_string()
}

/// Host devices of one node.
pub struct HostNet {
    prefix: String,
    /// This node's underlay IPv4 address (from its advertised address), for VXLAN.
    local: Option<Ipv4Addr>,
    /// Serializes changes: `sync` and the taps of concurrent VM starts.
    lock: tokio::sync::Mutex<()>,
}

impl HostNet {
    pub fn new(cluster_id: &str, node_id: u64, advertised: &str) -> Self {
        let local = advertised
            .rsplit_once(':')
            .and_then(|(h, _)| h.parse::<Ipv4Addr>().ok());
        Self {
            prefix: format!("bx{}", short_hash(&format!("{cluster_id}/{node_id}"), 4)),
            local,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The prefix of every device name of this node.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn bridge_name(&self, vni: u32) -> String {
        format!("{}b{vni:x}", self.prefix)
    }

    pub fn vxlan_name(&self, vni: u32) -> String {
        format!("{}v{vni:x}", self.prefix)
    }

    pub fn tap_name(&self, vm: &str) -> String {
        format!("{}t{}", self.prefix, short_hash(vm, 8))
    }

    /// The MAC of the VM holding `ip` (unique: addresses are unique across networks).
    pub fn mac(ip: Ipv4Addr) -> String {
        let o = ip.octets();
        format!("02:b1:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    }

    /// Underlay address of a node advertised at `addr` (`A.B.C.D:port`), if IPv4.
    pub fn underlay(addr: &str) -> Option<Ipv4Addr> {
        addr.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
    }

    pub fn local_underlay(&self) -> Option<Ipv4Addr> {
        self.local
    }

    async fn run(program: &str, args: &[&str]) -> Result<String, NodeError> {
        let out = Command::new(program)
            .args(args)
            .output()
            .await
            .map_err(|e| NodeError::io(format!("cannot run {program} (install iproute2)"), e))?;
        if !out.status.success() {
            return Err(NodeError::Host(format!(
                "{program} {}: {} (host networking needs root; start the node with --no-host-network to do without)",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn ip(args: &[&str]) -> Result<String, NodeError> {
        Self::run("ip", args).await
    }

    /// This node's links (name -> link).
    async fn links(&self) -> Result<BTreeMap<String, Link>, NodeError> {
        let json = Self::ip(&["-j", "-d", "link", "show"]).await?;
        let links: Vec<Link> = serde_json::from_str(&json)
            .map_err(|e| NodeError::Host(format!("parsing `ip -j link show`: {e}")))?;
        Ok(links
            .into_iter()
            .filter(|l| l.ifname.starts_with(&self.prefix))
            .map(|l| (l.ifname.clone(), l))
            .collect())
    }

    async fn del(name: &str) {
        match Self::ip(&["link", "del", name]).await {
            Ok(_) => tracing::info!(device = name, "removed network device"),
            Err(e) => tracing::warn!(device = name, error = %e, "removing network device"),
        }
    }

    /// Makes the host match `nets` (by VNI) and keeps only the taps in `keep_taps`.
    pub async fn sync(
        &self,
        nets: &BTreeMap<u32, WantedNet>,
        keep_taps: &BTreeSet<String>,
    ) -> Result<(), NodeError> {
        let _g = self.lock.lock().await;
        let links = self.links().await?;
        for (vni, want) in nets {
            self.ensure_bridge(&links, *vni, want).await?;
            if let Err(e) = self.ensure_vxlan(&links, *vni, want).await {
                tracing::warn!(vni, error = %e, "VXLAN for the network's bridge");
            }
        }
        let bridges: BTreeSet<String> = nets.keys().map(|v| self.bridge_name(*v)).collect();
        let vxlans: BTreeSet<String> = nets.keys().map(|v| self.vxlan_name(*v)).collect();
        let tap_prefix = format!("{}t", self.prefix);
        for (name, link) in &links {
            let kind = link
                .linkinfo
                .as_ref()
                .and_then(|i| i.info_kind.as_deref())
                .unwrap_or("");
            let stale = match kind {
                "bridge" => !bridges.contains(name),
                "vxlan" => !vxlans.contains(name),
                "tun" => name.starts_with(&tap_prefix) && !keep_taps.contains(name),
                _ => false,
            };
            if stale {
                Self::del(name).await;
            }
        }
        Ok(())
    }

    async fn ensure_bridge(
        &self,
        links: &BTreeMap<String, Link>,
        vni: u32,
        want: &WantedNet,
    ) -> Result<(), NodeError> {
        let br = self.bridge_name(vni);
        if !links.contains_key(&br) {
            tracing::info!(bridge = %br, vni, addr = %want.addr, "creating bridge");
            // Bridged VM traffic is not the host firewall's business (br_netfilter).
            Self::ip(&[
                "link",
                "add",
                &br,
                "type",
                "bridge",
                "nf_call_iptables",
                "0",
            ])
            .await?;
        }
        let addrs: Vec<AddrInfo> =
            serde_json::from_str(&Self::ip(&["-j", "addr", "show", "dev", &br]).await?)
                .map_err(|e| NodeError::Host(format!("parsing `ip -j addr show`: {e}")))?;
        let want_addr = (want.addr.to_string(), want.prefix);
        let have: Vec<(String, u8)> = addrs
            .iter()
            .flat_map(|a| a.addr_info.iter())
            .filter(|a| a.family == "inet")
            .map(|a| (a.local.clone(), a.prefixlen))
            .collect();
        for a in have.iter().filter(|a| **a != want_addr) {
            Self::ip(&["addr", "del", &format!("{}/{}", a.0, a.1), "dev", &br]).await?;
        }
        if !have.contains(&want_addr) {
            Self::ip(&[
                "addr",
                "add",
                &format!("{}/{}", want.addr, want.prefix),
                "dev",
                &br,
            ])
            .await?;
        }
        let up = links
            .get(&br)
            .is_some_and(|l| l.flags.iter().any(|f| f == "UP"));
        if !up {
            Self::ip(&["link", "set", &br, "up"]).await?;
        }
        Ok(())
    }

    async fn ensure_vxlan(
        &self,
        links: &BTreeMap<String, Link>,
        vni: u32,
        want: &WantedNet,
    ) -> Result<(), NodeError> {
        let Some(local) = self.local else {
            return Ok(());
        };
        let peers: BTreeSet<Ipv4Addr> =
            want.peers.iter().copied().filter(|p| *p != local).collect();
        let vx = self.vxlan_name(vni);
        let br = self.bridge_name(vni);
        if peers.is_empty() {
            if links.contains_key(&vx) {
                Self::del(&vx).await;
            }
            return Ok(());
        }
        match links.get(&vx) {
            None => {
                tracing::info!(device = %vx, vni, %local, "creating VXLAN device");
                let (id, port, local_s) =
                    (vni.to_string(), VXLAN_PORT.to_string(), local.to_string());
                Self::ip(&[
                    "link",
                    "add",
                    &vx,
                    "type",
                    "vxlan",
                    "id",
                    &id,
                    "dstport",
                    &port,
                    "local",
                    &local_s,
                    "nolearning",
                ])
                .await?;
                Self::ip(&["link", "set", &vx, "master", &br, "up"]).await?;
            }
            Some(l)
                if l.master.as_deref() != Some(br.as_str())
                    || l.operstate.as_deref() == Some("DOWN") =>
            {
                Self::ip(&["link", "set", &vx, "master", &br, "up"]).await?;
            }
            Some(_) => {}
        }
        let fdb: Vec<Fdb> =
            serde_json::from_str(&Self::run("bridge", &["-j", "fdb", "show", "dev", &vx]).await?)
                .map_err(|e| NodeError::Host(format!("parsing `bridge -j fdb show`: {e}")))?;
        let have: BTreeSet<Ipv4Addr> = fdb
            .iter()
            .filter(|f| f.mac == "00:00:00:00:00:00")
            .filter_map(|f| f.dst.as_deref().and_then(|d| d.parse().ok()))
            .collect();
        for p in peers.difference(&have) {
            let p = p.to_string();
            Self::run(
                "bridge",
                &["fdb", "append", "00:00:00:00:00:00", "dev", &vx, "dst", &p],
            )
            .await?;
            tracing::info!(device = %vx, peer = %p, "VXLAN peer added");
        }
        for p in have.difference(&peers) {
            let p = p.to_string();
            Self::run(
                "bridge",
                &["fdb", "del", "00:00:00:00:00:00", "dev", &vx, "dst", &p],
            )
            .await?;
            tracing::info!(device = %vx, peer = %p, "VXLAN peer removed");
        }
        Ok(())
    }

    /// Creates (idempotently) the persistent tap `tap` on the bridge of network `vni`. The
    /// bridge must exist (see [`Self::sync`]).
    pub async fn ensure_tap(&self, tap: &str, vni: u32) -> Result<(), NodeError> {
        let _g = self.lock.lock().await;
        let br = self.bridge_name(vni);
        let links = self.links().await?;
        if !links.contains_key(&br) {
            return Err(NodeError::Host(format!(
                "bridge {br} of network VNI {vni} is missing (this node has no address on the network?)"
            )));
        }
        match links.get(tap) {
            None => {
                Self::ip(&["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
                Self::ip(&["link", "set", tap, "master", &br, "up"]).await?;
                tracing::info!(tap, bridge = %br, "created tap");
            }
            Some(l)
                if l.master.as_deref() != Some(br.as_str())
                    || !l.flags.iter().any(|f| f == "UP") =>
            {
                Self::ip(&["link", "set", tap, "master", &br, "up"]).await?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Removes every device of this node (tests; a node leaving the cluster).
    pub async fn remove_all(&self) {
        let _g = self.lock.lock().await;
        if let Ok(links) = self.links().await {
            for name in links.keys() {
                Self::del(name).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_differ_per_node() {
        let a = HostNet::new("c1", 1, "10.0.0.1:7000");
        let b = HostNet::new("c1", 2, "10.0.0.2:7000");
        assert_ne!(a.bridge_name(1), b.bridge_name(1));
        for n in [
            a.bridge_name(0xff_ffff),
            a.vxlan_name(0xff_ffff),
            a.tap_name(&"x".repeat(63)),
        ] {
            assert!(n.len() <= 15, "{n}");
        }
        assert_eq!(a.tap_name("web"), a.tap_name("web"));
        assert_ne!(a.tap_name("web"), a.tap_name("db"));
        assert_eq!(a.local_underlay(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(HostNet::new("c", 1, "node-a:7000").local_underlay(), None);
        assert_eq!(
            HostNet::mac(Ipv4Addr::new(10, 88, 0, 5)),
            "02:b1:0a:58:00:05"
        );
    }
}
