//! HTTPS for a node's `--http` listener (API, metrics, dashboard). Browsers and HTTP clients
//! check the server's name, so the node serves a certificate of the cluster CA made for the
//! names it is reached by ([`Ca::issue_https`]): clients trust the cluster CA (`ca.pem`) and
//! verify names as usual ([`https_client_config`]). No client certificate is asked for: HTTP
//! callers authenticate with bearer tokens, which TLS keeps out of sight.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::SanType;

use crate::{key_der, leaf_params, pem_to_der, provider, roots, uri, Ca, CertKey, PkiError};
use crate::{NODE_SERVER_NAME, NODE_URI};

impl Ca {
    /// A server certificate (server use only) for node `id`'s HTTPS listener, valid for
    /// `hosts` (IP addresses or DNS names) besides the node's own names.
    pub fn issue_https(&self, id: u64, hosts: &[String]) -> Result<CertKey, PkiError> {
        let mut sans = vec![
            SanType::DnsName(NODE_SERVER_NAME.try_into()?),
            uri(format!("{NODE_URI}{id}"))?,
        ];
        for h in hosts {
            let san = match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    // A name a TLS client could ask for (letters, digits, '-' and '.' labels).
                    rustls::pki_types::DnsName::try_from(h.as_str()).map_err(|_| {
                        PkiError::Invalid(format!(
                            "bad host name '{h}': not an IP address or DNS name"
                        ))
                    })?;
                    SanType::DnsName(
                        h.as_str()
                            .try_into()
                            .map_err(|e| PkiError::Invalid(format!("bad host name '{h}': {e}")))?,
                    )
                }
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let mut p = leaf_params(sans, &format!("blixard node {id} (HTTPS)"), true);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }
}

/// The HTTPS server side: TLS 1.3, HTTP/1.1, no client certificate; sends its certificate and
/// the CA's.
pub fn https_server_config(
    own: &CertKey,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let chain = vec![pem_to_der(&own.cert_pem)?, pem_to_der(ca_pem)?];
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key_der(&own.key_pem)?)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An HTTPS client that trusts the cluster CA (and nothing else) and checks server names.
pub fn https_client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The base64 SHA-256 of a certificate's public key (SPKI): what Chromium's
/// `--ignore-certificate-errors-spki-list` pins, e.g. the cluster CA's for a test browser.
pub fn spki_sha256_base64(cert_pem: &str) -> Result<String, PkiError> {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let der = pem_to_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Invalid(format!("bad certificate: {e}")))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_certificate_names_the_hosts_and_the_node() {
        let ca = Ca::generate("c1").unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "example.test".to_string()];
        let cert = ca.issue_https(3, &hosts).unwrap();
        let der = pem_to_der(&cert.cert_pem).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = x.subject_alternative_name().unwrap().unwrap().value;
        let text = format!("{san:?}");
        assert!(text.contains("example.test"), "{text}");
        assert!(text.contains("blixard://node/3"), "{text}");
        assert!(
            text.contains("127.0.0.1") || text.contains("[127, 0, 0, 1]"),
            "{text}"
        );
        assert!(https_server_config(&cert, &ca.0.cert_pem).is_ok());
        assert!(https_client_config(&ca.0.cert_pem).is_ok());
        assert!(ca.issue_https(3, &["bad name!".to_string()]).is_err());
        assert_eq!(spki_sha256_base64(&ca.0.cert_pem).unwrap().len(), 44);
    }
}
