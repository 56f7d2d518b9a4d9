//! Test PKI and kubeconfigs shared by the integration tests.

#![allow(dead_code)]

use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;

/// A PEM certificate and its key.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pair {
    /// The certificate's DER bytes.
    pub fn der(&self) -> Vec<u8> {
        rustls_pki_types::CertificateDer::from_pem_slice(self.cert.as_bytes()).expect("pem").to_vec()
    }
}

/// A certificate authority that issues hub and client certificates.
pub struct Ca {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signed");
        Ca { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A serving certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Pair {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "ferry-hub");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// A client certificate the Kubernetes way: CN = user, O = groups.
    pub fn client(&self, user: &str, groups: &[&str]) -> Pair {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, user);
        for g in groups {
            params.distinguished_name.push(rcgen::DnType::OrganizationName, *g);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pair { cert: cert.pem(), key: key.serialize_pem() }
    }
}

/// A kubeconfig in the hub's format: `*-data` fields, one context.
pub fn kubeconfig_yaml(server: &str, ca_pem: &str, client: &Pair) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1
kind: Config
current-context: ferry
clusters:
- name: ferry
  cluster:
    server: {server}
    certificate-authority-data: {ca}
contexts:
- name: ferry
  context:
    cluster: ferry
    user: me
users:
- name: me
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
        ca = b64(ca_pem),
        cert = b64(&client.cert),
        key = b64(&client.key),
    )
}
