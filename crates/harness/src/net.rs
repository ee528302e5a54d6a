//! Network namespaces, a bridge and iptables/tc faults, with cleanup on drop.
//!
//! Run `R` (a number 1..=250) owns namespaces `blx<R>-n<i>`, a bridge `blx<R>br` with address
//! `10.99.<R>.254/24`, veth pairs `blx<R>v<i>` (bridge side) / `blx<R>p<i>` (namespace side) and
//! node addresses `10.99.<R>.<i>` (i from 1). Nothing is routed anywhere else: the namespaces
//! have no default route, the bridge only carries that /24. A marker file
//! `/run/blixard-fault/<R>.pid` records the owning process so a later run can clean up the
//! leftovers of a run that died without cleaning up, without touching a live one.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

const MARKER_DIR: &str = "/run/blixard-fault";

/// Runs a command, failing with its stderr.
pub fn sh(argv: &[&str]) -> Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {argv:?}"))?;
    if !out.status.success() {
        bail!(
            "{argv:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command, ignoring failure (cleanup paths).
fn sh_quiet(argv: &[&str]) {
    let _ = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Fails with a clear message unless we are root and `ip netns`/`iptables` work.
pub fn preflight() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
        != 0
    {
        bail!(
            "the fault harness needs root (network namespaces, iptables); run it as root (CI does)"
        );
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("the fault harness needs `{tool}` (iproute2 / iptables) on PATH");
        }
    }
    sh(&["ip", "netns", "list"]).context("`ip netns` is unavailable")?;
    Ok(())
}

/// Alive and not a zombie (a harness killed with SIGKILL may linger unreaped).
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

fn marker(run: u8) -> PathBuf {
    PathBuf::from(MARKER_DIR).join(format!("{run}.pid"))
}

/// Removes namespaces, links and markers of earlier runs whose owner process is gone.
pub fn clean_stale() {
    let mut runs = std::collections::BTreeSet::new();
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(r) = name
                .strip_prefix("blx")
                .and_then(|s| s.split_once("-n"))
                .and_then(|(r, _)| r.parse::<u8>().ok())
            {
                runs.insert(r);
            }
        }
    }
    if let Ok(links) = sh(&["ip", "-o", "link", "show"]) {
        for line in links.lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if let Some(r) = name
                .strip_prefix("blx")
                .and_then(|s| s.strip_suffix("br"))
                .and_then(|r| r.parse::<u8>().ok())
            {
                runs.insert(r);
            }
        }
    }
    for r in runs {
        let owner = std::fs::read_to_string(marker(r))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if owner.is_some_and(pid_alive) {
            continue;
        }
        eprintln!("fault: cleaning up leftovers of run {r}");
        teardown(r, 16);
    }
}

fn ns_name(run: u8, i: usize) -> String {
    format!("blx{run}-n{i}")
}

/// Kills every process in the namespaces and deletes namespaces, veths, the bridge, the marker.
fn teardown(run: u8, max_nodes: usize) {
    for i in 1..=max_nodes {
        let ns = ns_name(run, i);
        if let Ok(pids) = sh(&["ip", "netns", "pids", &ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGCONT,
                );
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            sh_quiet(&["ip", "netns", "del", &ns]);
        }
        sh_quiet(&["ip", "link", "del", &format!("blx{run}v{i}")]);
    }
    sh_quiet(&["ip", "link", "del", &format!("blx{run}br")]);
    let _ = std::fs::remove_file(marker(run));
}

/// The namespaces and bridge of one run. Dropping it removes everything.
pub struct Net {
    pub run: u8,
    pub nodes: usize,
    netem: Option<bool>,
}

