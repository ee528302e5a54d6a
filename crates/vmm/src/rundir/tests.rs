use super::events::parse_event;
use super::*;

#[test]
fn exit_descriptions() {
    assert_eq!(describe_exit(0), "exit status 0");
    assert_eq!(describe_exit(137), "exit status 137 (killed by SIGKILL)");
    assert_eq!(describe_exit(143), "exit status 143 (killed by SIGTERM)");
    assert!(describe_exit(127).contains("not found"));
}

#[test]
fn own_process_is_alive_with_stable_starttime() {
    let me = std::process::id();
    let t = process_starttime(me).expect("own starttime");
    assert!(is_alive(me, Some(t)));
    assert!(
        !is_alive(me, Some(t + 1)),
        "a different start time is a different process"
    );
}

#[tokio::test]
async fn a_pid_from_another_boot_is_not_trusted() {
    let root = tempfile::tempdir().expect("tempdir");
    let rd = RunDir::new(root.path(), "vm");
    rd.create().expect("create");
    // Our own pid and start time: alive, unless the host has rebooted since.
    let me = std::process::id();
    let mut meta = Meta {
        name: "vm".into(),
        epoch: 1,
        pid: Some(me),
        pid_starttime: process_starttime(me),
        driver: "process".into(),
        config: VmConfig::new("vm"),
        started_at_unix_ms: unix_ms(),
        boot_id: boot_id(),
    };
    assert_eq!(rd.liveness(&mut meta).await, Liveness::Alive { pid: me });
    meta.boot_id = Some("another-boot".into());
    assert_eq!(
        rd.liveness(&mut meta).await,
        Liveness::Exited {
            pid: Some(me),
            code: None
        }
    );
    assert!(
        matches!(rd.exited_state(None, &[]), crate::RunState::Failed { reason } if reason.contains("host reboot"))
    );
}

#[test]
fn events_parse() {
    let ev = parse_event("start 1700000000000 web 7").expect("parse");
    assert_eq!(
        ev,
        Event {
            kind: EventKind::Start,
            unix_ms: 1_700_000_000_000,
            name: "web".into(),
            epoch: 7
        }
    );
    assert!(parse_event("bogus 1 a 2").is_none());
}

#[test]
fn tail_and_contains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("log");
    fs::write(&p, "a\r\nb\nBLIXARD-READY\r\nc\n").expect("write");
    assert_eq!(tail_lines(&p, 2), "BLIXARD-READY\nc");
    assert!(file_contains_line(&p, "BLIXARD-READY"));
    assert!(!file_contains_line(&p, "nope"));
    assert_eq!(tail_lines(&dir.path().join("missing"), 3), "");
}
