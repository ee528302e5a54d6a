//! The CLI tests' fixtures, from the shared test kit (`crates/testkit`): the process cluster,
//! CLI helpers and TLS clients. Kept as a module so every test file says `mod common;` and
//! `common::Cluster`, `run_cli`, `json`, `wait_for`, ... as before.
#![allow(dead_code, unused_imports)]

pub use blixard_testkit::*;

/// The binary under test (cargo builds it before the package's integration tests).
pub const BIN: &str = env!("CARGO_BIN_EXE_blixard");
