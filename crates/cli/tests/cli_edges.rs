//! The CLI's edges as a user meets them: a closed stdout (`| head -1`) ends quietly.

mod common;

use common::{json, Cluster, BIN};

#[test]
fn a_closed_stdout_ends_quietly() {
    let c = Cluster::start(1, &[]);
    let a = c.addr(1);
    for i in 0..3 {
        json(&a, &["vm", "create", &format!("p{i}"), "--no-start", "--memory", "32"]);
    }
    // `true` exits without reading: blixard's first write meets a broken pipe.
    for args in ["vm list", "--json vm list", "node list", "cluster status"] {
        let script = format!("'{BIN}' --addr {a} {args} 2>\"$ERR\" | true; echo ${{PIPESTATUS[0]}}");
        let dir = tempfile::tempdir().unwrap();
        let err = dir.path().join("err");
        let out = std::process::Command::new("bash").arg("-c").arg(&script).env("ERR", &err).output().unwrap();
        let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(!stderr.contains("panicked"), "`blixard {args} | true` panicked: {stderr}");
        assert_eq!(status, "0", "`blixard {args} | true` exited {status}: {stderr}");
    }
}
