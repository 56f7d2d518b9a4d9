//! Secrets (tokens, credentials) with masked `Debug`, and their hashing.
//!
//! Tokens have the form `PREFIX.ID.HEX`: the id (a cluster id for bootstrap
//! tokens, a token id for user tokens) lets the hub find the stored hash
//! without scanning, the hex part is 256 random bits. Only SHA-256 hashes are
//! stored.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::ids::{ClusterId, TokenId};

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
    /// Single-use token that enrolls an agent; its id is the cluster's.
    Bootstrap,
    /// A caller's bearer token (`ferryctl token create`); its id is the
    /// token's own.
    User,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Bootstrap => "ferryboot",
            TokenKind::User => "ferryuser",
        }
    }
}

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// Generates a fresh token of `kind` carrying `id` (see [`TokenKind`]).
pub fn generate_token(kind: TokenKind, id: &impl fmt::Display) -> Result<Secret, getrandom::Error> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    Ok(Secret(format!("{}.{}.{}", kind.prefix(), id, hex::encode(bytes))))
}

/// The id part of a token of `kind`; `None` when malformed or of another
/// kind. The claim is only trusted after the hash matches.
fn token_id(kind: TokenKind, token: &str) -> Option<&str> {
    let mut parts = token.splitn(3, '.');
    let (prefix, id, rest) = (parts.next()?, parts.next()?, parts.next()?);
    if prefix != kind.prefix() || rest.len() != 64 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(id)
}

/// The cluster a bootstrap token claims.
pub fn bootstrap_token_cluster(token: &str) -> Option<ClusterId> {
    ClusterId::parse(token_id(TokenKind::Bootstrap, token)?)
}

/// The token id a user token claims.
pub fn user_token_id(token: &str) -> Option<TokenId> {
    TokenId::parse(token_id(TokenKind::User, token)?)
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
    fn token_binds_id_and_kind() {
        let c = ClusterId::new();
        let t = generate_token(TokenKind::Bootstrap, &c).expect("random");
        assert_eq!(bootstrap_token_cluster(t.expose()), Some(c));
        assert_eq!(user_token_id(t.expose()), None, "a bootstrap token is not a user token");
        assert_eq!(bootstrap_token_cluster("ferryboot.x.y"), None);
        assert_ne!(generate_token(TokenKind::Bootstrap, &c).expect("random"), t);
        let id = TokenId::new();
        let u = generate_token(TokenKind::User, &id).expect("random");
        assert_eq!(user_token_id(u.expose()), Some(id));
        assert_eq!(bootstrap_token_cluster(u.expose()), None);
    }

    #[test]
    fn hash_comparison() {
        let s = Secret::new("a");
        assert!(hashes_equal(&s.hash(), &Secret::new("a").hash()));
        assert!(!hashes_equal(&s.hash(), &Secret::new("b").hash()));
        assert!(!hashes_equal("ab", "abc"));
    }
}
