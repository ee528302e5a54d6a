//! The join token string a joiner is given: `blx1.` followed by base64url of a small JSON
//! document with the cluster CA's SHA-256 fingerprint (so the joiner can verify the cluster
//! before it sends anything), member addresses, the token id and its random secret. The
//! cluster stores only the secret's SHA-256.

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const PREFIX: &str = "blx1.";
/// Longest token string accepted (addresses included).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most member addresses a token may carry (a token for a larger cluster names some of them).
pub const MAX_TOKEN_ADDRS: usize = 64;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenString {
    /// SHA-256 (hex) of the cluster CA certificate.
    #[serde(rename = "ca")]
    pub ca_fingerprint: String,
    /// Member addresses (HOST:PORT) a joiner may reach.
    pub addrs: Vec<String>,
    /// Token id (16 hex digits).
    pub id: String,
    /// The secret (64 hex digits).
    pub secret: String,
}

impl std::fmt::Debug for JoinTokenString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinTokenString")
            .field("id", &self.id)
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// `bytes` random bytes from the OS, lower-case hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SHA-256 (hex) of a token secret: what the replicated state stores.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl JoinTokenString {
    /// A new token with a fresh random id and secret.
    pub fn generate(ca_fingerprint: &str, addrs: Vec<String>) -> Self {
        Self {
            ca_fingerprint: ca_fingerprint.into(),
            addrs,
            id: random_hex(8),
            secret: random_hex(32),
        }
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses and checks a token string; one clear error for anything malformed.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            "this is not a blixard join token (create one with `blixard cluster token create`)"
                .to_string()
        };
        let s = s.trim();
        if s.len() > MAX_TOKEN_LEN {
            return Err(bad());
        }
        let b64 = s.strip_prefix(PREFIX).ok_or_else(bad)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| bad())?;
        let t: JoinTokenString = serde_json::from_slice(&json).map_err(|_| bad())?;
        if !is_hex(&t.ca_fingerprint, 64)
            || !is_hex(&t.id, 16)
            || !is_hex(&t.secret, 64)
            || t.addrs.len() > MAX_TOKEN_ADDRS
        {
            return Err(bad());
        }
        Ok(t)
    }

    pub fn secret_hash(&self) -> String {
        secret_hash(&self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let t = JoinTokenString::generate(&"a".repeat(64), vec!["127.0.0.1:7001".into()]);
        assert_eq!(JoinTokenString::parse(&t.encode()).unwrap(), t);
        assert_ne!(
            t.secret,
            JoinTokenString::generate(&"a".repeat(64), vec![]).secret
        );
        for bad in ["", "blx1.", "blx1.!!!", "xyz", &t.encode()[..20]] {
            assert!(JoinTokenString::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn at_most_max_token_addrs_addresses() {
        let addrs = |n: usize| (0..n).map(|i| format!("10.0.{}.{}:7001", i / 256, i % 256));
        let t = JoinTokenString::generate(&"a".repeat(64), addrs(MAX_TOKEN_ADDRS).collect());
        assert!(t.encode().len() <= MAX_TOKEN_LEN);
        assert_eq!(JoinTokenString::parse(&t.encode()).unwrap(), t);
        let t = JoinTokenString::generate(&"a".repeat(64), addrs(MAX_TOKEN_ADDRS + 1).collect());
        assert!(JoinTokenString::parse(&t.encode()).is_err());
    }
}
