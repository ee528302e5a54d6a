//! Cluster, node and join-token commands.

use std::time::{Duration, Instant};

use blixard_api::pb;

use super::{request_id, status_err, Client};
use crate::output::{self, opt, table};

impl Client {
    pub async fn token_create(&self, ttl: u64) -> anyhow::Result<()> {
        let t = self
            .connect()
            .await?
            .create_join_token(pb::CreateJoinTokenRequest { ttl_secs: ttl })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json {
            output::print_json(
                &serde_json::json!({"token": t.token, "id": t.id, "expires_at_ms": t.expires_at_ms}),
            );
        } else {
            println!("{}", t.token);
        }
        Ok(())
    }

    pub async fn token_list(&self) -> anyhow::Result<()> {
        let list = self
            .connect()
            .await?
            .list_join_tokens(pb::Empty {})
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let tokens = list.into_inner().tokens;
        if self.json {
            let rows = tokens
                .iter()
                .map(|t| {
                    serde_json::json!({"id": t.id, "status": t.status, "created_ms": t.created_ms,
                        "expires_at_ms": t.expires_at_ms, "used_by": t.used_by})
                })
                .collect();
            output::print_json(&serde_json::Value::Array(rows));
        } else {
            let rows = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.status.clone(),
                        t.expires_at_ms.to_string(),
                        opt(t.used_by),
                    ]
                })
                .collect();
            println!(
                "{}",
                table(&["id", "status", "expires at (ms)", "used by"], rows)
            );
        }
        Ok(())
    }

    pub async fn token_revoke(&self, id: &str) -> anyhow::Result<()> {
        self.connect()
            .await?
            .revoke_join_token(pb::JoinTokenRef { id: id.into() })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("join token {id} revoked"));
        Ok(())
    }

    pub async fn cluster_status(&self, stale: bool) -> anyhow::Result<()> {
        let s = self
            .connect()
            .await?
            .cluster_status(pb::ReadOptions { stale })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let s = s.into_inner();
        if self.json {
            output::print_json(&output::status_json(&s));
        } else {
            println!(
                "node {}  leader {}  term {}  applied {}",
                s.node_id,
                opt(s.leader_id),
                s.term,
                s.applied_index
            );
            let rows = s
                .members
                .iter()
                .map(|m| vec![m.id.to_string(), m.addr.clone(), m.role.clone()])
                .collect();
            println!("{}", table(&["id", "addr", "role"], rows));
        }
        Ok(())
    }

    pub async fn cluster_remove(&self, id: u64, force: bool) -> anyhow::Result<()> {
        self.connect()
            .await?
            .remove_member(pb::RemoveMemberRequest { node_id: id, force })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("node {id} removed"));
        Ok(())
    }

    pub async fn cluster_leave(&self, force: bool) -> anyhow::Result<()> {
        self.connect()
            .await?
            .leave(pb::LeaveRequest { force })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        self.done(&format!("node at {} left the cluster", self.addr));
        Ok(())
    }

    pub async fn node_list(&self, stale: bool) -> anyhow::Result<()> {
        let r = self
            .connect()
            .await?
            .list_nodes(pb::ReadOptions { stale })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let nodes = r.into_inner().nodes;
        if self.json {
            output::print_json(&serde_json::Value::Array(
                nodes.iter().map(output::node_json).collect(),
            ));
            return Ok(());
        }
        let rows = nodes
            .iter()
            .map(|n| {
                let c = n.capacity.unwrap_or_default();
                let a = n.allocated.unwrap_or_default();
                vec![
                    n.id.to_string(),
                    n.addr.clone(),
                    n.state.clone(),
                    format!("{}/{}", a.vcpus, c.vcpus),
                    format!("{}/{}", a.memory_mb, c.memory_mb),
                    format!("{}/{}", a.disk_gb, c.disk_gb),
                    n.vms.to_string(),
                    if n.kvm { "yes" } else { "no" }.into(),
                    if n.labels.is_empty() {
                        "-".to_string()
                    } else {
                        n.labels
                            .iter()
                            .map(|(k, v)| format!("{}={}", output::clean(k), output::clean(v)))
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    n.last_heartbeat_ms_ago
                        .map(|ms| format!("{} ago", ago(ms)))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        println!(
            "{}",
            table(
                &[
                    "id",
                    "addr",
                    "state",
                    "vcpus",
                    "memory mib",
                    "disk gib",
                    "vms",
                    "kvm",
                    "labels",
                    "heartbeat"
                ],
                rows
            )
        );
        // Local knowledge of one node, not cluster state: say whose.
        match nodes.iter().find_map(|n| n.heartbeat_observer) {
            Some(leader) => println!("(last heartbeat as received by the leader, node {leader})"),
            None if !nodes.is_empty() => println!(
                "(no heartbeat information: {})",
                if stale {
                    "a --stale read on a follower"
                } else {
                    "the leader has not heard from these nodes yet"
                }
            ),
            None => {}
        }
        Ok(())
    }

    pub async fn node_set_state(&self, id: u64, state: &str) -> anyhow::Result<()> {
        let r = self
            .connect()
            .await?
            .set_node_state(pb::SetNodeStateRequest {
                node_id: id,
                state: state.into(),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        let n = r.into_inner();
        if self.json {
            output::print_json(&output::node_json(&n));
        } else {
            println!("node {} is {}", n.id, n.state);
        }
        Ok(())
    }

    pub async fn node_drain(&self, id: u64, timeout: u64, no_wait: bool) -> anyhow::Result<()> {
        if no_wait {
            return self.node_set_state(id, "draining").await;
        }
        let mut c = self.connect().await?;
        c.set_node_state(pb::SetNodeStateRequest {
            node_id: id,
            state: "draining".into(),
            request_id: request_id(),
        })
        .await
        .map_err(|e| status_err(&self.addr, e))?;
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut last = String::new();
        loop {
            let vms = c
                .list_vms(pb::ReadOptions { stale: false })
                .await
                .map_err(|e| status_err(&self.addr, e))?
                .into_inner()
                .vms;
            let left: Vec<&pb::VmInfo> = vms.iter().filter(|v| v.node_id == Some(id)).collect();
            let line = format!("node {id}: {} VMs left", left.len());
            if line != last && !self.json {
                println!("{line}");
                last = line;
            }
            if left.is_empty() {
                if self.json {
                    output::print_json(
                        &serde_json::json!({"node_id": id, "state": "draining", "vms_left": 0}),
                    );
                } else {
                    println!("node {id} is drained");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                // Why each one stays, by the scheduler's own checks (at most 20 asked).
                let mut lines = Vec::new();
                for v in left.iter().take(20) {
                    let why = match c
                        .explain_move(pb::VmRef {
                            name: v.name.clone(),
                            request_id: String::new(),
                            force: false,
                        })
                        .await
                    {
                        Ok(r) => r.into_inner().blocker.unwrap_or_else(|| {
                            v.reason
                                .clone()
                                .unwrap_or_else(|| format!("{}, moving", v.state))
                        }),
                        Err(e) => v.reason.clone().unwrap_or_else(|| e.message().to_string()),
                    };
                    lines.push(format!(
                        "{} ({})",
                        output::clean(&v.name),
                        output::clean(&why)
                    ));
                }
                if left.len() > lines.len() {
                    lines.push(format!("{} more", left.len() - lines.len()));
                }
                anyhow::bail!(
                    "node {id} still has {} VMs after {timeout}s (the drain goes on): {}",
                    left.len(),
                    lines.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Shows the cluster settings, or changes some (`lease`: lease, grace and heartbeat ms).
    pub async fn cluster_settings(
        &self,
        strategy: Option<blixard_core::Strategy>,
        vcpu_overcommit: Option<u32>,
        lease: [Option<u64>; 3],
    ) -> anyhow::Result<()> {
        if lease.contains(&Some(0)) {
            anyhow::bail!("lease, grace and heartbeat must be positive numbers of milliseconds");
        }
        let s =
            if strategy.is_none() && vcpu_overcommit.is_none() && lease.iter().all(Option::is_none)
            {
                let r = self
                    .connect()
                    .await?
                    .cluster_status(pb::ReadOptions { stale: false })
                    .await
                    .map_err(|e| status_err(&self.addr, e))?;
                r.into_inner().scheduler.unwrap_or_default()
            } else {
                let req = pb::SchedulerSettings {
                    strategy: strategy.map(|s| s.as_str().to_string()).unwrap_or_default(),
                    vcpu_overcommit_pct: vcpu_overcommit.unwrap_or(0),
                    request_id: request_id(),
                    lease_ms: lease[0].unwrap_or(0),
                    grace_ms: lease[1].unwrap_or(0),
                    heartbeat_ms: lease[2].unwrap_or(0),
                };
                self.connect()
                    .await?
                    .set_scheduler_settings(req)
                    .await
                    .map_err(|e| status_err(&self.addr, e))?
                    .into_inner()
            };
        if self.json {
            output::print_json(&output::settings_json(&s));
        } else {
            println!(
                "strategy {}  vcpu overcommit {}%  lease {} ms  grace {} ms  heartbeat {} ms",
                s.strategy, s.vcpu_overcommit_pct, s.lease_ms, s.grace_ms, s.heartbeat_ms
            );
        }
        Ok(())
    }
}

/// A short human duration: "850ms", "4.2s", "3m10s", "2h05m".
fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

#[cfg(test)]
mod ago_tests {
    #[test]
    fn short_durations() {
        assert_eq!(super::ago(850), "850ms");
        assert_eq!(super::ago(4_200), "4.2s");
        assert_eq!(super::ago(190_000), "3m10s");
        assert_eq!(super::ago(7_500_000), "2h05m");
    }
}
