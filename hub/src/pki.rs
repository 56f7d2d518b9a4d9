//! The hub's certificate authority.
//!
//! On first start the hub makes an ECDSA P-256 CA and keeps it in the data
//! dir (`ca.crt`, `ca.key` with mode 0600). The CA signs:
//!
//! - the hub's serving certificate (remade on every start, for the current
//!   advertise hosts);
//! - callers' client certificates: CN = user, one O per group (the
//!   Kubernetes convention), and exactly one scope, a URI SAN: either
//!   [`SCOPE_ALL_URI`] (admin credentials) or `ferry://clusters/NAME?id=ID`
//!   (kubeconfigs for one cluster). A certificate without a readable scope
//!   is refused, never treated as unscoped;
//! - agents' client certificates, from a certificate request whose key
//!   never leaves the agent: URI SAN `ferry://agents/CLUSTER_ID`, short
//!   lived, renewed over the control stream. The hub keeps their serials.
//!
//! rcgen makes the CA, serving and agent certificates; caller certificates
//! are built with `x509-cert`, because rcgen's subject can hold only one O
//! attribute and callers need several groups.

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

use ferry::ids::ClusterId;

use crate::auth::{AuthMethod, Authenticated, Scope};
use crate::files;

/// Lifetime of the admin client certificate in `admin.kubeconfig`
/// (rewritten at every start).
pub const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far back certificates are dated, so a peer whose clock is a little
/// behind accepts them at once.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);
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
    /// Only one of `ca.crt` and `ca.key` exists: making a new CA would
    /// break every agent that pins the old one.
    #[error(
        "the data dir has {have} but no {missing}; restore {missing} (or move {have} away to start over with a new CA, which every agent must then be given)"
    )]
    HalfCa {
        /// The file present.
        have: &'static str,
        /// The file missing.
        missing: &'static str,
    },
    /// The agent's certificate request is malformed or its signature wrong.
    #[error("invalid certificate request: {0}")]
    Request(String),
}

/// A client certificate and its private key, PEM-encoded.
pub struct IssuedCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8).
    pub key_pem: Secret,
    /// When it expires, seconds since the Unix epoch.
    pub not_after: u64,
}

/// An agent certificate signed from the agent's request.
#[derive(Clone, Debug)]
pub struct IssuedAgentCert {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Serial number, lower-case hex (what the store keeps).
    pub serial: String,
    /// When it expires, seconds since the Unix epoch.
    pub not_after: u64,
}

/// What a caller certificate may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertScope {
    /// Every cluster (as grants allow) and the management API: admin
    /// credentials only.
    All,
    /// One cluster, through the gateway only.
    Cluster {
        /// Cluster name.
        name: String,
        /// Cluster id at issuance.
        id: String,
    },
}

/// A verified peer certificate, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerCert {
    /// A caller (kubectl, ferryctl, SDK).
    User(Authenticated),
    /// An agent of one cluster.
    Agent(AgentPeer),
    /// Another hub replica (its id), forwarding requests (docs/ha.md).
    Replica(String),
}

