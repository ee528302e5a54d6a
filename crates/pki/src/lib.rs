//! blixard's trust: the cluster certificate authority, node and client certificates, the
//! identities they carry, and the TLS 1.3 transports every port uses.
//!
//! - A cluster has one CA (created by `--init`). Every member holds its key, so whichever node
//!   is asked can issue a joiner's certificate once the join token was consumed through Raft.
//! - A node certificate names its node id (URI SAN `blixard://node/N`), a client certificate its
//!   holder and role (`blixard://client/NAME`, `blixard://role/ROLE`). [`Identity::from_der`]
//!   reads them back from a verified certificate.
//! - Servers speak TLS 1.3 only and verify any client certificate against the CA (a connection
//!   without one is accepted at the TLS layer but can only enroll with a join token; the
//!   services decide). Clients verify the server's certificate against the CA, or, when
//!   joining, against the CA fingerprint carried by the join token.
//!
//! Nothing here knows about Raft or the cluster state.

pub mod credentials;
pub mod https;
pub mod token;
pub mod transport;

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

pub use credentials::Credentials;
pub use https::{https_client_config, https_server_config};
pub use token::JoinTokenString;
pub use transport::{channel, error_chain, incoming, ConnInfo, Connector};

/// DNS name every node certificate carries; clients verify servers against it (the identity
/// that matters, the node id, is in the URI SAN).
pub const NODE_SERVER_NAME: &str = "node.blixard";
const NODE_URI: &str = "blixard://node/";
const CLIENT_URI: &str = "blixard://client/";
const ROLE_URI: &str = "blixard://role/";

/// Roles a client certificate may carry (checked by the services; see the security contract).
pub const ROLES: &[&str] = &["admin", "operator", "viewer"];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Io(String),
}

/// Who is at the other end of a verified connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A cluster member (or a node that was issued a certificate to become one).
    Node(u64),
    /// A client holding a credential: its name, role and certificate serial (lower-case hex,
    /// what revocation records name).
    Client {
        name: String,
        role: String,
        serial: String,
    },
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client { name, role, .. } => write!(f, "client '{name}' ({role})"),
        }
    }
}

impl Identity {
    /// Reads the identity a (verified) certificate carries; `None` for anything else.
    pub fn from_der(der: &[u8]) -> Option<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        let mut node = None;
        let mut client = None;
        let mut role = None;
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(NODE_URI) {
                    node = id.parse::<u64>().ok().filter(|id| *id > 0);
                } else if let Some(n) = uri.strip_prefix(CLIENT_URI) {
                    client = Some(n.to_string());
                } else if let Some(r) = uri.strip_prefix(ROLE_URI) {
                    role = Some(r.to_string());
                }
            }
        }
        match (node, client, role) {
            (Some(id), None, _) => Some(Identity::Node(id)),
            (None, Some(name), Some(role)) if ROLES.contains(&role.as_str()) => {
                Some(Identity::Client {
                    name,
                    role,
                    serial: hex::encode(cert.raw_serial()),
                })
            }
            _ => None,
        }
    }

    pub fn node_id(&self) -> Option<u64> {
        match self {
            Identity::Node(id) => Some(*id),
            Identity::Client { .. } => None,
        }
    }
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The cluster CA: its certificate and key.
#[derive(Clone, Debug)]
pub struct Ca(pub CertKey);

fn pem_to_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("bad certificate PEM: {e}")))
}

/// SHA-256 of a certificate's DER, lower-case hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn leaf_params(sans: Vec<SanType>, cn: &str, server: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    p.use_authority_key_identifier_extension = true;
    p
}

fn uri(s: String) -> Result<SanType, PkiError> {
    Ok(SanType::URI(
        s.try_into()
            .map_err(|e| PkiError::Invalid(format!("bad URI: {e}")))?,
    ))
}

