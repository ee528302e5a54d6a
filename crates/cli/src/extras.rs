//! Smaller client conveniences: `version`, `completions`, list filters, `--tail`, task-id
//! prefixes and the human `vm status` details (the `--force` guards of destructive commands are
//! the node's: `blixard_core::guards`).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::bail;
use blixard_api::pb;

use crate::client::{status_err, Client};
use crate::output;

/// `blixard version`: the package version and the commit it was built from (`unknown` when
/// it was built outside a git checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("BLIXARD_GIT_COMMIT");
/// What `--version` and `version` print after the name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BLIXARD_GIT_COMMIT"),
    ")"
);

pub fn version(json: bool) {
    if json {
        output::print_json(&serde_json::json!({"version": VERSION, "commit": COMMIT}));
    } else {
        println!("blixard {LONG_VERSION}");
    }
}

/// `blixard completions SHELL`: the completion script for SHELL on stdout.
pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command) {
    let mut out = std::io::stdout();
    clap_complete::generate(shell, &mut cmd, "blixard", &mut out);
    let _ = out.flush();
}

/// `vm list` filters; all given ones must match.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct VmFilter {
    /// Only VMs placed on this node.
    #[arg(long)]
    pub node: Option<u64>,
    /// Only VMs with this label, KEY=VALUE (repeatable: all must match).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Only VMs in this state.
    #[arg(long)]
    pub state: Option<blixard_core::VmState>,
}

impl VmFilter {
    /// Checks the filter's values; the parsed labels.
    pub fn parsed(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.labels
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => bail!("--label '{}' must be KEY=VALUE", output::clean(l)),
            })
            .collect()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>, v: &pb::VmInfo) -> bool {
        self.node.is_none_or(|n| v.node_id == Some(n))
            && self.state.is_none_or(|s| v.state == s.as_str())
            && labels.iter().all(|(k, want)| v.labels.get(k) == Some(want))
    }
}

/// The last `n` lines of `data` (all of it when it has fewer).
pub fn tail_lines(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    // A final newline ends the last line; it does not start another.
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, &b) in body.iter().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

/// A full task id from an id or a unique prefix of one.
pub async fn resolve_task_id(c: &Client, id: &str) -> anyhow::Result<String> {
    if uuid::Uuid::parse_str(id).is_ok() {
        return Ok(id.to_string());
    }
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        // Not the start of any id: the node says it is not found.
        return Ok(id.to_string());
    }
    let mut api = blixard_api::BlixardClient::new(c.channel().await?);
    let mut matching = Vec::new();
    let mut after = String::new();
    loop {
        let r = api
            .list_tasks(pb::ListTasksRequest {
                stale: false,
                state: String::new(),
                node: None,
                limit: 0,
                after: after.clone(),
            })
            .await
            .map_err(|e| status_err(&c.addr, e))?
            .into_inner();
        matching.extend(
            r.tasks
                .into_iter()
                .map(|t| t.id)
                .filter(|t| t.starts_with(id)),
        );
        if r.next.is_empty() {
            break;
        }
        after = r.next;
    }
    match matching.len() {
        1 => Ok(matching.remove(0)),
        0 => bail!("no task id starts with '{id}' (see `blixard task list`)"),
        n => bail!(
            "'{id}' is ambiguous: {n} task ids start with it ({}); give more characters",
            matching
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The lines `vm status` prints under the table (people only).
pub fn vm_details(vm: &pb::VmInfo, now_ms: u64) -> Vec<String> {
    let mut l = Vec::new();
    let labels = if vm.labels.is_empty() {
        "-".to_string()
    } else {
        vm.labels
            .iter()
            .map(|(k, v)| format!("{}={}", output::clean(k), output::clean(v)))
            .collect::<Vec<_>>()
            .join(",")
    };
    l.push(format!("labels: {labels}"));
    l.push(format!(
        "restart policy: {}  restarts: {}",
        vm.restart, vm.restarts
    ));
    l.push(format!("disk: {} GiB", vm.disk_gb));
    l.push(format!(
        "address: {}{}",
        vm.ip.as_deref().unwrap_or("-"),
        vm.network
            .as_deref()
            .map(|n| format!(" (network {})", output::clean(n)))
            .unwrap_or_default()
    ));
    if vm.updated_ms > 0 && now_ms >= vm.updated_ms {
        let what = if vm.state == "running" {
            "uptime"
        } else {
            "in this state for"
        };
        l.push(format!(
            "{what}: {}",
            human_duration((now_ms - vm.updated_ms) / 1000)
        ));
    }
    l
}

/// `93784` -> `1d 2h 3m 4s` (leading zero units left out).
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = Vec::new();
    if d > 0 {
        out.push(format!("{d}d"));
    }
    if d > 0 || h > 0 {
        out.push(format!("{h}h"));
    }
    if d > 0 || h > 0 || m > 0 {
        out.push(format!("{m}m"));
    }
    out.push(format!("{s}s"));
    out.join(" ")
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One status line on stderr, rewritten in place, only when stderr is a terminal.
pub struct Progress {
    on: bool,
    shown: bool,
}

impl Progress {
    pub fn new(wanted: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            on: wanted && std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    pub fn show(&mut self, line: &str) {
        if self.on {
            // \r and "clear to end of line": the terminal is known to be one.
            eprint!("\r\x1b[K{line}");
            self.shown = true;
        }
    }

    pub fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

/// `vm wait`'s progress line: state, node and why it is not there yet.
pub fn vm_progress_line(vm: &pb::VmInfo) -> String {
    let mut line = format!(
        "VM {}: {} on node {}",
        output::clean(&vm.name),
        vm.state,
        output::opt(vm.node_id)
    );
    if let Some(r) = &vm.reason {
        line.push_str(" - ");
        line.push_str(&output::clean(r).chars().take(100).collect::<String>());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_keeps_the_last_lines() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
        assert_eq!(tail_lines(b"", 3), b"");
        assert_eq!(tail_lines(b"\n\n", 1), b"\n");
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(61), "1m 1s");
        assert_eq!(human_duration(3600), "1h 0m 0s");
        assert_eq!(human_duration(93784), "1d 2h 3m 4s");
    }
}
