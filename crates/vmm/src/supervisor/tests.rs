use std::fs;
use std::path::Path;
use std::time::Duration;

use super::spec::{parse, Confine, Mode};
use super::*;

#[test]
fn args_round_trip() {
    let mut spec = Spec::vm(
        Path::new("/run/x"),
        "web",
        7,
        "console.log",
        &["sh".into(), "-c".into(), "echo --dir".into()],
    );
    assert_eq!(parse(spec.to_args()), Ok(Mode::Supervise(spec.clone())));
    spec.cwd = Some("/tmp".into());
    spec.timeout = Some(Duration::from_millis(1500));
    spec.output_limit = Some(65536);
    spec.stop_kills = true;
    spec.run_as = Some(RunAs {
        name: "blixard-task".into(),
        uid: 990,
        gid: 989,
    });
    spec.limits = Some(Limits::default());
    spec.stdin_fifo = Some("console.in".into());
    spec.stdout = Some("console.log".into());
    let mut args: Vec<OsString> = vec!["supervise".into()];
    args.extend(spec.to_args());
    assert_eq!(parse(args), Ok(Mode::Supervise(spec)));
    assert!(parse(vec!["--dir".into(), "/x".into()]).is_err());
    assert!(parse(vec!["--bogus".into()]).is_err());
    assert_eq!(
        parse(
            ["--exec", "12", "/d", "--", "true"]
                .map(OsString::from)
                .to_vec()
        ),
        Ok(Mode::Exec {
            parent: 12,
            dir: "/d".into(),
            confine: Confine::default(),
            argv: vec!["true".into()]
        })
    );
    let confine = Confine {
        run_as: Some(RunAs {
            name: "u".into(),
            uid: 5,
            gid: 6,
        }),
        limits: Some(Limits::default()),
    };
    let mut args: Vec<OsString> = ["--exec", "12", "/d"].map(OsString::from).to_vec();
    args.extend(confine.to_args());
    args.extend(["--", "true"].map(OsString::from));
    assert_eq!(
        parse(args),
        Ok(Mode::Exec {
            parent: 12,
            dir: "/d".into(),
            confine,
            argv: vec!["true".into()]
        })
    );
    assert!(parse(
        ["--exec", "1", "/d", "--uid", "5", "--", "true"]
            .map(OsString::from)
            .to_vec()
    )
    .is_err());
    assert!(parse(
        ["--exec", "1", "/d", "--limits", "1,2", "--", "true"]
            .map(OsString::from)
            .to_vec()
    )
    .is_err());
}

#[test]
fn lease_format() {
    let l = Lease {
        boot_id: "abc".into(),
        deadline_ms: 42,
    };
    assert_eq!(Lease::parse(&l.render()), Ok(l));
    for bad in [
        "",
        "42",
        "blixard-lease-v1 abc",
        "blixard-lease-v1 abc x",
        "v0 abc 1",
        "blixard-lease-v1 a 1 2",
    ] {
        assert!(Lease::parse(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn check_lease_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("lease");
    assert!(check_lease(&p).unwrap_err().contains("unreadable"));
    let now = boottime_ms().expect("boottime");
    write_lease(&p, now + 60_000).expect("write");
    assert!(check_lease(&p).is_ok());
    write_lease(&p, now.saturating_sub(1)).expect("write");
    assert!(check_lease(&p).unwrap_err().contains("expired"));
    write_lease(&p, 0).expect("write");
    assert!(check_lease(&p).unwrap_err().contains("revoked"));
    fs::write(&p, format!("{LEASE_TAG} another-boot {}\n", now + 60_000)).expect("write");
    assert!(check_lease(&p).unwrap_err().contains("another boot"));
    fs::write(&p, "9999999999999").expect("write");
    assert!(check_lease(&p).unwrap_err().contains("malformed"));
}

#[test]
fn tail_keeps_the_last_bytes_with_a_marker() {
    let mut t = Tail::new(64 * 1024);
    t.push(b"hello\n");
    assert_eq!(t.render(), b"hello\n");
    t.push(&vec![b'x'; 64 * 1024]);
    t.push(b"END");
    let r = t.render();
    let text = String::from_utf8_lossy(&r);
    assert!(
        text.starts_with("[... 9 bytes truncated ...]\n"),
        "{}",
        &text[..40]
    );
    assert!(text.ends_with("xEND"));
    assert_eq!(r.len() - "[... 9 bytes truncated ...]\n".len(), 64 * 1024);
}
