//! The gRPC surface under bad or repeated input: peers from another cluster, malformed peer
//! messages, repeated joins, retried client requests.

mod common;

use blixard_api::{pb, CLUSTER_HEADER};
use common::{api_client, json, node_material, peer_client, Cluster};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn with_cluster_header<T>(msg: T, cluster: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(CLUSTER_HEADER, cluster.parse().unwrap());
    r
}

#[test]
fn peers_from_another_cluster_or_speaking_nonsense_are_refused() {
    let c = Cluster::start(1, &[]);
    let addr = c.addr(1);
    let cluster_id = json(&addr, &["cluster", "status"])["cluster_id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = c.wait_converged();
    rt().block_on(async {
        // A member's own certificate: the cluster-id and decoding checks still apply.
        let mut peer = peer_client(&addr, &node_material(&c.node(1).dir));
        // Another cluster's id.
        let e = peer
            .append_entries(with_cluster_header(
                pb::RaftMessage {
                    data: b"{}".to_vec(),
                },
                "some-other-cluster",
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("some-other-cluster"));
        // No cluster id at all.
        let e = peer
            .vote(tonic::Request::new(pb::RaftMessage { data: vec![] }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // The right cluster, but garbage.
        for data in [
            b"not json".to_vec(),
            vec![0xff; 1000],
            b"{\"vote\": 1}".to_vec(),
        ] {
            let e = peer
                .append_entries(with_cluster_header(
                    pb::RaftMessage { data: data.clone() },
                    &cluster_id,
                ))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            let e = peer
                .propose(with_cluster_header(pb::RaftMessage { data }, &cluster_id))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        }
        // An evicted notice for another node is refused.
        let e = peer
            .evicted(with_cluster_header(
                pb::EvictedNotice { node_id: 99 },
                &cluster_id,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });
    // The node is unharmed and its state unchanged.
    assert_eq!(c.wait_converged(), before);
    json(&addr, &["vm", "create", "still-fine"]);
}

#[test]
fn joining_twice_is_idempotent_and_a_second_address_is_refused() {
    let c = Cluster::start(2, &[]);
    let addr = c.addr(1);
    let n2 = c.addr(2);
    rt().block_on(async {
        // Only the joining node itself (its certificate) may ask to join.
        let mut client = api_client(&addr, &node_material(&c.node(2).dir));
        let r = client
            .join(pb::JoinRequest {
                node_id: 2,
                addr: n2.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.voter);
        let e = client
            .join(pb::JoinRequest {
                node_id: 2,
                addr: "127.0.0.1:1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("already a member"), "{}", e.message());
        let e = client
            .join(pb::JoinRequest {
                node_id: 2,
                addr: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        // Node 2's certificate cannot ask for node 7, nor can the admin's for anyone.
        let e = client
            .join(pb::JoinRequest {
                node_id: 7,
                addr: "127.0.0.1:1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = api_client(&addr, &c.admin())
            .join(pb::JoinRequest {
                node_id: 7,
                addr: "127.0.0.1:1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    });
    assert_eq!(
        c.members_of(1).unwrap(),
        vec![(1, "voter".to_string()), (2, "voter".to_string())]
    );
}

#[test]
fn a_retried_request_is_applied_once() {
    let c = Cluster::start(3, &[]);
    rt().block_on(async {
        let mut spec = pb::VmSpec::from(&blixard_core::VmSpec::new("once"));
        spec.memory_mb = 64;
        let req = pb::CreateVmRequest {
            spec: Some(spec),
            request_id: "req-123".into(),
        };
        // The same request through two different nodes (a client retrying elsewhere).
        let mut a = api_client(&c.addr(2), &c.admin());
        let mut b = api_client(&c.addr(3), &c.admin());
        let first = a.create_vm(req.clone()).await.unwrap().into_inner();
        let second = b.create_vm(req.clone()).await.unwrap().into_inner();
        assert_eq!(
            first, second,
            "the retry gets the first outcome, not 'already exists'"
        );
        // A new request id for the same name is a new request, refused by apply.
        let mut other = req.clone();
        other.request_id = "req-456".into();
        let e = a.create_vm(other).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
    });
    assert_eq!(
        json(&c.addr(1), &["vm", "list"]).as_array().unwrap().len(),
        1
    );
}
