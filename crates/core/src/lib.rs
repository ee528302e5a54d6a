//! The pure core of blixard.
//!
//! Everything that decides *what the cluster state is* lives here, and nothing else does:
//! ids and limits ([`spec`]), the Raft log payload ([`command`]), the replicated state and its
//! deterministic `apply` ([`state`]), and placement ([`scheduler`]).
//!
//! This crate does no I/O: no tokio, no database, no clock, no randomness. Time is stamped into
//! every [`command::Request`] by the proposer, and the log index that made a placement is passed
//! into `apply`, so that every node applying the same log reaches the same state bit for bit.

pub mod auth;
pub mod budget;
pub mod command;
pub mod events;
pub mod guards;
pub mod liveness;
pub mod model;
pub mod network;
pub mod planner;
pub mod scheduler;
pub mod spec;
pub mod state;
pub mod task;
pub mod tokens;

pub use command::{ApplyError, Command, Outcome, Reply, Request};
pub use events::{Event, EventKind, EventSource};
pub use liveness::LivenessSettings;
pub use network::{Cidr, Lease, Network};
pub use scheduler::{NodeVerdict, Placement, SchedulerSettings};
pub use spec::{NodeId, Resources, RestartPolicy, Strategy, VmSpec};
pub use state::{explain, ClusterState, Desired, NodeState, RowKey, VmRecord, VmState, Worker};
pub use task::{TaskRecord, TaskSpec, TaskState};
