//! Task commands.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use blixard_api::{pb, BlixardClient};
use clap::Args;
use tonic::transport::Channel;

use super::{parse_pairs, request_id, status_err, Client};
use crate::output::{self, opt, table};

#[derive(Args)]
pub struct SubmitArgs {
    /// vCPUs the task holds while it runs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Memory in MiB the task holds while it runs.
    #[arg(long, default_value_t = 64)]
    memory: u64,
    /// Seconds before the task is killed and marked timed_out.
    #[arg(long, default_value_t = blixard_core::task::DEFAULT_TASK_TIMEOUT_SECS)]
    timeout: u64,
    /// Run it on this node only.
    #[arg(long)]
    node: Option<u64>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Attempts in all when nodes die under it (default 3).
    #[arg(long, default_value_t = blixard_core::task::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

impl Client {
    pub(super) async fn get_task(
        &self,
        c: &mut BlixardClient<Channel>,
        id: &str,
        stale: bool,
    ) -> anyhow::Result<pb::TaskInfo> {
        let r = c
            .get_task(pb::GetTaskRequest {
                id: id.into(),
                stale,
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?;
        Ok(r.into_inner())
    }

    pub async fn task_submit(&self, a: SubmitArgs) -> anyhow::Result<()> {
        if a.command.is_empty() || a.command[0].is_empty() {
            anyhow::bail!("empty command: give the program to run after --, e.g. blixard task submit -- echo hi");
        }
        let env = parse_pairs(&a.env, "environment variable")?;
        let spec = blixard_core::TaskSpec {
            command: a.command,
            env,
            cpus: a.cpus,
            memory_mb: a.memory,
            timeout_secs: a.timeout,
            node: a.node,
            max_attempts: a.max_attempts,
        };
        spec.validate()?;
        let req = pb::SubmitTaskRequest {
            spec: Some(pb::TaskSpec::from(&spec)),
            request_id: request_id(),
        };
        let t = self
            .connect()
            .await?
            .submit_task(req)
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json {
            output::print_json(&output::task_json(&t));
        } else {
            println!("{}", t.id);
        }
        Ok(())
    }

    pub async fn task_status(&self, id: &str, stale: bool) -> anyhow::Result<()> {
        let mut c = self.connect().await?;
        let t = self.get_task(&mut c, id, stale).await?;
        if self.json {
            output::print_json(&output::task_json(&t));
        } else {
            println!("{}", task_table(std::slice::from_ref(&t)));
            println!("command: {}", t.command.join(" "));
            if let Some(r) = &t.reason {
                println!("reason: {r}");
            }
            if let Some(by) = &t.created_by {
                println!("created by: {}", output::clean(by));
            }
        }
        Ok(())
    }

    pub async fn task_list(
        &self,
        stale: bool,
        state: Option<blixard_core::TaskState>,
        node: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut c = self.connect().await?;
        let mut tasks = Vec::new();
        let mut after = String::new();
        loop {
            let req = pb::ListTasksRequest {
                stale,
                state: state.map(|s| s.as_str().to_string()).unwrap_or_default(),
                node,
                limit: 0,
                after: after.clone(),
            };
            let r = c
                .list_tasks(req)
                .await
                .map_err(|e| status_err(&self.addr, e))?
                .into_inner();
            tasks.extend(r.tasks);
            if r.next.is_empty() {
                break;
            }
            after = r.next;
        }
        if self.json {
            output::print_json(&serde_json::Value::Array(
                tasks.iter().map(output::task_json).collect(),
            ));
        } else {
            println!("{}", task_table(&tasks));
        }
        Ok(())
    }

    pub async fn task_wait(&self, id: &str, timeout: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut c = self.connect().await?;
        let t = loop {
            let t = self.get_task(&mut c, id, false).await?;
            if !matches!(t.state.as_str(), "pending" | "running") {
                break t;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "timed out after {timeout}s waiting for task {id} to end (it is {})",
                    t.state
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if self.json {
            output::print_json(&output::task_json(&t));
        }
        if t.state == "succeeded" {
            if !self.json {
                println!("task {id} succeeded in {} ms", t.duration_ms.unwrap_or(0));
            }
            return Ok(());
        }
        let mut msg = format!("task {id} {}", t.state);
        if let Some(c) = t.exit_code {
            msg.push_str(&format!(" with exit code {c}"));
        }
        if let Some(r) = &t.reason {
            msg.push_str(&format!(": {r}"));
        }
        Err(anyhow!(msg))
    }

    pub async fn task_logs(&self, id: &str, tail: Option<usize>) -> anyhow::Result<()> {
        let stream = self
            .connect()
            .await?
            .task_logs(pb::TaskRef {
                id: id.into(),
                request_id: String::new(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        // One JSON document: the output as text.
        let json = self.json.then_some(("id", id, "output"));
        super::print_log_stream(&self.addr, stream, self.json || tail.is_some(), json, tail).await
    }

    pub async fn task_cancel(&self, id: &str) -> anyhow::Result<()> {
        let t = self
            .connect()
            .await?
            .cancel_task(pb::TaskRef {
                id: id.into(),
                request_id: request_id(),
            })
            .await
            .map_err(|e| status_err(&self.addr, e))?
            .into_inner();
        if self.json {
            output::print_json(&output::task_json(&t));
        } else if t.state == "cancelled" {
            println!("task {id} cancelled");
        } else {
            println!("task {id}: cancel requested (its node stops it)");
        }
        Ok(())
    }
}

pub(super) fn task_table(tasks: &[pb::TaskInfo]) -> String {
    let rows = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                opt(t.node_id),
                t.state.clone(),
                opt(t.exit_code),
                opt(t.duration_ms),
                format!("{}/{}", t.attempt, t.max_attempts),
                t.command.join(" ").chars().take(40).collect(),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "node",
            "state",
            "exit",
            "duration ms",
            "attempt",
            "command",
        ],
        rows,
    )
}
