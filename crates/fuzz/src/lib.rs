//! Decoders never panic: the fuzz targets of blixard, on the stable toolchain.
//!
//! Each target takes raw bytes and runs one decoding entry point the way the daemon or the CLI
//! runs it on bytes from the network or the disk, then what the code does next with a decoded
//! value (the peer-claim checks, `apply` for a proposed request, the JSON rendering of a
//! reply). A target returns `Err` for input it refuses; it must never panic. The tests in
//! `tests/decoders.rs` replay the corpus in `fuzz/corpus/<target>/` (valid encodings made by
//! [`seeds`], plus inputs that once mattered) and run a bounded number of random and mutated
//! inputs on every test run.
//!
//! # Where things are
//!
//! - this file: the target list ([`TARGETS`]) and the base state the targets apply to;
//! - `peer`: the peer-path targets (Raft messages, snapshot streams and data, state rows, log
//!   entries);
//! - `client`: the client-path targets ([`CLIENT`]: every request and reply message) and the
//!   files the CLI and the node read (join tokens, credentials, identities, the lease);
//! - `seeds`: valid inputs of each target ([`seeds`], the corpus seeds);
//! - `refused`: inputs each target must refuse ([`refused`]).

#![allow(
    clippy::cast_possible_truncation,
    reason = "byte-level encoders for fuzz inputs narrow on purpose (lengths capped, 6-bit groups)"
)]

use std::sync::OnceLock;

use blixard_core::{ClusterState, Command, Request, Resources, TaskSpec, VmSpec};
use blixard_raft::TypeConfig;

mod client;
mod peer;
mod refused;
mod seeds;

pub use client::{client_pb, credentials, identity_der, join_token, lease, CLIENT};
pub use peer::{
    frame_rows, log_entry, peer_json, raft_message, snapshot_data, snapshot_stream, state_rows,
};
pub use refused::refused;
pub use seeds::seeds;

pub(crate) type C = TypeConfig;

/// A fuzz target: `Err` is a clean refusal; a panic is a bug.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("raft_message", raft_message),
    ("snapshot_stream", snapshot_stream),
    ("snapshot_data", snapshot_data),
    ("state_rows", state_rows),
    ("log_entry", log_entry),
    ("client_pb", client_pb),
    ("join_token", join_token),
    ("credentials", credentials),
    ("identity_der", identity_der),
    ("lease", lease),
];

pub(crate) fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A small applied state that decoded requests are applied to.
pub(crate) fn base_state() -> &'static ClusterState {
    static BASE: OnceLock<ClusterState> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut st = ClusterState::default();
        let mut index = 0;
        for c in base_commands() {
            index += 1;
            let _ = st.apply(index, &Request::new(c, index * 1000));
        }
        st
    })
}

pub(crate) fn base_commands() -> Vec<Command> {
    let mut vm = VmSpec::new("web-1");
    vm.labels.insert("tier".into(), "web".into());
    vec![
        Command::RegisterWorker {
            id: 1,
            addr: "127.0.0.1:7001".into(),
            capacity: Resources::new(8, 8192, 100),
            kvm: false,
            labels: Default::default(),
        },
        Command::RegisterWorker {
            id: 2,
            addr: "127.0.0.1:7002".into(),
            capacity: Resources::new(4, 4096, 50),
            kvm: true,
            labels: Default::default(),
        },
        Command::CreateNetwork {
            name: "default".into(),
            cidr: "10.89.0.0/16".into(),
        },
        Command::CreateVm { spec: vm },
        Command::SubmitTask {
            id: "t-1".into(),
            spec: TaskSpec::new(vec!["echo".into(), "hi".into()]),
        },
    ]
}
