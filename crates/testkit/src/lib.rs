//! The test kit of blixard: the fixtures every test suite shares, so that each is written once.
//!
//! - [`process`]: one `blixard node` daemon as a child process (start, freeze, signal, kill).
//!   The one process layer under both cluster fixtures: the CLI tests' [`cluster::Cluster`]
//!   below and the fault harness's namespaced cluster (`blixard-harness`).
//! - [`cluster`]: the process-cluster fixture of the CLI tests (127.0.0.1, OS-chosen ports,
//!   secure like any cluster, everything killed on drop), with [`cli`] to drive it through the
//!   real CLI and [`tls`] for tests that speak gRPC themselves.
//! - [`apply`]: the apply fixture, a state machine driven through `apply` with the invariants
//!   and "a refusal changes nothing" checked after every command.
//! - [`never_twice`]: the never-ran-twice checker over the workloads' start/stop records, with
//!   the one rule every suite uses (any overlap of two runs of one name fails).
//!
//! Dev-only: a dependency of tests and of the fault harness, never of the daemon.

pub mod apply;
pub mod cli;
pub mod cluster;
pub mod never_twice;
pub mod process;
pub mod tls;

pub use cli::{
    credentials_for, join_token, json, register_credentials, run_cli, run_cli_with, try_json,
    wait_for, DEADLINE,
};
pub use cluster::{pid_alive, Cluster, TestNode, FAST_LIVENESS};
pub use tls::{
    api_client, credentials_material, make_credentials, node_material, peer_client, tls_channel,
};
