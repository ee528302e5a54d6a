//! Credential files: one JSON file (mode 0600) holding the CA certificate, a client
//! certificate and its key, so a client can speak mutual TLS with any member.
//! `--init` writes the admin's at `DATA_DIR/admin.credentials`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{CertKey, PkiError, TlsMaterial};

#[derive(Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// Informational: who holds it and with which role (the certificate is what counts).
    pub name: String,
    pub role: String,
    /// PEM: the cluster CA certificate.
    pub ca_cert: String,
    /// PEM: the client certificate.
    pub cert: String,
    /// PEM: the client's private key.
    pub key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(name: &str, role: &str, ca_pem: &str, own: CertKey) -> Self {
        Self {
            name: name.into(),
            role: role.into(),
            ca_cert: ca_pem.into(),
            cert: own.cert_pem,
            key: own.key_pem,
        }
    }

    pub fn material(&self) -> TlsMaterial {
        TlsMaterial {
            ca_pem: self.ca_cert.clone(),
            own: CertKey {
                cert_pem: self.cert.clone(),
                key_pem: self.key.clone(),
            },
        }
    }

    /// The TLS client configuration these credentials give.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        self.material().client_config()
    }

    pub fn load(path: &Path) -> Result<Credentials, PkiError> {
        let bytes = std::fs::read(path).map_err(|e| {
            PkiError::Io(format!("cannot read credentials {}: {e}", path.display()))
        })?;
        Self::parse(&bytes, &path.display().to_string())
    }

    /// Parses and checks the contents of a credentials file (`what` names it in errors).
    pub fn parse(bytes: &[u8], what: &str) -> Result<Credentials, PkiError> {
        let c: Credentials = serde_json::from_slice(bytes).map_err(|e| {
            PkiError::Invalid(format!("{what} is not a blixard credentials file: {e}"))
        })?;
        c.material()
            .identity()
            .map_err(|e| PkiError::Invalid(format!("{what}: {e}")))?;
        Ok(c)
    }

    /// Writes the file with mode 0600 (atomically: a temporary file renamed into place).
    pub fn store(&self, path: &Path) -> Result<(), PkiError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| PkiError::Io(e.to_string()))?;
        write_private(path, &bytes)
    }
}

/// Writes `bytes` to `path` readable by its owner only (0600), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| PkiError::Io(format!("writing {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}
