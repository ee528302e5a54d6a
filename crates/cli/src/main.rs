//! `blixard`: the daemon (`blixard node --id ...`) and the command-line client.
//!
//! This file only dispatches: the command line is declared in [`args`], the daemon's flags and
//! start-up in [`daemon`] (the daemon itself lives in `blixard-node`), the client commands in
//! [`client`] (and [`auth`], [`network`], [`console`], [`bench`]), and printing in [`output`].

mod args;
mod auth;
mod bench;
mod client;
mod console;
mod daemon;
mod duration;
mod extras;
mod network;
mod output;
mod transport;

use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;

use args::*;
use daemon::{init_logging, run_daemon};

/// `blixard ... | head -1`: once the reader is gone, printing fails with a broken pipe, which
/// `println!` turns into a panic. That is not an error of ours: end quietly, as `cat` does.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    // The workload supervisor (`blixard supervise ...`, started by the daemon, hidden): plain
    // synchronous code, before any runtime or logging is set up.
    if std::env::args_os().nth(1).is_some_and(|a| a == "supervise") {
        let code = blixard_vmm::supervisor::main(std::env::args_os().skip(1).collect());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    quiet_on_broken_pipe();
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return output::usage_error(e),
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return output::usage_error(e),
    };
    // The daemon's flags, to tell which were given (they win over its --config file).
    let node_matches = matches.subcommand_matches("node").cloned();
    let daemon = matches!(&cli.command, Cmd::Node { sub: None, .. } | Cmd::Workload);
    init_logging(daemon);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    client::set_credentials(cli.credentials.clone());
    transport::set_timeout(cli.timeout);
    let res = rt.block_on(async move {
        let c = client::Client::new(cli.addr.clone(), cli.json);
        match cli.command {
            Cmd::Node { sub: None, daemon } => {
                match daemon::config_file::with_file(daemon, node_matches.as_ref()) {
                    Ok(daemon) => run_daemon(daemon).await,
                    Err(e) => Err(e),
                }
            }
            Cmd::Bench {
                sub: BenchCmd::Boot { runs, memory },
            } => bench::boot(cli.addr.clone(), runs.max(1), memory, cli.json).await,
            Cmd::Bench {
                sub:
                    BenchCmd::Writes {
                        clients,
                        duration,
                        addrs,
                        leader,
                    },
            } => {
                let addrs = if addrs.is_empty() {
                    vec![cli.addr.clone()]
                } else {
                    addrs
                };
                bench::writes(bench::Params {
                    addrs,
                    clients,
                    duration: Duration::from_secs(duration),
                    json: cli.json,
                    leader_only: leader,
                    op: bench::Op::Write,
                })
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Reads {
                        clients,
                        duration,
                        addrs,
                        leader,
                        stale,
                    },
            } => {
                let addrs = if addrs.is_empty() {
                    vec![cli.addr.clone()]
                } else {
                    addrs
                };
                bench::writes(bench::Params {
                    addrs,
                    clients,
                    duration: Duration::from_secs(duration),
                    json: cli.json,
                    leader_only: leader,
                    op: bench::Op::Read { stale },
                })
                .await
            }
            Cmd::Bench {
                sub: BenchCmd::Failover { trials, node_args },
            } => {
                bench::suite::interruptible(bench::suite::failover(
                    trials.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Memory {
                        records,
                        clients,
                        node_args,
                    },
            } => {
                bench::suite::interruptible(bench::suite::memory(
                    records,
                    clients.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Catchup {
                        records,
                        clients,
                        node_args,
                    },
            } => {
                bench::suite::interruptible(bench::suite::catchup(
                    records,
                    clients.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Creates {
                        count,
                        clients,
                        node_args,
                    },
            } => {
                bench::suite::interruptible(bench::suite::creates(
                    count.max(1),
                    clients.max(1),
                    node_args,
                    cli.json,
                ))
                .await
            }
            Cmd::Bench {
                sub:
                    BenchCmd::Scale {
                        nodes,
                        voters,
                        vms,
                        clients,
                        parallel,
                        idle,
                        strategy,
                        node_threads,
                        node_args,
                    },
            } => {
                bench::suite::interruptible(bench::scale::scale(bench::scale::Params {
                    sizes: nodes,
                    voters,
                    vms,
                    clients: clients.max(1),
                    parallel: parallel.max(1),
                    idle: Duration::from_secs(idle),
                    strategy,
                    node_threads,
                    node_args,
                    json: cli.json,
                }))
                .await
            }
            Cmd::Dashboard => c.dashboard().await,
            Cmd::Version => {
                extras::version(cli.json);
                Ok(())
            }
            Cmd::Completions { shell } => {
                extras::completions(shell, Cli::command());
                Ok(())
            }
            Cmd::Events { since, follow } => c.events(since, follow).await,
            Cmd::Workload => blixard_vmm::idle_workload()
                .await
                .map_err(anyhow::Error::from),
            Cmd::Node { sub: Some(s), .. } => match s {
                NodeCmd::List { stale } => c.node_list(stale).await,
                NodeCmd::Drain {
                    id,
                    timeout,
                    no_wait,
                } => c.node_drain(id, timeout, no_wait).await,
                NodeCmd::Undrain { id } => c.node_set_state(id, "up").await,
            },
            Cmd::Cluster { sub } => match sub {
                ClusterCmd::Status { stale } => c.cluster_status(stale).await,
                // The --force guards are the node's (blixard_core::guards), for every client.
                ClusterCmd::Remove { id, force } => c.cluster_remove(id, force).await,
                ClusterCmd::Leave { force } => c.cluster_leave(force).await,
                ClusterCmd::Settings {
                    strategy,
                    vcpu_overcommit,
                    lease_ms,
                    grace_ms,
                    heartbeat_ms,
                } => {
                    c.cluster_settings(
                        strategy,
                        vcpu_overcommit,
                        [lease_ms, grace_ms, heartbeat_ms],
                    )
                    .await
                }
                ClusterCmd::Token {
                    sub: TokenCmd::Create { ttl },
                } => c.token_create(ttl).await,
                ClusterCmd::Token {
                    sub: TokenCmd::List,
                } => c.token_list().await,
                ClusterCmd::Token {
                    sub: TokenCmd::Revoke { id },
                } => c.token_revoke(&id).await,
            },
            Cmd::Network { sub } => network::run(&c, sub).await,
            Cmd::Auth { sub } => auth::run(&c, sub).await,
            Cmd::Task { sub } => match sub {
                TaskCmd::Submit(args) => c.task_submit(args).await,
                TaskCmd::Status { id, stale } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_status(&id, stale).await
                }
                TaskCmd::List { stale, state, node } => c.task_list(stale, state, node).await,
                TaskCmd::Wait { id, timeout } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_wait(&id, timeout).await
                }
                TaskCmd::Logs { id, tail } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_logs(&id, tail).await
                }
                TaskCmd::Cancel { id } => {
                    let id = extras::resolve_task_id(&c, &id).await?;
                    c.task_cancel(&id).await
                }
            },
            Cmd::Vm { sub } => match sub {
                VmCmd::Create(args) => c.vm_create(args).await,
                VmCmd::Start { name } => c.vm_set_desired(&name, "running").await,
                VmCmd::Stop { name } => c.vm_set_desired(&name, "stopped").await,
                VmCmd::Restart { name, timeout } => c.vm_restart(&name, timeout).await,
                VmCmd::Delete { name, force } => c.vm_delete(&name, force).await,
                VmCmd::Logs {
                    name,
                    tail,
                    follow,
                    previous,
                } => c.vm_logs(&name, follow, previous, tail).await,
                VmCmd::Status { name, stale } => c.vm_status(&name, stale).await,
                VmCmd::Console(a) => console::run(&c.addr, a).await,
                VmCmd::List { stale, filter } => c.vm_list(stale, &filter).await,
                VmCmd::Wait {
                    name,
                    state,
                    timeout,
                } => c.vm_wait(&name, state, timeout).await,
            },
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Whatever the message echoes (a name typed with terminal escapes...), control
            // characters are printed escaped.
            let msg: String = format!("{e:#}")
                .chars()
                .flat_map(|c| match c {
                    '\n' | '\t' => vec![c],
                    c if c.is_control() => c.escape_default().collect(),
                    c => vec![c],
                })
                .collect();
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
