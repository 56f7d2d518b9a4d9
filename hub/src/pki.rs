//! The hub's certificate authority.
//!
//! On first start the hub makes an ECDSA P-256 CA and keeps it in the data
//! dir (`ca.crt`, `ca.key` with mode 0600). The CA signs the hub's serving
//! certificate (remade on every start, for the current advertise hosts) and
//! the client certificates it issues to callers: CN = user, one O per group,
//! the Kubernetes convention. rcgen makes the CA and serving certificate;
//! client certificates are built with `x509-cert`, because rcgen's subject
//! can hold only one O attribute and callers need several groups.

use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use ferry::identity::Identity;
use ferry::secret::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_cert::der::{Decode, Encode};

use crate::auth::Authenticated;
use crate::files;

/// Lifetime of client certificates the hub issues.
pub const CLIENT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the serving certificate (remade at every start).
pub const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing the CA files failed.
    #[error("CA files in {dir}: {source}")]
    Io {
        /// Data dir.
        dir: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// rcgen failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// x509-cert building failed.
    #[error("client certificate: {0}")]
    Build(String),
    /// A subject that cannot be encoded.
    #[error("invalid subject: {0}")]
    Subject(String),
}

/// A client certificate and its private key, PEM-encoded.
pub struct IssuedCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: Secret,
}

/// The hub's CA, loaded or created in the data dir.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("key", &"MASKED").finish()
    }
}

