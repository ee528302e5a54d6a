//! Request bodies and query strings of the JSON API, with their OpenAPI schemas. Defaults are
//! the CLI's (`vm create`, `task submit`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Every error: what happened and what to do.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Serve from this node's applied state without confirming leadership.
    #[serde(default)]
    pub stale: bool,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    #[serde(default)]
    pub stale: bool,
    /// Only tasks in this state.
    pub state: Option<String>,
    /// Only tasks on this node.
    pub node: Option<u64>,
}

/// `force=true`: go ahead with a destructive request the `--force` guards would refuse
/// (deleting a running VM, removing the leader, leaving fewer than three voters).
#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VmLogsQuery {
    /// The console of the run before the last (re)start, instead.
    #[serde(default)]
    pub previous: bool,
}

#[derive(Deserialize, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this log index (default: every event kept).
    pub since: Option<u64>,
    /// The bearer token, for browsers' `EventSource` (which cannot send headers).
    #[serde(default, rename = "token")]
    #[param(rename = "token")]
    pub _token: Option<String>,
    /// `false`: the events kept now, then the stream ends. Default: keep streaming.
    pub follow: Option<bool>,
}

/// `POST /v1/vms`: the spec, with the CLI's defaults (`vm create`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmBody {
    pub name: String,
    #[serde(default = "one")]
    #[schema(default = 1)]
    pub vcpus: u32,
    #[serde(default = "default_memory")]
    #[schema(default = 256)]
    pub memory_mb: u64,
    #[serde(default)]
    pub disk_gb: u64,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub disk_image: Option<String>,
    #[serde(default)]
    pub disk_readonly: bool,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    pub anti_affinity: Option<String>,
    pub node: Option<u64>,
    /// `never`, `on-failure` or `always`.
    #[serde(default = "default_restart")]
    #[schema(default = "on-failure")]
    pub restart: String,
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub start: bool,
    /// `binpack` or `spread` (default: the cluster's).
    pub strategy: Option<String>,
    #[serde(default)]
    pub constraints: HashMap<String, String>,
    #[serde(default)]
    pub features: Vec<String>,
    pub priority: Option<u32>,
    #[serde(default)]
    pub preempt: bool,
    /// Where it would go and why, changing nothing (`vm create --dry-run`).
    #[serde(default)]
    pub dry_run: bool,
    /// Retries with the same id are applied once.
    #[serde(default)]
    pub request_id: String,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_memory() -> u64 {
    256
}
fn default_restart() -> String {
    "on-failure".into()
}

/// `POST /v1/tasks`: as `task submit`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitTaskBody {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: HashMap<String, String>,
    #[serde(default = "one")]
    #[schema(default = 1)]
    pub cpus: u32,
    #[serde(default = "default_task_memory")]
    #[schema(default = 64)]
    pub memory_mb: u64,
    #[serde(default = "default_task_timeout")]
    pub timeout_secs: u64,
    pub node: Option<u64>,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub request_id: String,
}

fn default_task_memory() -> u64 {
    64
}
fn default_task_timeout() -> u64 {
    blixard_core::task::DEFAULT_TASK_TIMEOUT_SECS
}
fn default_attempts() -> u32 {
    blixard_core::task::DEFAULT_MAX_ATTEMPTS
}

/// `POST /v1/networks`: as `network create NAME --cidr CIDR`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkBody {
    pub name: String,
    /// A private IPv4 CIDR, e.g. 10.89.0.0/16.
    pub cidr: String,
    #[serde(default)]
    pub request_id: String,
}

/// `POST /v1/cluster/settings`: as `cluster settings`; a field left out keeps its value.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SettingsBody {
    /// `binpack` or `spread`.
    pub strategy: Option<String>,
    /// vCPU overcommit in percent (100: none).
    pub vcpu_overcommit_pct: Option<u32>,
    pub lease_ms: Option<u64>,
    pub grace_ms: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    #[serde(default)]
    pub request_id: String,
}