/// An agent, as its certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPeer {
    /// The cluster the certificate is bound to.
    pub cluster_id: ClusterId,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// When it expires, seconds since the Unix epoch.
    pub not_after: u64,
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
        match (crt_path.exists(), key_path.exists()) {
            (true, false) | (false, true) => {
                let (have, missing) =
                    if crt_path.exists() { ("ca.crt", "ca.key") } else { ("ca.key", "ca.crt") };
                return Err(PkiError::HalfCa { have, missing });
            }
            _ => {}
        }
        if crt_path.exists() && key_path.exists() {
            warn_if_readable_by_others(&key_path);
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
        params.not_before = (SystemTime::now() - CLOCK_SKEW).into();
        params.not_after = (SystemTime::now() + SERVING_CERT_LIFETIME).into();
        let cert = params.signed_by(&key, &self.issuer()?)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| PkiError::Build(format!("serving key: {e}")))?;
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// A client certificate for `identity` (CN = user, one O per group),
    /// valid for `lifetime`, carrying `scope`.
    pub fn client_cert(
        &self,
        identity: &Identity,
        scope: &CertScope,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        use p256::pkcs8::DecodePrivateKey;
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        use x509_cert::der::asn1::Ia5String;
        use x509_cert::ext::pkix::name::GeneralName;
        use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
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
        let profile = Profile::Leaf {
            issuer: ca.tbs_certificate.subject.clone(),
            enable_key_agreement: false,
            enable_key_encipherment: false,
        };
        let not_before = SystemTime::now() - CLOCK_SKEW;
        let not_after = SystemTime::now() + lifetime;
        let validity = Validity {
            not_before: x509_cert::time::Time::try_from(not_before).map_err(|e| build(&e))?,
            not_after: x509_cert::time::Time::try_from(not_after).map_err(|e| build(&e))?,
        };
        let serial = SerialNumber::new(&random_serial()).map_err(|e| build(&e))?;
        let mut builder = CertificateBuilder::new(profile, serial, validity, subject, spki, &signer)
            .map_err(|e| build(&e))?;
        builder
            .add_extension(&ExtendedKeyUsage(vec![x509_cert::der::oid::db::rfc5280::ID_KP_CLIENT_AUTH]))
            .map_err(|e| build(&e))?;
        let uri = Ia5String::new(&scope_uri(scope)).map_err(|e| build(&e))?;
        builder
            .add_extension(&SubjectAltName(vec![GeneralName::UniformResourceIdentifier(uri)]))
            .map_err(|e| build(&e))?;
        let cert = builder.build::<p256::ecdsa::DerSignature>().map_err(|e| build(&e))?;
        let der = cert.to_der().map_err(|e| build(&e))?;
        let cert_pem = pem_encode("CERTIFICATE", &der);
        Ok(IssuedCert { cert_pem, key_pem: Secret::new(leaf.serialize_pem()), not_after: unix(not_after) })
    }

    /// An agent certificate for cluster `cluster_id` from the agent's
    /// PKCS#10 request (DER). Only the request's public key is used (its
    /// signature proves the agent holds the key); subject, names, usages
    /// and lifetime are the hub's.
    pub fn agent_cert(
        &self,
        csr_der: &[u8],
        cluster_id: ClusterId,
        cluster_name: &str,
        lifetime: Duration,
    ) -> Result<IssuedAgentCert, PkiError> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let request = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::Request(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("{AGENT_CN_PREFIX}{cluster_name}"));
        let uri = format!("{AGENT_URI_PREFIX}{cluster_id}");
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| PkiError::Subject("agent URI".into()))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial = random_serial();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let not_after = SystemTime::now() + lifetime;
        // Agents renew two thirds into [not_before, not_after]: backdating
        // by more than a tenth of a short lifetime would move that point.
        params.not_before = (SystemTime::now() - CLOCK_SKEW.min(lifetime / 10)).into();
        params.not_after = not_after.into();
        let signed = rcgen::CertificateSigningRequestParams { params, public_key: request.public_key }
            .signed_by(&self.issuer()?)?;
        Ok(IssuedAgentCert {
            cert_pem: signed.pem(),
            serial: hex::encode(serial),
            not_after: unix(not_after),
        })
    }

    /// The client certificate hub replica `replica_id` presents to the
    /// others when it forwards requests (URI SAN `ferry://hubs/ID`).
    pub fn replica_cert(&self, replica_id: &str, lifetime: Duration) -> Result<IssuedCert, PkiError> {
        self.replica_cert_from(replica_id, SystemTime::now(), lifetime)
    }

    /// [`Ca::replica_cert`] valid for `lifetime` from `from` (backdated by
    /// the allowed clock skew).
    pub fn replica_cert_from(
        &self,
        replica_id: &str,
        from: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let leaf = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("ferry-hub:{replica_id}"));
        let uri = format!("{REPLICA_URI_PREFIX}{replica_id}");
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| PkiError::Subject("replica URI".into()))?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
        let not_after = from + lifetime;
        params.not_before = (from - CLOCK_SKEW).into();
        params.not_after = not_after.into();
        let signed = params.signed_by(&leaf, &self.issuer()?)?;
        Ok(IssuedCert {
            cert_pem: signed.pem(),
            key_pem: Secret::new(leaf.serialize_pem()),
            not_after: unix(not_after),
        })
    }
}

