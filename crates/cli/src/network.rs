//! `blixard network ...`: create, list and delete the networks VMs take their addresses from.

use blixard_api::{pb, NetworksClient};
use clap::Subcommand;

use crate::client::{request_id, status_err, Client};
use crate::output::{self, table};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create a network: a private IPv4 CIDR disjoint from the other networks.
    Create {
        name: String,
        /// e.g. 10.89.0.0/16 (inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10).
        #[arg(long)]
        cidr: String,
    },
    /// List networks.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Delete a network no VM uses.
    Delete { name: String },
}

pub async fn run(c: &Client, cmd: NetworkCmd) -> anyhow::Result<()> {
    let mut n = NetworksClient::new(c.channel().await?);
    match cmd {
        NetworkCmd::Create { name, cidr } => {
            let req = pb::CreateNetworkRequest {
                name,
                cidr,
                request_id: request_id(),
            };
            let net = n
                .create_network(req)
                .await
                .map_err(|e| status_err(&c.addr, e))?
                .into_inner();
            if c.json {
                output::print_json(&output::network_json(&net));
            } else {
                println!(
                    "network {} created ({}, VXLAN id {})",
                    net.name, net.cidr, net.vni
                );
            }
        }
        NetworkCmd::List { stale } => {
            let nets = n
                .list_networks(pb::ReadOptions { stale })
                .await
                .map_err(|e| status_err(&c.addr, e))?
                .into_inner()
                .networks;
            if c.json {
                output::print_json(&serde_json::Value::Array(
                    nets.iter().map(output::network_json).collect(),
                ));
            } else {
                let rows = nets
                    .iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.cidr.clone(),
                            n.vms.to_string(),
                            n.vni.to_string(),
                        ]
                    })
                    .collect();
                println!("{}", table(&["name", "cidr", "vms", "vni"], rows));
            }
        }
        NetworkCmd::Delete { name } => {
            let req = pb::NetworkRef {
                name: name.clone(),
                request_id: request_id(),
            };
            n.delete_network(req)
                .await
                .map_err(|e| status_err(&c.addr, e))?;
            c.done(&format!("network {name} deleted"));
        }
    }
    Ok(())
}
