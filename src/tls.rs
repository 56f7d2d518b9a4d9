//! The TLS crypto provider hub and agent use: ring, with AES-128-GCM
//! preferred.
//!
//! ring's default order puts AES-256-GCM first. With AES-NI both are
//! constant-time and far beyond what TLS 1.3 needs, but AES-256 runs 14
//! rounds per block instead of 10, and every byte of the tunnel is
//! encrypted and decrypted twice on its way (caller ↔ hub, hub ↔ agent,
//! agent ↔ apiserver). Go's crypto/tls, which kube-apiserver and kubectl
//! use, prefers AES-128-GCM the same way on hardware with AES support.

use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{self, cipher_suite};

/// ring's provider with the TLS 1.3 suites in Ferry's order (AES-128-GCM,
/// AES-256-GCM, ChaCha20-Poly1305), then ring's TLS 1.2 suites as they are.
pub fn crypto_provider() -> CryptoProvider {
    let mut provider = ring::default_provider();
    let preferred = [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let rest = provider.cipher_suites.iter().filter(|s| !preferred.iter().any(|p| p.suite() == s.suite()));
    provider.cipher_suites = preferred.iter().chain(rest).copied().collect();
    provider
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_first_and_no_suite_lost() {
        let ours = crypto_provider();
        let ring = ring::default_provider();
        assert_eq!(ours.cipher_suites[0].suite(), cipher_suite::TLS13_AES_128_GCM_SHA256.suite());
        assert_eq!(ours.cipher_suites.len(), ring.cipher_suites.len());
        for s in &ring.cipher_suites {
            assert!(ours.cipher_suites.iter().any(|o| o.suite() == s.suite()), "{:?}", s.suite());
        }
    }
}