/// A 128-bit positive serial from the OS.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    getrandom_fill(&mut serial);
    serial[0] &= 0x7f;
    // A leading zero byte would be dropped by DER and change the hex we
    // store; keep the first byte non-zero.
    serial[0] |= 0x01;
    serial
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The CA key must be the hub's alone; a group- or world-readable key is
/// worth a warning at every start (the hub still starts: the operator may
/// have reasons, such as a read-only mount).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the CA key is readable by other users; chmod 600 it"
            );
        }
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
/// URI SAN of unscoped (admin) caller certificates.
pub const SCOPE_ALL_URI: &str = "ferry://scope/all";
/// URI SAN prefix of agent certificates (the cluster id follows).
pub const AGENT_URI_PREFIX: &str = "ferry://agents/";
/// URI SAN prefix of hub replica certificates (the replica id follows).
pub const REPLICA_URI_PREFIX: &str = "ferry://hubs/";
/// Common-name prefix of agent certificates (the cluster name follows).
pub const AGENT_CN_PREFIX: &str = "ferry-agent:";

fn scope_uri(scope: &CertScope) -> String {
    match scope {
        CertScope::All => SCOPE_ALL_URI.to_owned(),
        CertScope::Cluster { name, id } => format!("{CLUSTER_URI_PREFIX}{name}?id={id}"),
    }
}