impl Net {
    /// Picks a free run number and creates `nodes` namespaces (plus `spare` for later joins).
    pub fn create(nodes: usize) -> Result<Net> {
        preflight()?;
        clean_stale();
        std::fs::create_dir_all(MARKER_DIR)?;
        let start = (std::process::id() % 200) as u8;
        let mut chosen = None;
        for k in 0..250u16 {
            let r = u8::try_from((u16::from(start) + k) % 250 + 1).expect("at most 250");
            let m = marker(r);
            if m.exists() || PathBuf::from(format!("/var/run/netns/{}", ns_name(r, 1))).exists() {
                continue;
            }
            // create_new: two harness processes never pick the same number.
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&m)
                .is_ok()
            {
                std::fs::write(&m, std::process::id().to_string())?;
                chosen = Some(r);
                break;
            }
        }
        let run = chosen.context("no free run number in 1..=250")?;
        let net = Net {
            run,
            nodes,
            netem: None,
        };
        net.setup().context("setting up namespaces")?;
        Ok(net)
    }

    fn setup(&self) -> Result<()> {
        let r = self.run;
        let br = format!("blx{r}br");
        sh(&["ip", "link", "add", &br, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.99.{r}.254/24"),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        for i in 1..=self.nodes {
            let ns = ns_name(r, i);
            let (v, p) = (format!("blx{r}v{i}"), format!("blx{r}p{i}"));
            sh(&["ip", "netns", "add", &ns])?;
            sh(&["ip", "link", "add", &v, "type", "veth", "peer", "name", &p])?;
            sh(&["ip", "link", "set", &p, "netns", &ns])?;
            sh(&["ip", "link", "set", &v, "master", &br])?;
            sh(&["ip", "link", "set", &v, "up"])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", self.ip(i)),
                "dev",
                &p,
            ])?;
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &p, "up"])?;
            sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn ns(&self, i: usize) -> String {
        ns_name(self.run, i)
    }

    pub fn ip(&self, i: usize) -> String {
        format!("10.99.{}.{i}", self.run)
    }

    /// Cuts node `i` off from the nodes in `others` (both directions, via iptables DROP inside
    /// the namespaces). Clients on the bridge still reach every node.
    pub fn cut(&self, i: usize, others: &[usize]) -> Result<()> {
        for &j in others {
            for (a, b) in [(i, j), (j, i)] {
                let ns = self.ns(a);
                let peer = self.ip(b);
                sh(&[
                    "ip", "netns", "exec", &ns, "iptables", "-w", "-A", "INPUT", "-s", &peer, "-j",
                    "DROP",
                ])?;
                sh(&[
                    "ip", "netns", "exec", &ns, "iptables", "-w", "-A", "OUTPUT", "-d", &peer,
                    "-j", "DROP",
                ])?;
            }
        }
        Ok(())
    }

    /// Whether `tc qdisc ... netem` works on this kernel (checked once).
    pub fn netem_supported(&mut self) -> bool {
        if let Some(s) = self.netem {
            return s;
        }
        let ns = self.ns(1);
        let dev = format!("blx{}p1", self.run);
        let ok = sh(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &dev, "root", "netem",
            "delay", "1ms",
        ])
        .is_ok();
        sh_quiet(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "del", "dev", &dev, "root",
        ]);
        self.netem = Some(ok);
        ok
    }

    /// Adds delay and loss on node `i`'s link.
    pub fn netem(&self, i: usize, delay_ms: u64, loss_pct: u64) -> Result<()> {
        let dev = format!("blx{}p{i}", self.run);
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns(i),
            "tc",
            "qdisc",
            "add",
            "dev",
            &dev,
            "root",
            "netem",
            "delay",
            &format!("{delay_ms}ms"),
            "loss",
            &format!("{loss_pct}%"),
        ])?;
        Ok(())
    }

    /// Removes every iptables rule and qdisc this harness added.
    pub fn heal(&self) {
        for i in 1..=self.nodes {
            let ns = self.ns(i);
            sh_quiet(&["ip", "netns", "exec", &ns, "iptables", "-w", "-F"]);
            sh_quiet(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "tc",
                "qdisc",
                "del",
                "dev",
                &format!("blx{}p{i}", self.run),
                "root",
            ]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        teardown(self.run, self.nodes);
    }
}
