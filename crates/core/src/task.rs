//! One-shot tasks: a command with arguments and resource needs, run once (retried on node
//! loss) on a worker the scheduler picks. Specs, limits, states and the task record; the apply
//! rules live in [`crate::state`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::ApplyError;
use crate::spec::{NodeId, Resources, MAX_MEMORY_MB, MAX_VCPUS};

/// Finished tasks kept in the state; the oldest finished are forgotten beyond this.
pub const MAX_FINISHED_TASKS: usize = 1_000;
/// Pending and running tasks the cluster holds at once.
pub const MAX_ACTIVE_TASKS: usize = 10_000;
/// Most arguments (the command included).
pub const MAX_TASK_ARGS: usize = 256;
/// Most bytes of the command and its arguments together.
pub const MAX_TASK_COMMAND_BYTES: usize = 16 * 1024;
/// Most environment variables.
pub const MAX_TASK_ENV: usize = 64;
/// Most bytes of the environment (keys and values together).
pub const MAX_TASK_ENV_BYTES: usize = 16 * 1024;
/// Longest timeout: one week.
pub const MAX_TASK_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Timeout of a task that names none: one hour.
pub const DEFAULT_TASK_TIMEOUT_SECS: u64 = 3600;
/// Attempts (first run plus retries after node loss) when the spec names none.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most attempts a spec may ask for.
pub const MAX_ATTEMPTS: u32 = 10;
/// Longest task id.
pub const MAX_TASK_ID_LEN: usize = 64;
/// Longest reason text kept in a task record.
pub const MAX_REASON_LEN: usize = 1024;

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// What to run and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The program and its arguments (argv; the first is looked up in PATH).
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cpus: u32,
    pub memory_mb: u64,
    pub timeout_secs: u64,
    /// Pin to this node.
    #[serde(default)]
    pub node: Option<NodeId>,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl TaskSpec {
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            env: BTreeMap::new(),
            cpus: 1,
            memory_mb: 64,
            timeout_secs: DEFAULT_TASK_TIMEOUT_SECS,
            node: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// What the task holds on its node while it is assigned there.
    pub fn resources(&self) -> Resources {
        Resources {
            vcpus: self.cpus,
            memory_mb: self.memory_mb,
            disk_gb: 0,
        }
    }

    pub fn validate(&self) -> Result<(), ApplyError> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(ApplyError::invalid(
                "empty command: give the program to run after --",
            ));
        }
        if self.command.len() > MAX_TASK_ARGS {
            return Err(ApplyError::invalid(format!(
                "too many arguments: {} (at most {MAX_TASK_ARGS})",
                self.command.len()
            )));
        }
        let bytes: usize = self.command.iter().map(|a| a.len()).sum();
        if bytes > MAX_TASK_COMMAND_BYTES {
            return Err(ApplyError::invalid(format!(
                "command too long: {bytes} bytes (at most {MAX_TASK_COMMAND_BYTES})"
            )));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(ApplyError::invalid(
                "command arguments may not contain NUL bytes",
            ));
        }
        if self.env.len() > MAX_TASK_ENV {
            return Err(ApplyError::invalid(format!(
                "too many environment variables: {} (at most {MAX_TASK_ENV})",
                self.env.len()
            )));
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if env_bytes > MAX_TASK_ENV_BYTES {
            return Err(ApplyError::invalid(format!(
                "environment too large: {env_bytes} bytes (at most {MAX_TASK_ENV_BYTES})"
            )));
        }
        for (k, v) in &self.env {
            let ok = !k.is_empty()
                && !k.as_bytes()[0].is_ascii_digit()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(ApplyError::invalid(format!(
                    "invalid environment variable name '{}': use letters, digits and '_', not starting with a digit",
                    k.chars().take(64).collect::<String>()
                )));
            }
            if v.contains('\0') {
                return Err(ApplyError::invalid(format!(
                    "environment variable {k} contains a NUL byte"
                )));
            }
        }
        if self.cpus == 0 || self.cpus > MAX_VCPUS {
            return Err(ApplyError::invalid(format!(
                "--cpus must be 1 to {MAX_VCPUS}"
            )));
        }
        if self.memory_mb > MAX_MEMORY_MB {
            return Err(ApplyError::invalid(format!(
                "--memory must be at most {MAX_MEMORY_MB} MiB"
            )));
        }
        if self.timeout_secs == 0 || self.timeout_secs > MAX_TASK_TIMEOUT_SECS {
            return Err(ApplyError::invalid(format!(
                "--timeout must be 1 to {MAX_TASK_TIMEOUT_SECS} seconds"
            )));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(ApplyError::invalid(format!(
                "max attempts must be 1 to {MAX_ATTEMPTS}"
            )));
        }
        Ok(())
    }
}

/// Checks a task id: 1 to 64 characters of a-z, 0-9 and '-' (a UUID fits).
pub fn validate_task_id(id: &str) -> Result<(), ApplyError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_TASK_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApplyError::invalid(format!(
            "invalid task id '{}': use 1 to {MAX_TASK_ID_LEN} characters of a-z, 0-9 and '-'",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum TaskState {
    /// Waiting for a node, or assigned and not started yet.
    Pending,
    Running,
    Succeeded,
    Failed,
    #[cfg_attr(feature = "clap", value(name = "timed_out"))]
    TimedOut,
    Cancelled,
    /// Its node went down and no attempt was left.
    Lost,
}

impl TaskState {
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "timed_out" => TaskState::TimedOut,
            "cancelled" => TaskState::Cancelled,
            "lost" => TaskState::Lost,
            _ => return None,
        })
    }

    pub fn is_finished(&self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Running)
    }

    /// The states an executor may report as a result.
    pub fn is_result(&self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::TimedOut | TaskState::Cancelled
        )
    }
}

/// A task as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub spec: TaskSpec,
    /// The node of the current attempt; `None` while waiting for one (and after a node loss
    /// with no attempt left).
    pub node_id: Option<NodeId>,
    pub state: TaskState,
    /// Assignments so far (1 for the first run).
    pub attempt: u32,
    /// Log index of the current assignment; results carrying another are refused.
    pub epoch: u64,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<u64>,
    pub reason: Option<String>,
    /// Cancel asked for while assigned: the node stops it and reports `cancelled`.
    #[serde(default)]
    pub cancel_requested: bool,
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// Log index that finished it (retention order).
    pub finished_index: Option<u64>,
    pub updated_ms: u64,
    /// Who submitted it (the client's name; see [`crate::auth`]).
    #[serde(default)]
    pub created_by: Option<String>,
}

/// Clips a reason to [`MAX_REASON_LEN`] bytes on a character boundary.
pub fn clip_reason(s: &str) -> String {
    if s.len() <= MAX_REASON_LEN {
        return s.to_string();
    }
    let mut end = MAX_REASON_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