/// Reads a peer certificate the TLS layer already verified against the hub
/// CA: an agent (by its agent URI) or a caller (CN = user, O = groups, and
/// exactly one scope URI). Anything else is refused with the reason.
pub fn parse_peer_cert(der: &[u8]) -> Result<PeerCert, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| "unreadable client certificate".to_owned())?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with("ferry://")
            {
                uris.push(*uri);
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(format!(
            "the client certificate carries {} Ferry scopes (exactly one is required); get a new kubeconfig",
            uris.len()
        ));
    };
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or_default();
    if let Some(id) = uri.strip_prefix(REPLICA_URI_PREFIX) {
        return Ok(PeerCert::Replica(id.to_owned()));
    }
    if let Some(id) = uri.strip_prefix(AGENT_URI_PREFIX) {
        let cluster_id = ClusterId::parse(id).ok_or("malformed agent certificate")?;
        let serial = hex::encode(cert.raw_serial());
        return Ok(PeerCert::Agent(AgentPeer { cluster_id, serial, not_after }));
    }
    let scope = if *uri == SCOPE_ALL_URI {
        Scope::All
    } else if let Some(rest) = uri.strip_prefix(CLUSTER_URI_PREFIX)
        && let Some((name, id)) = rest.split_once("?id=")
        && let Some(id) = ClusterId::parse(id)
        && !name.is_empty()
    {
        Scope::Cluster { name: name.to_owned(), id }
    } else {
        return Err("the client certificate's scope is not readable; get a new kubeconfig".to_owned());
    };
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .ok_or("the client certificate has no readable CN")?
        .to_owned();
    let mut groups = Vec::new();
    for o in subject.iter_organization() {
        groups.push(o.as_str().map_err(|_| "the client certificate has an unreadable O")?.to_owned());
    }
    let identity = Identity { user, groups, ..Default::default() };
    Ok(PeerCert::User(Authenticated {
        identity,
        scope,
        method: AuthMethod::ClientCert,
        expires_at: not_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_certificates_name_the_replica_and_are_no_caller_credential() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("ca");
        let issued = ca.replica_cert("r-1", Duration::from_secs(60)).expect("replica cert");
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(parse_peer_cert(&der), Ok(PeerCert::Replica("r-1".into())));
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn parse(pem: &str) -> Result<PeerCert, String> {
        parse_peer_cert(&CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem"))
    }

    #[test]
    fn ca_persists_and_issues_scoped_multi_group_client_certs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let again = Ca::load_or_create(dir.path()).expect("load");
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let id = Identity {
            user: "alice".into(),
            groups: vec!["dev".into(), "ops,team".into(), "system:authenticated".into()],
            ..Default::default()
        };
        let issued = again.client_cert(&id, &CertScope::All, DAY).expect("issue");
        let PeerCert::User(caller) = parse(&issued.cert_pem).expect("caller") else { panic!("not a user") };
        assert_eq!(caller.identity, id);
        assert_eq!(caller.scope, Scope::All);
        assert!(caller.expires_at.abs_diff(issued.not_after) <= 1);
        let cid = ClusterId::new();
        let scoped = again
            .client_cert(&id, &CertScope::Cluster { name: "edge-1".into(), id: cid.to_string() }, DAY)
            .expect("issue");
        let PeerCert::User(caller) = parse(&scoped.cert_pem).expect("caller") else { panic!("not a user") };
        assert_eq!(caller.scope, Scope::Cluster { name: "edge-1".into(), id: cid });
        assert_eq!(format!("{:?}", issued.key_pem), "MASKED");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key")).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_certificate_without_exactly_one_scope_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        // A CA-signed certificate with no Ferry scope at all (as rcgen makes
        // them): refused, never read as unscoped.
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "mallory");
        let cert = params.signed_by(&key, &ca.issuer().expect("issuer")).expect("sign");
        let err = parse(&cert.pem()).expect_err("no scope");
        assert!(err.contains("0 Ferry scopes"), "{err}");
        // Two scopes: refused.
        params.subject_alt_names = vec![
            SanType::URI(SCOPE_ALL_URI.try_into().expect("uri")),
            SanType::URI("ferry://clusters/a?id=x".try_into().expect("uri")),
        ];
        let cert = params.signed_by(&key, &ca.issuer().expect("issuer")).expect("sign");
        assert!(parse(&cert.pem()).is_err());
        // An unreadable cluster scope: refused.
        params.subject_alt_names = vec![SanType::URI("ferry://clusters/a".try_into().expect("uri"))];
        let cert = params.signed_by(&key, &ca.issuer().expect("issuer")).expect("sign");
        assert!(parse(&cert.pem()).expect_err("no id").contains("scope"));
    }

    #[test]
    fn agent_certificates_come_from_the_agents_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let agent_key = KeyPair::generate().expect("key");
        let mut req = CertificateParams::default();
        // Whatever the request asks for is ignored.
        req.distinguished_name.push(DnType::CommonName, "admin");
        req.subject_alt_names = vec![SanType::URI(SCOPE_ALL_URI.try_into().expect("uri"))];
        let csr = req.serialize_request(&agent_key).expect("csr");
        let cid = ClusterId::new();
        let issued = ca.agent_cert(csr.der(), cid, "edge-1", DAY).expect("issue");
        match parse(&issued.cert_pem).expect("agent") {
            PeerCert::Agent(a) => {
                assert_eq!(a.cluster_id, cid);
                assert_eq!(a.serial, issued.serial);
                assert_eq!(a.not_after, issued.not_after);
            }
            other => panic!("not an agent: {other:?}"),
        }
        // The certificate is for the agent's own key.
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&agent_key).as_slice()
        );
        // A request whose signature does not match its key is refused.
        let mut bad = csr.der().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(matches!(ca.agent_cert(&bad, cid, "edge-1", DAY), Err(PkiError::Request(_))));
        let again = ca.agent_cert(csr.der(), cid, "edge-1", DAY).expect("issue");
        assert_ne!(again.serial, issued.serial, "every certificate has its own serial");
    }

    #[test]
    fn half_a_ca_is_an_error_not_a_new_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        Ca::load_or_create(dir.path()).expect("create");
        std::fs::remove_file(dir.path().join("ca.key")).expect("rm");
        let err = Ca::load_or_create(dir.path()).expect_err("half a CA");
        assert!(err.to_string().contains("ca.key"), "{err}");
        assert!(!dir.path().join("ca.key").exists(), "no new key was made");
    }

    #[test]
    fn issued_client_cert_is_accepted_by_a_verifier_pinned_to_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(dir.path()).expect("create");
        let bob = Identity { user: "bob".into(), ..Default::default() };
        let issued = ca.client_cert(&bob, &CertScope::All, DAY).expect("issue");
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
        let foreign = other.client_cert(&bob, &CertScope::All, DAY).expect("issue");
        let der = CertificateDer::from_pem_slice(foreign.cert_pem.as_bytes()).expect("pem");
        assert!(verifier.verify_client_cert(&der, &[], now).is_err());
    }

    #[test]
    fn rdn_escaping() {
        assert_eq!(escape_rdn("a,b+c=d"), "a\\,b\\+c\\=d");
        assert_eq!(escape_rdn("#x "), "\\#x\\ ");
    }
}
