//! Concurrent clients: random VM-registry operations over a small key set, sent to random
//! nodes over gRPC, each recorded with its invoke/complete time and outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blixard_api::pb;
use blixard_api::BlixardClient;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;

use crate::history::{OpKind, Outcome, Record};

pub type History = Arc<Mutex<Vec<Record>>>;

pub fn spec(name: &str, start: bool) -> pb::VmSpec {
    pb::VmSpec {
        name: name.to_string(),
        vcpus: 1,
        memory_mb: 16,
        disk_gb: 0,
        restart: "on-failure".into(),
        start,
        ..Default::default()
    }
}

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn write_outcome<T>(
    r: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Outcome {
    match r {
        Ok(Ok(_)) => Outcome::Ok,
        Ok(Err(s)) if s.code() == Code::AlreadyExists => Outcome::Exists,
        Ok(Err(s)) if s.code() == Code::NotFound => Outcome::NotFound,
        Ok(Err(s)) => Outcome::Unknown {
            error: format!("{:?}: {}", s.code(), s.message()),
        },
        Err(_) => Outcome::Unknown {
            error: "timeout".into(),
        },
    }
}

/// Executes one operation against `c`.
pub async fn perform(
    c: &mut BlixardClient<Channel>,
    key: Option<&str>,
    op: &OpKind,
    keys: &BTreeSet<String>,
    timeout: Duration,
) -> Outcome {
    let name = key.unwrap_or_default().to_string();
    match op {
        OpKind::Create { start } => {
            let req = pb::CreateVmRequest {
                spec: Some(spec(&name, *start)),
                request_id: rid(),
            };
            write_outcome(tokio::time::timeout(timeout, c.create_vm(req)).await)
        }
        OpKind::Delete => write_outcome(
            tokio::time::timeout(
                timeout,
                c.delete_vm(pb::VmRef {
                    name,
                    request_id: rid(),
                    // The harness deletes what it wants gone, running or not.
                    force: true,
                }),
            )
            .await,
        ),
        OpKind::SetDesired { running } => {
            let desired = if *running { "running" } else { "stopped" }.to_string();
            let req = pb::SetVmDesiredRequest {
                name,
                desired,
                request_id: rid(),
            };
            write_outcome(tokio::time::timeout(timeout, c.set_vm_desired(req)).await)
        }
        OpKind::Get => {
            match tokio::time::timeout(timeout, c.get_vm(pb::GetVmRequest { name, stale: false }))
                .await
            {
                Ok(Ok(r)) => Outcome::Value {
                    value: Some(r.into_inner().desired == "running"),
                },
                Ok(Err(s)) if s.code() == Code::NotFound => Outcome::Value { value: None },
                Ok(Err(s)) => Outcome::Unknown {
                    error: format!("{:?}: {}", s.code(), s.message()),
                },
                Err(_) => Outcome::Unknown {
                    error: "timeout".into(),
                },
            }
        }
        OpKind::List => {
            match tokio::time::timeout(timeout, c.list_vms(pb::ReadOptions { stale: false })).await
            {
                Ok(Ok(r)) => {
                    let values: BTreeMap<String, bool> = r
                        .into_inner()
                        .vms
                        .into_iter()
                        .filter(|v| keys.contains(&v.name))
                        .map(|v| (v.name, v.desired == "running"))
                        .collect();
                    Outcome::List { values }
                }
                Ok(Err(s)) => Outcome::Unknown {
                    error: format!("{:?}: {}", s.code(), s.message()),
                },
                Err(_) => Outcome::Unknown {
                    error: "timeout".into(),
                },
            }
        }
    }
}

pub struct Workload {
    pub seed: u64,
    pub keys: Vec<String>,
    pub clients: Vec<BlixardClient<Channel>>,
    pub op_timeout: Duration,
    pub epoch: Instant,
}

impl Workload {
    pub fn us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Client `idx` issues operations until `until`. Its choices come from its own RNG seeded
    /// from the run seed (timing, and so the interleaving, is real).
    pub async fn client(self: Arc<Self>, idx: usize, until: Instant, history: History) {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(idx as u64));
        let keyset: BTreeSet<String> = self.keys.iter().cloned().collect();
        while Instant::now() < until {
            let node = rng.gen_range(1..=self.clients.len());
            let key = self.keys[rng.gen_range(0..self.keys.len())].clone();
            let op = match rng.gen_range(0..100) {
                0..=19 => OpKind::Create {
                    start: rng.gen_bool(0.3),
                },
                20..=29 => OpKind::Delete,
                30..=49 => OpKind::SetDesired {
                    running: rng.gen_bool(0.3),
                },
                50..=84 => OpKind::Get,
                _ => OpKind::List,
            };
            let key = if op == OpKind::List { None } else { Some(key) };
            let mut c = self.clients[node - 1].clone();
            let invoke_us = self.us();
            let outcome = perform(&mut c, key.as_deref(), &op, &keyset, self.op_timeout).await;
            let complete_us = self.us();
            history.lock().unwrap().push(Record {
                id: 0,
                client: idx,
                node,
                key,
                op,
                invoke_us,
                complete_us,
                outcome,
            });
            tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
        }
    }
}