impl Ca {
    /// Loads `ca.crt` and `ca.key` from `dir`, creating them on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let io = |source| PkiError::Io { dir: dir.display().to_string(), source };
        let (crt_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if crt_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&crt_path).map_err(io)?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io)?;
            let key = KeyPair::from_pem(&key_pem)?;
            let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(|e| PkiError::Build(format!("ca.crt: {e}")))?;
            return Ok(Ca { cert_pem, cert_der, key });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "ferry-hub-ca");
        params.distinguished_name.push(DnType::OrganizationName, "ferry");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = SystemTime::now().into();
        params.not_after = (SystemTime::now() + CA_LIFETIME).into();
        let cert = params.self_signed(&key)?;
        files::write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io)?;
        files::write_atomic(&crt_path, cert.pem().as_bytes()).map_err(io)?;
        Ok(Ca { cert_pem: cert.pem(), cert_der: cert.der().clone(), key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (for trust stores).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.cert_der, &self.key)?)
    }

    /// A serving certificate for the given DNS names and IPs, and its key.
    pub fn serving_cert(
        &self,
        hosts: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "ferry-hub");
        for h in hosts {
            let san = match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    h.clone().try_into().map_err(|_| PkiError::Subject(format!("host {h:?}")))?,
                ),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = (SystemTime::now() - Duration::from_secs(300)).into();
        params.not_after = (SystemTime::now() + SERVING_CERT_LIFETIME).into();
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| PkiError::Build(format!("serving key: {e}")))?;
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// A client certificate for `identity`: CN = user, one O per group. With
    /// `clusters` non-empty, it is valid only for those clusters (one URI
    /// SAN `ferry://clusters/NAME` each); an empty list means any cluster.
    pub fn client_cert(&self, identity: &Identity, clusters: &[String]) -> Result<IssuedCert, PkiError> {
        use p256::pkcs8::DecodePrivateKey;
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        use x509_cert::ext::pkix::ExtendedKeyUsage;
        use x509_cert::name::Name;
        use x509_cert::serial_number::SerialNumber;
        use x509_cert::spki::SubjectPublicKeyInfoOwned;
        use x509_cert::time::Validity;

        let build = |e: &dyn std::fmt::Display| PkiError::Build(e.to_string());
        let signer =
            p256::ecdsa::SigningKey::from_pkcs8_der(&self.key.serialize_der()).map_err(|e| build(&e))?;
        let ca = x509_cert::Certificate::from_der(&self.cert_der).map_err(|e| build(&e))?;
        let leaf = KeyPair::generate()?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&rcgen::PublicKeyData::subject_public_key_info(&leaf))
            .map_err(|e| build(&e))?;
        // RFC 4514 strings list RDNs last-first; reversing the groups keeps
        // them in the caller's order in the certificate.
        let mut subject = format!("CN={}", escape_rdn(&identity.user));
        for g in identity.groups.iter().rev() {
            subject.push_str(&format!(",O={}", escape_rdn(g)));
        }
        let subject = Name::from_str(&subject).map_err(|e| PkiError::Subject(e.to_string()))?;
        let mut serial = [0u8; 16];
        getrandom_fill(&mut serial);
        serial[0] &= 0x7f;
        let profile = Profile::Leaf {
            issuer: ca.tbs_certificate.subject.clone(),
            enable_key_agreement: false,
            enable_key_encipherment: false,
        };
        let validity = Validity::from_now(CLIENT_CERT_LIFETIME).map_err(|e| build(&e))?;
        let serial = SerialNumber::new(&serial).map_err(|e| build(&e))?;
        let mut builder = CertificateBuilder::new(profile, serial, validity, subject, spki, &signer)
            .map_err(|e| build(&e))?;
        builder
            .add_extension(&ExtendedKeyUsage(vec![x509_cert::der::oid::db::rfc5280::ID_KP_CLIENT_AUTH]))
            .map_err(|e| build(&e))?;
        if !clusters.is_empty() {
            use x509_cert::der::asn1::Ia5String;
            use x509_cert::ext::pkix::SubjectAltName;
            use x509_cert::ext::pkix::name::GeneralName;
            let names = clusters
                .iter()
                .map(|c| {
                    Ia5String::new(&format!("{CLUSTER_URI_PREFIX}{c}"))
                        .map(GeneralName::UniformResourceIdentifier)
                        .map_err(|e| build(&e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            builder.add_extension(&SubjectAltName(names)).map_err(|e| build(&e))?;
        }
        let cert = builder.build::<p256::ecdsa::DerSignature>().map_err(|e| build(&e))?;
        let der = cert.to_der().map_err(|e| build(&e))?;
        let cert_pem = pem_encode("CERTIFICATE", &der);
        Ok(IssuedCert { cert_pem, key_pem: Secret::new(leaf.serialize_pem()) })
    }
}

fn getrandom_fill(buf: &mut [u8]) {
    // A 128-bit serial from the OS; on the impossible failure fall back to the
    // clock so issuance never panics (serials need uniqueness, not secrecy).
    if ferry::secret::fill_random(buf).is_err() {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (nanos >> ((i % 16) * 8)) as u8;
        }
    }
}

/// Escapes an RFC 4514 attribute value.
fn escape_rdn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == v.chars().count() - 1 && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// URI SAN prefix that scopes a client certificate to one cluster.
pub const CLUSTER_URI_PREFIX: &str = "ferry://clusters/";

/// Reads the caller (CN = user, O = groups, cluster scope from URI SANs)
/// from a client certificate the TLS layer already verified against the hub
/// CA.
pub fn caller_from_cert(der: &[u8]) -> Option<Authenticated> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
    let mut clusters = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && let Some(c) = uri.strip_prefix(CLUSTER_URI_PREFIX)
            {
                clusters.push(c.to_owned());
            }
        }
    }
    let identity = Identity { user, groups, ..Default::default() };
    Some(Authenticated { identity, clusters: (!clusters.is_empty()).then_some(clusters) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_issues_multi_group_client_certs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let again = Ca::load_or_create(dir.path()).expect("load");
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let id = Identity {
            user: "alice".into(),
            groups: vec!["dev".into(), "ops,team".into(), "system:authenticated".into()],
            ..Default::default()
        };
        let issued = again.client_cert(&id, &[]).expect("issue");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        let caller = caller_from_cert(&der).expect("caller");
        assert_eq!(caller.identity, id);
        assert_eq!(caller.clusters, None, "no scope: any cluster");
        let scoped = again.client_cert(&id, &["edge-1".to_owned()]).expect("issue");
        let der = CertificateDer::from_pem_slice(scoped.cert_pem.as_bytes()).expect("pem");
        assert_eq!(caller_from_cert(&der).expect("caller").clusters, Some(vec!["edge-1".to_owned()]));
        assert_eq!(format!("{:?}", issued.key_pem), "MASKED");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key")).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn issued_client_cert_is_accepted_by_a_verifier_pinned_to_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let issued =
            ca.client_cert(&Identity { user: "bob".into(), ..Default::default() }, &[]).expect("issue");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).expect("root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .expect("v");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        let now = rustls_pki_types::UnixTime::now();
        verifier.verify_client_cert(&der, &[], now).expect("client cert chains to the hub CA");
        let other = Ca::load_or_create(tempfile::tempdir().expect("t").path()).expect("other");
        let foreign =
            other.client_cert(&Identity { user: "bob".into(), ..Default::default() }, &[]).expect("issue");
        let der = CertificateDer::from_pem_slice(foreign.cert_pem.as_bytes()).expect("pem");
        assert!(verifier.verify_client_cert(&der, &[], now).is_err());
    }

    #[test]
    fn rdn_escaping() {
        assert_eq!(escape_rdn("a,b+c=d"), "a\\,b\\+c\\=d");
        assert_eq!(escape_rdn("#x "), "\\#x\\ ");
    }
}
