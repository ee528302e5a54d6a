use proptest::prelude::*;

use super::*;
use crate::command::{ApplyError, Reply};

const H: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn rpcs_in_proto() -> Vec<String> {
    let proto = include_str!("../../../api/proto/blixard.proto");
    let mut service = String::new();
    let mut out = Vec::new();
    for line in proto.lines() {
        let l = line.trim();
        if let Some(s) = l.strip_prefix("service ") {
            service = s.trim_end_matches('{').trim().to_string();
        } else if let Some(r) = l.strip_prefix("rpc ") {
            let m = r.split('(').next().unwrap_or("").trim();
            out.push(format!("/blixard.v1.{service}/{m}"));
        }
    }
    out
}

#[test]
fn every_rpc_of_the_contract_is_in_the_role_table() {
    let rpcs = rpcs_in_proto();
    assert!(rpcs.len() > 30, "parsed {rpcs:?}");
    for r in rpcs {
        assert!(
            grpc_access(&r).is_some(),
            "{r} has no entry in the role table"
        );
    }
    assert_eq!(grpc_access("/blixard.v1.Blixard/Nope"), None);
    assert_eq!(grpc_access("garbage"), None);
}

#[test]
fn the_role_table_follows_the_contract() {
    let g = |m: &str| grpc_access(&format!("/blixard.v1.Blixard/{m}")).unwrap();
    for read in [
        "ClusterStatus",
        "ListNodes",
        "GetVm",
        "ListVms",
        "Events",
        "TaskLogs",
    ] {
        assert_eq!(g(read), Access::Role(Role::Viewer), "{read}");
    }
    for op in [
        "CreateVm",
        "DeleteVm",
        "SetVmDesired",
        "SubmitTask",
        "CancelTask",
    ] {
        assert_eq!(g(op), Access::Role(Role::Operator), "{op}");
    }
    for admin in [
        "Join",
        "RemoveMember",
        "Leave",
        "SetNodeState",
        "SetSchedulerSettings",
        "CreateJoinToken",
        "RevokeJoinToken",
    ] {
        assert_eq!(g(admin), Access::Role(Role::Admin), "{admin}");
    }
    assert_eq!(
        grpc_access("/blixard.v1.Networks/CreateNetwork"),
        Some(Access::Role(Role::Operator))
    );
    assert_eq!(
        grpc_access("/blixard.v1.Auth/IssueCredential"),
        Some(Access::Role(Role::Admin))
    );
    assert_eq!(
        grpc_access("/blixard.v1.RaftPeer/Propose"),
        Some(Access::Peer)
    );
    assert_eq!(http_access("GET", "/v1/vms"), Access::Role(Role::Viewer));
    assert_eq!(http_access("POST", "/v1/vms"), Access::Role(Role::Operator));
    assert_eq!(
        http_access("DELETE", "/v1/vms/:name"),
        Access::Role(Role::Operator)
    );
    assert_eq!(http_access("GET", "/healthz"), Access::Public);
    assert_eq!(http_access("POST", "/healthz"), Access::Role(Role::Admin));
    assert_eq!(http_access("GET", "/v1/unknown"), Access::Role(Role::Admin));
}

#[test]
fn roles_are_ordered() {
    assert!(Role::Admin.allows(Role::Operator) && Role::Operator.allows(Role::Viewer));
    assert!(!Role::Viewer.allows(Role::Operator) && !Role::Operator.allows(Role::Admin));
    for r in Role::ALL {
        assert_eq!(Role::parse(r.as_str()), Some(r));
    }
    assert_eq!(Role::parse("root"), None);
}

fn record(serial: &str, name: &str, expires: Option<u64>) -> AuthCommand {
    AuthCommand::RecordCredential {
        serial: serial.into(),
        name: name.into(),
        role: Role::Operator,
        expires_ms: expires,
        created_by: "admin".into(),
    }
}

