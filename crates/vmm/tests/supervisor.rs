//! The workload supervisor on its own, with real processes and no daemon: fencing on the
//! lease (expired, unreadable, malformed, another boot, revoked), a wall-clock independent
//! lease, survival of the process that launched it, its workload dying with it, and task
//! timeouts, cancellation, bounded output and exec failures.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blixard_vmm::rundir::{
    self, read_events, EventKind, EVENTS_FILE_ENV, EXIT_CODE, FENCED, LEASE_FILE_ENV, PID,
    STOP_REQUESTED, SUPERVISOR_PID,
};
use blixard_vmm::supervisor::{self, boottime_ms, write_lease, Spec, EXEC_FAILED, TIMED_OUT};
use common::{kill9, pid_alive, wait_for};

const T: Duration = Duration::from_secs(20);

/// A workload that prints a numbered line every 50 ms, forever.
fn ticker() -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done".into(),
    ]
}

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn run(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).expect("run dir");
        d
    }

    fn lease(&self) -> PathBuf {
        self.tmp.path().join("lease")
    }

    fn events(&self) -> PathBuf {
        self.tmp.path().join("events.log")
    }

    fn envs(&self, with_lease: bool) -> Vec<(String, String)> {
        let mut e = vec![(
            EVENTS_FILE_ENV.to_string(),
            self.events().display().to_string(),
        )];
        if with_lease {
            e.push((
                LEASE_FILE_ENV.to_string(),
                self.lease().display().to_string(),
            ));
        }
        e
    }

    async fn launch(&self, spec: &Spec, with_lease: bool) -> u32 {
        supervisor::launch(&common::supervisor(), spec, &self.envs(with_lease))
            .await
            .expect("launch");
        wait_pid(&spec.dir).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Supervisors first (their workloads die with them), then any workload left.
        for file in [SUPERVISOR_PID, PID] {
            let Ok(entries) = std::fs::read_dir(self.tmp.path()) else {
                return;
            };
            for e in entries.flatten() {
                if let Some(pid) = read_pid(&e.path().join(file)) {
                    if pid_alive(pid) {
                        kill9(pid);
                    }
                }
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn wait_pid(dir: &Path) -> u32 {
    let dir = dir.to_path_buf();
    wait_for(T, "the workload's pid", || {
        let p = read_pid(&dir.join(PID));
        async move { p }
    })
    .await
}

async fn wait_exit(dir: &Path) -> i32 {
    let dir = dir.to_path_buf();
    wait_for(T, "the supervisor to record the exit", || {
        let c = std::fs::read_to_string(dir.join(EXIT_CODE))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        async move { c }
    })
    .await
}

/// Waits until the workload printed at least `n` lines to `out`.
async fn wait_ticks(out: &Path, n: usize) {
    let out = out.to_path_buf();
    wait_for(T, &format!("{n} lines of output"), || {
        let lines = std::fs::read_to_string(&out)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        async move { (lines >= n).then_some(()) }
    })
    .await
}

fn now_ms() -> u64 {
    boottime_ms().expect("CLOCK_BOOTTIME")
}

/// The workload was killed, the reason recorded in `fenced` (containing `needle`), and the
/// events file has its start and stop.
async fn assert_fenced(f: &Fixture, dir: &Path, pid: u32, name: &str, needle: &str) {
    let code = wait_exit(dir).await;
    assert_eq!(code, 137, "killed by SIGKILL");
    assert!(!pid_alive(pid));
    let why = std::fs::read_to_string(dir.join(FENCED)).expect("fenced file");
    assert!(why.contains(needle), "fenced: {why}");
    let evs = read_events(&f.events()).expect("events");
    let mine: Vec<_> = evs.iter().filter(|e| e.name == name).collect();
    assert_eq!(
        mine.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Start, EventKind::Stop],
        "{evs:?}"
    );
}

#[tokio::test]
async fn an_expired_lease_kills_the_workload() {
    let f = Fixture::new();
    let dir = f.run("vm");
    write_lease(&f.lease(), now_ms() + 1500).expect("lease");
    let spec = Spec::vm(&dir, "vm", 3, "console.log", &ticker());
    let pid = f.launch(&spec, true).await;
    wait_ticks(&dir.join("console.log"), 2).await;
    // Nobody renews the lease: the supervisor fences on its own.
    assert_fenced(&f, &dir, pid, "vm", "expired").await;
}

#[tokio::test]
async fn an_unreadable_lease_kills_the_workload() {
    let f = Fixture::new();
    let dir = f.run("vm");
    write_lease(&f.lease(), now_ms() + 600_000).expect("lease");
    let pid = f
        .launch(&Spec::vm(&dir, "vm", 1, "console.log", &ticker()), true)
        .await;
    wait_ticks(&dir.join("console.log"), 2).await;
    assert!(pid_alive(pid));
    std::fs::remove_file(f.lease()).expect("remove lease");
    assert_fenced(&f, &dir, pid, "vm", "unreadable").await;
}

#[tokio::test]
async fn a_malformed_lease_kills_the_workload() {
    let f = Fixture::new();
    let dir = f.run("vm");
    write_lease(&f.lease(), now_ms() + 600_000).expect("lease");
    let pid = f
        .launch(&Spec::vm(&dir, "vm", 1, "console.log", &ticker()), true)
        .await;
    wait_ticks(&dir.join("console.log"), 2).await;
    // The old format (a wall-clock deadline alone), far in the future: not proof.
    std::fs::write(f.lease(), format!("{}", rundir::unix_ms() + 3_600_000)).expect("write");
    assert_fenced(&f, &dir, pid, "vm", "malformed").await;
}

#[tokio::test]
async fn a_lease_from_another_boot_kills_the_workload() {
    let f = Fixture::new();
    let dir = f.run("vm");
    write_lease(&f.lease(), now_ms() + 600_000).expect("lease");
    let pid = f
        .launch(&Spec::vm(&dir, "vm", 1, "console.log", &ticker()), true)
        .await;
    wait_ticks(&dir.join("console.log"), 2).await;
    let other = format!(
        "blixard-lease-v1 00000000-0000-0000-0000-000000000000 {}\n",
        now_ms() + 600_000
    );
    std::fs::write(f.lease(), other).expect("write");
    assert_fenced(&f, &dir, pid, "vm", "another boot").await;
}

#[tokio::test]
async fn a_revoked_lease_kills_the_workload_and_nothing_starts_without_a_lease() {
    let f = Fixture::new();
    let dir = f.run("vm");
    write_lease(&f.lease(), now_ms() + 600_000).expect("lease");
    let pid = f
        .launch(&Spec::vm(&dir, "vm", 1, "console.log", &ticker()), true)
        .await;
    wait_ticks(&dir.join("console.log"), 2).await;
    write_lease(&f.lease(), 0).expect("revoke");
    assert_fenced(&f, &dir, pid, "vm", "revoked").await;

    // With the lease revoked, a new workload is never started.
    let dir2 = f.run("vm2");
    supervisor::launch(
        &common::supervisor(),
        &Spec::vm(&dir2, "vm2", 1, "console.log", &ticker()),
        &f.envs(true),
    )
    .await
    .expect("launch");
    wait_exit(&dir2).await;
    assert!(!dir2.join(PID).exists(), "no workload was spawned");
    let why = std::fs::read_to_string(dir2.join(FENCED)).expect("fenced");
    assert!(why.contains("not started"), "{why}");
    let evs = read_events(&f.events()).expect("events");
    assert!(evs.iter().all(|e| e.name != "vm2"), "{evs:?}");
}

/// The lease has no wall-clock time in it: a deadline on CLOCK_BOOTTIME, which wall-clock
/// steps do not move. Here the deadline is valid on CLOCK_BOOTTIME but, read as Unix
/// milliseconds (what the old shell watchdog compared with `date`), decades in the past, and
/// the file's modification time is 1970: the workload keeps running while the supervisor
/// checks the lease again and again, and is fenced as soon as that deadline passes.
#[tokio::test]
async fn the_lease_ignores_wall_clock_time() {
    let f = Fixture::new();
    let dir = f.run("vm");
    let deadline = now_ms() + 4000;
    assert!(
        deadline < rundir::unix_ms(),
        "as wall-clock time the deadline is long past"
    );
    write_lease(&f.lease(), deadline).expect("lease");
    let file = std::fs::File::options()
        .write(true)
        .open(f.lease())
        .expect("open lease");
    file.set_modified(std::time::UNIX_EPOCH)
        .expect("set mtime to 1970");
    drop(file);
    let pid = f
        .launch(&Spec::vm(&dir, "vm", 1, "console.log", &ticker()), true)
        .await;
    // 10 lines at one per 50 ms: the supervisor (one check per 100 ms) looked several times.
    wait_ticks(&dir.join("console.log"), 10).await;
    if now_ms() + 200 < deadline {
        assert!(pid_alive(pid), "killed although the lease is valid");
        assert!(!dir.join(FENCED).exists());
    }
    assert_fenced(&f, &dir, pid, "vm", "expired").await;
    assert!(now_ms() >= deadline, "fenced only once the deadline passed");
}

/// The process that launched the supervisor (the daemon) dies: the supervisor keeps running,
/// keeps enforcing the lease, and still records the exit and the stop.
#[tokio::test]
async fn the_supervisor_outlives_the_daemon_and_keeps_fencing() {
    let f = Fixture::new();
    let dir = f.run("vm");
    write_lease(&f.lease(), now_ms() + 2500).expect("lease");
    let spec = Spec::vm(&dir, "vm", 9, "console.log", &ticker());
    // A stand-in daemon: launches the supervisor the way the drivers do, then idles.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("setsid -f \"$@\"; exec sleep 1000")
        .arg("daemon")
        .args(common::supervisor())
        .args(spec.to_args())
        .envs(f.envs(true))
        .current_dir(&dir);
    let mut daemon = cmd.spawn().expect("spawn daemon");
    let pid = wait_pid(&dir).await;
    let sup = read_pid(&dir.join(SUPERVISOR_PID)).expect("supervisor pid");
    daemon.kill().expect("kill -9 the daemon");
    daemon.wait().expect("reap the daemon");
    wait_ticks(&dir.join("console.log"), 2).await;
    assert!(pid_alive(sup), "the supervisor survived the daemon");
    assert_fenced(&f, &dir, pid, "vm", "expired").await;
}

#[tokio::test]
async fn the_workload_dies_with_its_supervisor() {
    let f = Fixture::new();
    let dir = f.run("vm");
    let pid = f
        .launch(&Spec::vm(&dir, "vm", 1, "console.log", &ticker()), false)
        .await;
    let starttime = rundir::process_starttime(pid).expect("workload alive");
    wait_ticks(&dir.join("console.log"), 2).await;
    let sup = read_pid(&dir.join(SUPERVISOR_PID)).expect("supervisor pid");
    kill9(sup);
    wait_for(
        T,
        "the workload to die with its supervisor",
        || async move { (!rundir::is_alive(pid, Some(starttime))).then_some(()) },
    )
    .await;
}

fn task_spec(dir: &Path, name: &str, argv: &[&str], timeout: Duration) -> Spec {
    Spec {
        dir: dir.join("run"),
        name: name.into(),
        epoch: 1,
        out: dir.join("output"),
        cwd: Some(dir.to_path_buf()),
        timeout: Some(timeout),
        output_limit: Some(1024),
        stop_kills: true,
        run_as: None,
        limits: None,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdin_fifo: None,
        stdout: None,
    }
}

#[tokio::test]
async fn a_task_timeout_is_enforced_by_the_supervisor_alone() {
    let f = Fixture::new();
    let dir = f.run("task");
    std::fs::create_dir_all(dir.join("run")).expect("run dir");
    let spec = task_spec(
        &dir,
        "t1",
        &["sh", "-c", "echo $$ > pid; sleep 1000 & wait"],
        Duration::from_millis(1500),
    );
    let pid = f.launch(&spec, false).await;
    let code = wait_exit(&spec.dir).await;
    assert_eq!(code, 137);
    assert!(!pid_alive(pid));
    let why = std::fs::read_to_string(spec.dir.join(TIMED_OUT)).expect("timed_out");
    assert!(why.contains("timed out after 1.5s"), "{why}");
    // The workload ran in the task's directory; its child in the group died with it.
    assert_eq!(read_pid(&dir.join("pid")), Some(pid));
    let evs = read_events(&f.events()).expect("events");
    assert_eq!(evs.iter().filter(|e| e.name == "t1").count(), 2, "{evs:?}");
}

#[tokio::test]
async fn a_task_is_cancelled_through_its_supervisor_and_its_output_is_bounded() {
    let f = Fixture::new();
    let dir = f.run("task");
    std::fs::create_dir_all(dir.join("run")).expect("run dir");
    let spec = task_spec(
        &dir,
        "t2",
        &["sh", "-c", "i=0; while [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done; echo LAST; exec sleep 1000"],
        Duration::from_secs(600),
    );
    let pid = f.launch(&spec, false).await;
    let out = dir.join("output");
    wait_for(T, "the output to be flushed", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        async move { text.contains("LAST").then_some(()) }
    })
    .await;
    let text = std::fs::read_to_string(&out).expect("output");
    assert!(text.starts_with("[... "), "{}", &text[..40.min(text.len())]);
    assert_eq!(text.split_once('\n').expect("marker line").1.len(), 1024);
    std::fs::write(spec.dir.join(STOP_REQUESTED), b"").expect("request stop");
    assert_eq!(wait_exit(&spec.dir).await, 137);
    assert!(!pid_alive(pid));
    assert!(!spec.dir.join(TIMED_OUT).exists());
}

#[tokio::test]
async fn a_program_that_cannot_run_is_reported() {
    let f = Fixture::new();
    let dir = f.run("task");
    std::fs::create_dir_all(dir.join("run")).expect("run dir");
    let spec = task_spec(&dir, "t3", &["/no/such/program"], Duration::from_secs(60));
    supervisor::launch(&common::supervisor(), &spec, &f.envs(false))
        .await
        .expect("launch");
    assert_eq!(wait_exit(&spec.dir).await, 127);
    let why = std::fs::read_to_string(spec.dir.join(EXEC_FAILED)).expect("exec_failed");
    assert!(why.contains("cannot start '/no/such/program'"), "{why}");
}

#[tokio::test]
async fn a_workload_counts_as_stopped_only_once_its_whole_group_is_gone() {
    let f = Fixture::new();
    let dir = f.run("vm");
    // The workload leaves a daemonised descendant in its process group (double fork, so it
    // is nobody's child but the supervisor's once orphaned), then exits on its own.
    let argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        "(sh -c 'echo $$ > orphan; trap \"\" TERM; exec sleep 1000' &); sleep 0.3; exit 3".into(),
    ];
    let spec = Spec::vm(&dir, "vm", 9, "console.log", &argv);
    let pid = f.launch(&spec, false).await;
    let orphan_file = spec.dir.join("orphan");
    let code = wait_exit(&dir).await;
    assert_eq!(code, 3);
    assert!(!pid_alive(pid));
    // Whoever sees `exit_code` (the node, which then lets the VM run elsewhere) must find no
    // member of the workload left, and its stop record already written.
    let orphan = read_pid(&orphan_file)
        .or_else(|| read_pid(&dir.join("orphan")))
        .expect("the workload recorded its descendant");
    assert!(
        !pid_alive(orphan),
        "descendant {orphan} outlived the recorded exit"
    );
    let evs = read_events(&f.events()).expect("events");
    assert_eq!(
        evs.iter()
            .filter(|e| e.name == "vm")
            .map(|e| e.kind)
            .collect::<Vec<_>>(),
        [EventKind::Start, EventKind::Stop],
        "{evs:?}"
    );
}
