//! Real QEMU microvm boots of the default guest (Debian cloud kernel + blixard initramfs).
//!
//! Needs `scripts/setup-guest.sh` to have run: without the guest kernel these tests FAIL
//! with a message saying so (they never pass silently).

mod common;

use std::time::{Duration, Instant};

use blixard_vmm::qemu::host_accel;
use blixard_vmm::{default_guest, guest, QemuDriver, RunState, VmConfig, VmDriver};
use common::{kill9, observe, pid_alive, wait_state, KillGuard};

/// Generous: TCG on a loaded 2-core machine.
const BOOT: Duration = Duration::from_secs(60);

fn guest_config(name: &str) -> VmConfig {
    let (kernel, initrd) = default_guest(&guest::guest_dir())
        .unwrap_or_else(|e| panic!("the default guest is not usable: {e}"));
    let mut cfg = VmConfig::new(name);
    cfg.memory_mb = 256;
    cfg.kernel = Some(kernel);
    cfg.initrd = Some(initrd);
    cfg
}

#[tokio::test]
async fn boots_to_ready_then_stops_and_is_removed() {
    let cfg = guest_config("boot1");
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let driver = QemuDriver::new(root.path())
        .with_supervisor(common::supervisor())
        .with_accel(host_accel());
    driver.validate(&cfg).expect("valid");

    let t0 = Instant::now();
    driver.start(&cfg, 11).await.expect("start");
    let running = wait_state(&driver, "boot1", BOOT, "Running", |s| {
        *s == RunState::Running
    })
    .await;
    eprintln!(
        "qemu boot to Running (through the driver) took {:?} with {:?}",
        t0.elapsed(),
        driver.accel()
    );
    assert_eq!(running.epoch, 11);
    let pid = running.pid.expect("pid");
    assert!(pid_alive(pid));

    let console = std::fs::read_to_string(driver.console_path("boot1")).expect("console");
    assert!(
        console.contains("Linux version"),
        "no kernel boot lines in console:\n{console}"
    );
    assert!(
        console.contains("BLIXARD-READY"),
        "no ready line in console:\n{console}"
    );

    // Idempotent start while running.
    driver.start(&cfg, 11).await.expect("start again");
    assert_eq!(
        observe(&driver, "boot1").await.and_then(|o| o.pid),
        Some(pid)
    );

    // Under TCG the VM has no ACPI: the stop does not wait for a power-down that cannot come.
    // Otherwise the default guest ignores the power button: the grace runs out, then QMP quit.
    let t_stop = Instant::now();
    driver
        .stop("boot1", Duration::from_secs(20))
        .await
        .expect("stop");
    if driver.accel() == blixard_vmm::Accel::Tcg {
        assert!(
            t_stop.elapsed() < Duration::from_secs(10),
            "stop took {:?}",
            t_stop.elapsed()
        );
    }
    assert!(!pid_alive(pid));
    let stopped = observe(&driver, "boot1").await.expect("listed");
    assert!(
        matches!(stopped.state, RunState::Stopped { .. }),
        "{stopped:?}"
    );

    driver.remove("boot1").await.expect("remove");
    assert!(!root.path().join("boot1").exists());
    assert!(driver.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn killed_qemu_is_failed_and_qmp_readiness_works() {
    let mut cfg = guest_config("kill1");
    // No readiness line: Running comes from QMP query-status.
    cfg.ready_line = None;
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let driver = QemuDriver::new(root.path())
        .with_supervisor(common::supervisor())
        .with_accel(host_accel());
    driver.start(&cfg, 1).await.expect("start");
    let running = wait_state(&driver, "kill1", BOOT, "Running", |s| {
        *s == RunState::Running
    })
    .await;

    // A restarted daemon re-attaches through the run directory and QMP.
    let again = QemuDriver::new(root.path())
        .with_supervisor(common::supervisor())
        .with_accel(host_accel());
    assert_eq!(
        observe(&again, "kill1").await.map(|o| o.state),
        Some(RunState::Running)
    );

    kill9(running.pid.expect("pid"));
    let failed = wait_state(&again, "kill1", Duration::from_secs(10), "Failed", |s| {
        matches!(s, RunState::Failed { .. })
    })
    .await;
    let RunState::Failed { reason } = failed.state else {
        unreachable!()
    };
    assert!(
        reason.contains("exit status 137 (killed by SIGKILL)"),
        "{reason}"
    );
    again.remove("kill1").await.expect("remove");
}

#[tokio::test]
async fn bad_qemu_arguments_fail_the_start_with_qemu_s_message() {
    let mut cfg = guest_config("bad1");
    cfg.memory_mb = 1 << 40; // 1 EiB: QEMU refuses it at once
    let root = tempfile::tempdir().expect("tempdir");
    let _guard = KillGuard::new(root.path());
    let driver = QemuDriver::new(root.path())
        .with_supervisor(common::supervisor())
        .with_accel(host_accel());
    let err = driver.start(&cfg, 1).await.expect_err("qemu must refuse");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("failed to start") && msg.contains("vmm.log"),
        "{msg}"
    );
}