#[test]
fn revoked_and_expired_credentials_are_refused() {
    let mut s = AuthState::default();
    s.apply(&record("0a", "ci", Some(5000)), 1000).unwrap();
    s.apply(&record("0b", "ci", None), 1000).unwrap();
    s.apply(&record("0c", "ops", None), 1000).unwrap();
    assert_eq!(s.credential_refusal("0a", 2000), None);
    assert!(s
        .credential_refusal("0a", 5000)
        .unwrap()
        .contains("expired"));
    // Unknown serials are the CA's business.
    assert_eq!(s.credential_refusal("ff", 2000), None);
    s.apply(&AuthCommand::Revoke { who: "ci".into() }, 3000)
        .unwrap();
    assert!(s
        .credential_refusal("0b", 3000)
        .unwrap()
        .contains("revoked"));
    assert_eq!(s.credential_refusal("0c", 3000), None);
    // By serial, too; and an unknown name is an error that changes nothing.
    s.apply(&AuthCommand::Revoke { who: "0c".into() }, 3000)
        .unwrap();
    assert!(s.credential_refusal("0c", 3000).is_some());
    let before = s.clone();
    assert!(s
        .apply(
            &AuthCommand::Revoke {
                who: "nobody".into()
            },
            3000
        )
        .is_err());
    assert_eq!(s, before);
}

#[test]
fn bad_records_are_refused_and_change_nothing() {
    let mut s = AuthState::default();
    for bad in [
        record("XYZ", "ci", None),
        record("0a", "bad name", None),
        record("0a", "ci", Some(1000 + MAX_TTL_MS + 1)),
    ] {
        assert!(s.apply(&bad, 1000).is_err(), "{bad:?}");
    }
    assert_eq!(s, AuthState::default());
    // Already past its end when applied: recorded, and refused.
    s.apply(&record("0e", "late", Some(500)), 1000).unwrap();
    assert!(s
        .credential_refusal("0e", 1000)
        .unwrap()
        .contains("expired"));
    s.apply(&record("0a", "ci", None), 1000).unwrap();
    // A retried identical record is fine; another one under the same serial is not.
    s.apply(&record("0a", "ci", None), 2000).unwrap();
    assert!(s.apply(&record("0a", "other", None), 2000).is_err());
}

fn bearer(id: &str, expires: Option<u64>) -> AuthCommand {
    AuthCommand::CreateBearerToken {
        id: id.into(),
        name: "dash".into(),
        role: Role::Viewer,
        secret_sha256: H.into(),
        expires_ms: expires,
        created_by: "admin".into(),
    }
}

#[test]
fn bearer_tokens_are_checked_by_their_secret_hash() {
    let mut s = AuthState::default();
    let id = "0123456789abcdef";
    s.apply(&bearer(id, Some(10_000)), 1000).unwrap();
    let secret = "b".repeat(64);
    let tok = format!("{BEARER_PREFIX}{id}_{secret}");
    let hash = |x: &str| {
        if x == secret {
            H.to_string()
        } else {
            "0".repeat(64)
        }
    };
    assert_eq!(
        s.check_bearer(&tok, 2000, hash),
        Ok(("dash".into(), Role::Viewer))
    );
    assert!(s
        .check_bearer(&tok, 10_000, hash)
        .unwrap_err()
        .contains("expired"));
    let wrong = format!("{BEARER_PREFIX}{id}_{}", "c".repeat(64));
    assert!(s.check_bearer(&wrong, 2000, hash).is_err());
    assert!(s.check_bearer("", 2000, hash).is_err());
    s.apply(&AuthCommand::Revoke { who: "dash".into() }, 3000)
        .unwrap();
    assert!(s
        .check_bearer(&tok, 3000, hash)
        .unwrap_err()
        .contains("revoked"));
}

#[test]
fn records_are_bounded() {
    let mut s = AuthState::default();
    for i in 0..MAX_RECORDS {
        s.apply(&record(&format!("{i:04x}"), "n", Some(2000)), 1000)
            .unwrap();
    }
    // All active: refused.
    assert!(matches!(
        s.apply(&record("ffff", "n", None), 1500),
        Err(ApplyError::LimitReached(_))
    ));
    // Once they expired, the oldest make room.
    s.apply(&record("ffff", "n", None), 3000).unwrap();
    assert_eq!(s.credentials.len(), MAX_RECORDS);
}

