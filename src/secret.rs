//! Secrets (tokens, credentials) with masked `Debug`, and their hashing.
//!
//! Tokens have the form `PREFIX.CLUSTER_ID.HEX`: the cluster id lets the hub
//! find the stored hash without scanning, the hex part is 256 random bits.
//! Only SHA-256 hashes are stored.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::ids::ClusterId;

/// A secret string; `Debug` and `Display` print `MASKED`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret value, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// SHA-256 of the value, hex-encoded: what stores keep.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// Kind of token, the first dot-separated part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// Single-use token that enrolls an agent.
    Bootstrap,
    /// An agent's per-cluster credential.
    AgentCredential,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Bootstrap => "ferryboot",
            TokenKind::AgentCredential => "ferryagent",
        }
    }
}

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// Generates a fresh token of `kind` bound to `cluster`.
pub fn generate_token(kind: TokenKind, cluster: ClusterId) -> Result<Secret, getrandom::Error> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    Ok(Secret(format!("{}.{}.{}", kind.prefix(), cluster, hex::encode(bytes))))
}

/// Splits a token into the cluster it claims; `None` when malformed or of
/// another kind. The claim is only trusted after the hash matches.
pub fn token_cluster(kind: TokenKind, token: &str) -> Option<ClusterId> {
    let mut parts = token.splitn(3, '.');
    let (prefix, id, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix != kind.prefix() || rest.len() != 64 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    ClusterId::parse(id)
}

/// Compares two hashes in time independent of where they differ.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_masked() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "MASKED MASKED");
    }

    #[test]
    fn token_binds_cluster_and_kind() {
        let c = ClusterId::new();
        let t = generate_token(TokenKind::Bootstrap, c).expect("random");
        assert_eq!(token_cluster(TokenKind::Bootstrap, t.expose()), Some(c));
        assert_eq!(token_cluster(TokenKind::AgentCredential, t.expose()), None);
        assert_eq!(token_cluster(TokenKind::Bootstrap, "ferryboot.x.y"), None);
        assert_ne!(generate_token(TokenKind::Bootstrap, c).expect("random"), t);
    }

    #[test]
    fn hash_comparison() {
        let s = Secret::new("a");
        assert!(hashes_equal(&s.hash(), &Secret::new("a").hash()));
        assert!(!hashes_equal(&s.hash(), &Secret::new("b").hash()));
        assert!(!hashes_equal("ab", "abc"));
    }
}
