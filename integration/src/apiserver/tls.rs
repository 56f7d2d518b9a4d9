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

/// The CA (as PEM, for kubeconfigs), the TLS server configuration (which
/// asks for, but does not require, a client certificate from the CA), and
/// the CA itself, to issue client certificates.
pub(crate) struct Pki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
    pub issuer: Arc<CertifiedIssuer<'static, KeyPair>>,
}

impl Pki {
    /// A client certificate the Kubernetes way (CN = user, one O per
    /// group), signed by the CA, and its key, both PEM.
    pub(crate) fn client_cert(&self, user: &str, groups: &[&str]) -> Result<(String, String), StartError> {
        let key = KeyPair::generate().map_err(StartError::Certificate)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(StartError::Certificate)?;
        params.distinguished_name.push(DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, self.issuer.as_ref()).map_err(StartError::Certificate)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// The user a verified client certificate names: CN = user, O = groups,
/// plus `system:authenticated` (kube-apiserver's x509 authenticator).
pub(crate) fn client_cert_user(der: &[u8]) -> Option<super::auth::UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let username = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let mut groups: Vec<String> =
        subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
    groups.push("system:authenticated".to_owned());
    Some(super::auth::UserInfo { username, groups, ..Default::default() })
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
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(StartError::Tls)?;
    // Client certificates are optional, as on kube-apiserver: tokens work
    // without one.
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| StartError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StartError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(StartError::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Pki { ca_pem: ca.pem(), server_config: Arc::new(config), issuer: Arc::new(ca) })
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

    #[test]
    fn client_certificates_name_user_and_groups() {
        let pki = make_pki(None).expect("pki");
        let (cert, _key) = pki.client_cert("kubernetes-admin", &["system:masters"]).expect("cert");
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        let user = client_cert_user(&der).expect("user");
        assert_eq!(user.username, "kubernetes-admin");
        assert_eq!(user.groups, ["system:masters", "system:authenticated"]);
    }
}