#[test]
fn writes_record_who_asked_in_the_record_the_reply_and_the_events() {
    use crate::{Command, EventSource, Request, VmSpec};
    let mut st = crate::ClusterState::default();
    let base = st.clone();
    st.take_touched();
    let r = Request::new(
        Command::CreateVm {
            spec: VmSpec::new("web"),
        },
        1000,
    )
    .by(Some("alice".into()));
    let Ok(Reply::Vm(reply)) = st.apply(1, &r) else {
        panic!("create refused");
    };
    assert_eq!(reply.created_by.as_deref(), Some("alice"));
    assert_eq!(st.vms["web"].created_by.as_deref(), Some("alice"));
    let mut src = EventSource::new(&base, 0);
    let touched = st.take_touched();
    src.observe_by(1, 1000, r.caller.as_deref(), &st, &touched);
    let (events, _) = src.since(0, 100);
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.caller.as_deref() == Some("alice")));
    // The cluster's own proposals name nobody.
    let anon = Request::new(
        Command::CreateVm {
            spec: VmSpec::new("db"),
        },
        1000,
    );
    st.apply(2, &anon).unwrap();
    assert_eq!(st.vms["db"].created_by, None);
    // The log is bincode: a request (with or without a caller) must round-trip.
    for r in [&r, &anon] {
        let b = bincode_like_roundtrip(r);
        assert_eq!(&b, r);
    }
}

/// A non-self-describing round trip (what the Raft log's bincode does): every field is
/// written, in order, and read back positionally.
fn bincode_like_roundtrip(r: &crate::Request) -> crate::Request {
    // serde_json's array form of a struct is positional: no field may be skipped.
    let v = serde_json::to_value(r).unwrap();
    let obj = v.as_object().unwrap();
    assert!(obj.contains_key("caller"), "caller must always be written");
    serde_json::from_value(v).unwrap()
}

fn cmd() -> impl Strategy<Value = AuthCommand> {
    let serial = prop_oneof![
        Just("0a".to_string()),
        Just("0b".to_string()),
        "[0-9a-fA-Z]{0,4}"
    ];
    let name = prop_oneof![Just("ci".to_string()), Just("ops".to_string()), ".{0,3}"];
    let role = prop_oneof![Just(Role::Viewer), Just(Role::Operator), Just(Role::Admin)];
    let exp = proptest::option::of(0u64..20_000);
    prop_oneof![
        (serial.clone(), name.clone(), role.clone(), exp.clone()).prop_map(
            |(serial, name, role, expires_ms)| AuthCommand::RecordCredential {
                serial,
                name,
                role,
                expires_ms,
                created_by: "p".into()
            }
        ),
        (name.clone(), role, exp).prop_map(|(name, role, expires_ms)| {
            AuthCommand::CreateBearerToken {
                id: "0123456789abcdef".into(),
                name,
                role,
                secret_sha256: H.into(),
                expires_ms,
                created_by: "p".into(),
            }
        }),
        prop_oneof![serial, name].prop_map(|who| AuthCommand::Revoke { who }),
    ]
}

proptest! {
    /// Whatever the commands: a refused one changes nothing, and a revoked credential or
    /// token never becomes usable again.
    #[test]
    fn refusals_change_nothing_and_revocation_is_final(
        cmds in proptest::collection::vec((cmd(), 0u64..20_000), 0..40)
    ) {
        let mut s = AuthState::default();
        let mut revoked = std::collections::BTreeSet::new();
        for (c, now) in cmds {
            let before = s.clone();
            if s.apply(&c, now).is_err() {
                prop_assert_eq!(&s, &before);
            }
            for c in s.credentials.values() {
                if c.revoked { revoked.insert(format!("c{}", c.serial)); }
                let key = format!("c{}", c.serial);
                prop_assert!(!revoked.contains(&key) || c.revoked);
                prop_assert!(validate_name(&c.name).is_ok());
            }
            for t in s.bearer.values() {
                if t.revoked { revoked.insert(format!("t{}", t.id)); }
                let key = format!("t{}", t.id);
                prop_assert!(!revoked.contains(&key) || t.revoked);
            }
        }
    }
}
