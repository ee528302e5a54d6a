//! The daemon's configuration file: `blixard node --config FILE`.
//!
//! A TOML file whose keys are the daemon's flags without their dashes (`data-dir = "..."`,
//! `vcpus = 4`, `[labels] zone = "a"`). A flag given on the command line wins over the file;
//! labels are merged key by key (the command line's win). An unknown key, or a value of the
//! wrong type, is an error naming the file, line and key; nothing starts. The result is
//! checked like flags are, by `NodeConfig::validate`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

use super::DaemonArgs;

/// Every key the file may hold: one per daemon flag (milliseconds and seconds as integers).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DaemonFile {
    id: Option<u64>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    init: Option<bool>,
    join: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    driver: Option<String>,
    target_voters: Option<usize>,
    vcpus: Option<u32>,
    memory_mb: Option<u64>,
    disk_gb: Option<u64>,
    labels: Option<BTreeMap<String, String>>,
    heartbeat_ms: Option<u64>,
    election_ms: Option<u64>,
    snapshot_every: Option<u64>,
    keep_logs: Option<u64>,
    liveness_heartbeat_ms: Option<u64>,
    lease_ms: Option<u64>,
    grace_ms: Option<u64>,
    replace_voter_after: Option<u64>,
    http: Option<SocketAddr>,
    drain_parallelism: Option<usize>,
    network_cidr: Option<String>,
    no_host_network: Option<bool>,
    image_dirs: Option<Vec<PathBuf>>,
    task_user: Option<String>,
}

impl DaemonFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow!("config file {}: {e}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
}

/// `a` with the values of its `--config` file (if any) for every flag not given on the command
/// line (`matches`: the `node` subcommand's).
pub fn with_file(mut a: DaemonArgs, matches: Option<&ArgMatches>) -> anyhow::Result<DaemonArgs> {
    if let Some(path) = a.config.clone() {
        let f = DaemonFile::load(&path)?;
        apply(&mut a, f, &|id| {
            matches
                .and_then(|m| m.value_source(id))
                .is_some_and(|s| s != ValueSource::DefaultValue)
        })?;
    }
    check(&a)?;
    Ok(a)
}

/// Fills `a` from `f` where `given(flag id)` says the command line did not set it.
fn apply(a: &mut DaemonArgs, f: DaemonFile, given: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    // `a.x: Option<T>` and `a.x: T` fields.
    macro_rules! opt {
        ($($field:ident),*) => {$(
            if let Some(v) = f.$field {
                if !given(stringify!($field)) {
                    a.$field = Some(v);
                }
            }
        )*};
    }
    macro_rules! val {
        ($($field:ident),*) => {$(
            if let Some(v) = f.$field {
                if !given(stringify!($field)) {
                    a.$field = v;
                }
            }
        )*};
    }
    // How the node enters its cluster is one setting: the command line's, when it says.
    let bootstrap_given = given("init") || given("join");
    if !bootstrap_given {
        opt!(join);
        val!(init);
    }
    if !(given("token") || given("token_file")) {
        opt!(token, token_file);
    }
    opt!(
        id,
        advertise,
        data_dir,
        vcpus,
        memory_mb,
        disk_gb,
        liveness_heartbeat_ms,
        lease_ms,
        grace_ms,
        http
    );
    val!(
        listen,
        driver,
        target_voters,
        heartbeat_ms,
        election_ms,
        snapshot_every,
        keep_logs,
        replace_voter_after,
        drain_parallelism,
        network_cidr,
        no_host_network,
        image_dirs,
        task_user
    );
    if let Some(labels) = f.labels {
        // The file's first: a command-line label of the same key replaces it.
        let mut merged: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        merged.append(&mut a.labels);
        a.labels = merged;
    }
    Ok(())
}

/// What the flags and the file must agree on, wherever each value came from.
fn check(a: &DaemonArgs) -> anyhow::Result<()> {
    if !["qemu", "process"].contains(&a.driver.as_str()) {
        bail!("driver must be qemu or process, got '{}'", a.driver);
    }
    if a.init && a.join.is_some() {
        bail!("init and join exclude each other (a node bootstraps a cluster or joins one)");
    }
    if (a.token.is_some() || a.token_file.is_some()) && a.join.is_none() {
        bail!("a join token (token, token-file) needs join");
    }
    if a.token.is_some() && a.token_file.is_some() {
        bail!("give the join token once: token or token-file");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn args(argv: &[&str]) -> (DaemonArgs, ArgMatches) {
        let mut full = vec!["blixard", "node"];
        full.extend_from_slice(argv);
        let m = crate::args::Cli::command().get_matches_from(full);
        let node = m.subcommand_matches("node").expect("node").clone();
        match crate::args::Cli::from_arg_matches(&m)
            .expect("parse")
            .command
        {
            crate::args::Cmd::Node { daemon, .. } => (daemon, node),
            _ => unreachable!(),
        }
    }

    fn merged(text: &str, argv: &[&str]) -> anyhow::Result<DaemonArgs> {
        let (mut a, m) = args(argv);
        let f = DaemonFile::parse(text).map_err(|e| anyhow!(e))?;
        apply(&mut a, f, &|id| {
            m.value_source(id)
                .is_some_and(|s| s != ValueSource::DefaultValue)
        })?;
        check(&a)?;
        Ok(a)
    }

    #[test]
    fn flags_win_over_the_file_and_labels_merge() {
        let file = r#"
            id = 4
            listen = "127.0.0.1:7100"
            data-dir = "/var/lib/blixard"
            init = true
            vcpus = 3
            heartbeat-ms = 80
            election-ms = 400
            driver = "process"
            [labels]
            zone = "a"
            rack = "r1"
        "#;
        let a = merged(file, &["--vcpus", "5", "--label", "zone=b"]).unwrap();
        assert_eq!(a.id, Some(4));
        assert_eq!(a.listen, "127.0.0.1:7100".parse().unwrap());
        assert_eq!(a.data_dir, Some(PathBuf::from("/var/lib/blixard")));
        assert!(a.init);
        assert_eq!(a.vcpus, Some(5), "the flag wins");
        assert_eq!((a.heartbeat_ms, a.election_ms), (80, 400));
        assert_eq!(a.driver, "process");
        let labels = super::super::parse_labels(&a.labels).unwrap();
        assert_eq!(labels["zone"], "b", "the flag's label wins");
        assert_eq!(labels["rack"], "r1");
        // A default the file does not set stays the default.
        assert_eq!(a.target_voters, 3);
        // The command line's bootstrap replaces the file's.
        let a = merged(file, &["--join", "10.0.0.1:7001"]).unwrap();
        assert!(!a.init && a.join.as_deref() == Some("10.0.0.1:7001"));
    }

    fn refused(r: anyhow::Result<DaemonArgs>) -> String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let e = refused(merged("id = 1\nvcpu = 4\n", &[]));
        assert!(e.contains("unknown field `vcpu`"), "{e}");
        let e = refused(merged("id = \"one\"\n", &[]));
        assert!(e.contains("id"), "{e}");
        let e = refused(merged("driver = \"xen\"\n", &[]));
        assert!(e.contains("qemu or process"), "{e}");
        let e = refused(merged("init = true\njoin = \"x:1\"\n", &[]));
        assert!(e.contains("exclude"), "{e}");
        let e = refused(merged("token = \"t\"\n", &[]));
        assert!(e.contains("needs join"), "{e}");
    }
}