impl Ca {
    /// A new CA for cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("blixard cluster {cluster_id} CA"),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key)?;
        Ok(Ca(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }))
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        pem_to_der(&self.0.cert_pem)
    }

    /// SHA-256 fingerprint of the CA certificate (what join tokens pin).
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint_der(&self.cert_der()?))
    }

    fn sign(&self, params: CertificateParams) -> Result<CertKey, PkiError> {
        let ca_key = KeyPair::from_pem(&self.0.key_pem)?;
        let ca_params = CertificateParams::from_ca_cert_pem(&self.0.cert_pem)?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The certificate of node `id` (server and client use).
    pub fn issue_node(&self, id: u64) -> Result<CertKey, PkiError> {
        if id == 0 {
            return Err(PkiError::Invalid("node ids start at 1".into()));
        }
        let sans = vec![
            SanType::DnsName(NODE_SERVER_NAME.try_into()?),
            uri(format!("{NODE_URI}{id}"))?,
        ];
        self.sign(leaf_params(sans, &format!("blixard node {id}"), true))
    }

    /// A client certificate for `name` with `role` (client use only), valid for the CA's
    /// lifetime.
    pub fn issue_client(&self, name: &str, role: &str) -> Result<CertKey, PkiError> {
        Ok(self.issue_client_until(name, role, None)?.0)
    }

    /// A client certificate for `name` with `role`, valid until `not_after` (seconds since
    /// the Unix epoch; `None`: the CA's default), with a fresh random serial. Returns the
    /// certificate and its serial (lower-case hex, as [`Identity::Client`] reads it back).
    pub fn issue_client_until(
        &self,
        name: &str,
        role: &str,
        not_after: Option<u64>,
    ) -> Result<(CertKey, String), PkiError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(PkiError::Invalid(format!(
                "client name '{name}' must be 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if !ROLES.contains(&role) {
            return Err(PkiError::Invalid(format!(
                "unknown role '{role}': use admin, operator or viewer"
            )));
        }
        let sans = vec![
            uri(format!("{CLIENT_URI}{name}"))?,
            uri(format!("{ROLE_URI}{role}"))?,
        ];
        let mut p = leaf_params(sans, &format!("blixard client {name}"), false);
        // 16 random bytes, positive (DER integers are signed) and without a leading zero byte,
        // so the hex read back from the certificate is exactly this.
        let mut serial = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
        serial[0] = (serial[0] & 0x7f) | 0x10;
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        if let Some(secs) = not_after {
            let secs =
                i64::try_from(secs).map_err(|_| PkiError::Invalid("expiry out of range".into()))?;
            p.not_after = time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|e| PkiError::Invalid(format!("expiry out of range: {e}")))?;
            // Valid from a minute ago: a little clock skew between members must not refuse it.
            p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        }
        Ok((self.sign(p)?, hex::encode(serial)))
    }
}

/// When a PEM certificate stops being valid (seconds since the Unix epoch).
pub fn not_after_secs(cert_pem: &str) -> Result<i64, PkiError> {
    let der = pem_to_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Invalid(format!("bad certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Everything one party needs to speak TLS with the cluster: the CA certificate, its own
/// certificate and key.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub own: CertKey,
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_to_der(ca_pem)?)?;
    Ok(roots)
}

fn key_der(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("bad private key PEM: {e}")))
}

impl TlsMaterial {
    /// The identity of this party's own certificate.
    pub fn identity(&self) -> Result<Identity, PkiError> {
        Identity::from_der(&pem_to_der(&self.own.cert_pem)?)
            .ok_or_else(|| PkiError::Invalid("the certificate carries no blixard identity".into()))
    }

    /// TLS 1.3 only; a client certificate, when presented, must chain to the CA; the server
    /// sends its certificate and the CA's (so a joiner can pin the CA by fingerprint).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let p = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&self.ca_pem)?),
            p.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
        let chain = vec![pem_to_der(&self.own.cert_pem)?, pem_to_der(&self.ca_pem)?];
        let mut cfg = rustls::ServerConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key_der(&self.own.key_pem)?)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// TLS 1.3 only; verifies the server against the CA; presents this party's certificate.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots(&self.ca_pem)?)
            .with_client_auth_cert(
                vec![pem_to_der(&self.own.cert_pem)?],
                key_der(&self.own.key_pem)?,
            )?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// A client configuration for a node that is joining: it has no certificate yet and knows the
/// cluster only by its CA fingerprint (from the join token). The server must present a chain
/// whose CA has that fingerprint and a node certificate signed by it; nothing is sent before.
pub fn pinned_client_config(ca_fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let p = provider();
    let verifier = Arc::new(PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: p.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| fingerprint_der(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the join token's fingerprint".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip() {
        let ca = Ca::generate("c1").unwrap();
        let n = ca.issue_node(7).unwrap();
        let m = TlsMaterial {
            ca_pem: ca.0.cert_pem.clone(),
            own: n,
        };
        assert_eq!(m.identity().unwrap(), Identity::Node(7));
        let c = ca.issue_client("admin", "admin").unwrap();
        let m = TlsMaterial {
            ca_pem: ca.0.cert_pem.clone(),
            own: c,
        };
        assert_eq!(
            m.identity().unwrap(),
            Identity::Client {
                name: "admin".into(),
                role: "admin".into(),
                serial: match m.identity().unwrap() {
                    Identity::Client { serial, .. } => serial,
                    _ => unreachable!(),
                }
            }
        );
        assert!(ca.issue_client("x y", "admin").is_err());
        assert!(ca.issue_client("x", "root").is_err());
        assert_eq!(ca.fingerprint().unwrap().len(), 64);
        assert!(Identity::from_der(b"garbage").is_none());
    }
}

#[cfg(test)]
mod client_cert_tests {
    use super::*;

    #[test]
    fn client_certificates_carry_their_serial_and_expiry() {
        let ca = Ca::generate("c1").unwrap();
        let (c, serial) = ca
            .issue_client_until("ci", "viewer", Some(4_000_000_000))
            .unwrap();
        assert_eq!(serial.len(), 32);
        let m = TlsMaterial {
            ca_pem: ca.0.cert_pem.clone(),
            own: c.clone(),
        };
        assert_eq!(
            m.identity().unwrap(),
            Identity::Client {
                name: "ci".into(),
                role: "viewer".into(),
                serial: serial.clone()
            }
        );
        assert_eq!(not_after_secs(&c.cert_pem).unwrap(), 4_000_000_000);
        let (_, other) = ca.issue_client_until("ci", "viewer", None).unwrap();
        assert_ne!(serial, other);
    }
}
