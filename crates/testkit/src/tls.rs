//! Key material and TLS clients for tests that speak gRPC themselves (as the admin, as a node,
//! or as a stranger with a CA of its own).

use std::path::{Path, PathBuf};

use crate::cluster::Cluster;

/// A credentials file for a CA of its own (another cluster's, as far as any test cluster is
/// concerned); returns its path.
pub fn make_credentials(dir: &Path, name: &str, role: &str) -> PathBuf {
    let ca = blixard_pki::Ca::generate("elsewhere").expect("CA");
    let own = ca.issue_client(name, role).expect("client certificate");
    let path = dir.join(format!("{name}.credentials"));
    blixard_pki::Credentials::new(name, role, &ca.0.cert_pem, own)
        .store(&path)
        .expect("write credentials");
    path
}

/// Node `dir`'s key material (what a member holds in DATA_DIR/tls).
pub fn node_material(dir: &Path) -> blixard_pki::TlsMaterial {
    let read =
        |f: &str| std::fs::read_to_string(dir.join("tls").join(f)).expect("node key material");
    blixard_pki::TlsMaterial {
        ca_pem: read("ca.pem"),
        own: blixard_pki::CertKey {
            cert_pem: read("node.pem"),
            key_pem: read("node.key"),
        },
    }
}

/// The key material of a credentials file.
pub fn credentials_material(path: &Path) -> blixard_pki::TlsMaterial {
    blixard_pki::Credentials::load(path)
        .expect("credentials")
        .material()
}

/// A gRPC channel to `addr` over TLS with `m` (lazy: connects on first use).
pub fn tls_channel(addr: &str, m: &blixard_pki::TlsMaterial) -> tonic::transport::Channel {
    blixard_pki::channel(addr, m.client_config().expect("client config")).expect("channel")
}

/// A peer client speaking as whoever `m` is.
pub fn peer_client(
    addr: &str,
    m: &blixard_pki::TlsMaterial,
) -> blixard_api::RaftPeerClient<tonic::transport::Channel> {
    blixard_api::RaftPeerClient::new(tls_channel(addr, m))
}

/// A client-API client speaking as whoever `m` is.
pub fn api_client(
    addr: &str,
    m: &blixard_pki::TlsMaterial,
) -> blixard_api::BlixardClient<tonic::transport::Channel> {
    blixard_api::BlixardClient::new(tls_channel(addr, m))
}

impl Cluster {
    /// The admin credential's key material.
    pub fn admin(&self) -> blixard_pki::TlsMaterial {
        credentials_material(
            self.credentials
                .as_deref()
                .expect("cluster started with --init"),
        )
    }
}
