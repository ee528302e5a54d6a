//! The executor's host networking: which bridges, VXLAN devices and taps this host should
//! have for the VMs placed on it, making the host match, and attaching a VM to its network.

use super::*;

impl Executor {
    /// Makes the host network match (bridges, VXLAN devices, taps); skipped while nothing
    /// changed, but looked at again now and then (someone may have removed a device by hand).
    pub(super) async fn sync_network(&self, h: &HostNet, taps: Vec<String>, observed: &[Observed]) {
        let (nets, taps) = self.wanted_network(h, taps, observed);
        let due = {
            let l = self.local.lock().unwrap_or_else(|p| p.into_inner());
            l.net_synced
                .as_ref()
                .is_none_or(|(n, t, at)| *n != nets || *t != taps || at.elapsed() >= NET_RESYNC)
        };
        if !due {
            return;
        }
        let result = h.sync(&nets, &taps).await;
        let mut l = self.local.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                l.net_synced = Some((nets, taps, Instant::now()));
                l.net_error = None;
            }
            Err(e) => {
                l.net_synced = None;
                let text = e.to_string();
                // Once per distinct error, not every pass.
                if l.net_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "host networking");
                    l.net_error = Some(text);
                }
            }
        }
    }

    /// The networks this node bridges (those it has an address on) and the taps to keep: those
    /// of the VMs placed here with an address (`taps`), and of the VMs still running here.
    pub(super) fn wanted_network(
        &self,
        h: &HostNet,
        taps: Vec<String>,
        observed: &[Observed],
    ) -> (BTreeMap<u32, WantedNet>, std::collections::BTreeSet<String>) {
        let a = self.node.state.read();
        let peers: std::collections::BTreeSet<std::net::Ipv4Addr> = a
            .state
            .workers
            .values()
            .filter(|w| w.id != self.node.id)
            .filter_map(|w| HostNet::underlay(&w.addr))
            .collect();
        let nets = a
            .state
            .networks
            .values()
            .filter_map(|n| {
                let addr = n.node_address(self.node.id)?;
                Some((
                    n.vni,
                    WantedNet {
                        vni: n.vni,
                        addr,
                        prefix: n.cidr.prefix(),
                        peers: peers.clone(),
                    },
                ))
            })
            .collect();
        let mut taps: std::collections::BTreeSet<String> = taps.into_iter().collect();
        taps.extend(
            observed
                .iter()
                .filter(|o| matches!(o.run, RunState::Starting | RunState::Running))
                .map(|o| h.tap_name(&o.name)),
        );
        (nets, taps)
    }

    /// The VM's interface: its tap (created on its network's bridge), MAC, and the `ip=` kernel
    /// parameter (address, this node's address as gateway, netmask, the VM's name as hostname).
    pub(super) async fn attach_network(&self, cfg: &mut VmConfig) -> Result<(), NodeError> {
        let Some(h) = &self.hostnet else {
            return Ok(());
        };
        let found = {
            let a = self.node.state.read();
            a.state.vms.get(&cfg.name).and_then(|vm| {
                let net = a.state.networks.get(vm.network.as_deref()?)?;
                Some((
                    vm.ip?,
                    net.vni,
                    net.cidr.netmask(),
                    net.node_address(self.node.id),
                ))
            })
        };
        let Some((ip, vni, mask, gw)) = found else {
            return Ok(());
        };
        let tap = h.tap_name(&cfg.name);
        h.ensure_tap(&tap, vni).await?;
        cfg.net = Some(blixard_vmm::NetAttachment {
            tap,
            mac: HostNet::mac(ip),
        });
        let gw = gw.map(|g| g.to_string()).unwrap_or_default();
        let param = format!("ip={ip}::{gw}:{mask}:{}:eth0:off", cfg.name);
        // Before the user's command line, so that an `ip=` of theirs wins.
        cfg.cmdline = Some(match cfg.cmdline.take() {
            Some(c) if !c.trim().is_empty() => format!("{param} {c}"),
            _ => param,
        });
        Ok(())
    }
}
