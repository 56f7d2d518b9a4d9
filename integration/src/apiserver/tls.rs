//! The test apiserver's own PKI: a fresh CA and a serving certificate for
//! the loopback names, and the rustls server configuration (ring provider,
//! ALPN `h2` and `http/1.1`).

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::error::StartError;

/// The CA (as PEM, for kubeconfigs) and the TLS server configuration.
pub(crate) struct Pki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Makes a CA and a serving certificate for `localhost`, `127.0.0.1`, `::1`
/// and `extra_ip` (the listen address, if it is another one).
pub(crate) fn make_pki(extra_ip: Option<IpAddr>) -> Result<Pki, StartError> {
    let ca_key = KeyPair::generate().map_err(StartError::Certificate)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(StartError::Certificate)?;
    ca_params.distinguished_name.push(DnType::CommonName, "ferry-test-apiserver-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(StartError::Certificate)?;

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Some(ip) = extra_ip.filter(|ip| !ip.is_unspecified() && !ip.is_loopback()) {
        names.push(ip.to_string());
    }
    let leaf_key = KeyPair::generate().map_err(StartError::Certificate)?;
    let mut leaf = CertificateParams::new(names).map_err(StartError::Certificate)?;
    leaf.distinguished_name.push(DnType::CommonName, "test-apiserver");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&leaf_key, &ca).map_err(StartError::Certificate)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StartError::Tls)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(StartError::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Pki { ca_pem: ca.pem(), server_config: Arc::new(config) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn the_ca_pem_is_a_usable_trust_anchor() {
        let pki = make_pki(None).expect("pki");
        let ca = CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).expect("pem");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("anchor");
        assert_eq!(roots.len(), 1);
        assert_eq!(pki.server_config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
