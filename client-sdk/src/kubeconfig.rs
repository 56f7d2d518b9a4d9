//! Where the hub is and who we are, read from a kubeconfig.
//!
//! The hub writes `DATA_DIR/admin.kubeconfig` in the standard format: the
//! current context's cluster `server` is the hub base URL, its
//! `certificate-authority-data` the hub CA, and the user carries a client
//! certificate from that CA (CN = user, O = groups) or a hub bearer token
//! (`token`, `token-file`). Paths (`certificate-authority`,
//! `client-certificate`, `client-key`, `token-file`) work too, relative to
//! the kubeconfig's directory as kubectl resolves them.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ferry::secret::Secret;
use kube::config::{AuthInfo, Cluster, Kubeconfig, KubeconfigError};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use secrecy::ExposeSecret as _;

/// The hub's address, the CA that signs its certificate, and the caller's
/// client certificate: everything needed to call the management API.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Hub base URL, e.g. `https://127.0.0.1:8443`. Only scheme, host and
    /// port are used for the management API.
    pub server: http::Uri,
    /// Name to verify the hub certificate against instead of the URL host
    /// (the cluster's `tls-server-name`), when set.
    pub tls_server_name: Option<String>,
    /// The hub CA, PEM: the only certificate trusted for the hub.
    pub ca_pem: String,
    /// How the caller authenticates.
    pub credential: HubCredential,
}

/// A caller's credential for the hub.
#[derive(Clone, Debug)]
pub enum HubCredential {
    /// A client certificate from the hub CA.
    ClientCert {
        /// The certificate (chain), PEM.
        cert_pem: String,
        /// The private key, PEM.
        key_pem: Secret,
    },
    /// A hub bearer token (`ferryctl token create`).
    Token(Secret),
}

/// Why a kubeconfig file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HubConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read kubeconfig {}", path.display())]
    Read {
        /// The kubeconfig path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a kubeconfig (bad YAML, unmergeable documents).
    #[error("cannot parse kubeconfig {}", path.display())]
    Parse {
        /// The kubeconfig path.
        path: PathBuf,
        /// What kube reported.
        #[source]
        source: KubeconfigError,
    },
    /// The file is a kubeconfig but lacks something the hub connection needs.
    #[error("kubeconfig {} cannot be used to reach the hub", path.display())]
    Invalid {
        /// The kubeconfig path.
        path: PathBuf,
        /// What is missing or wrong.
        #[source]
        source: InvalidKubeconfig,
    },
}

/// Where [`HubConfig::from_default_locations`] looks, after
/// `$FERRY_KUBECONFIG`: the admin kubeconfig of a hub started in the
/// working directory.
pub const DEFAULT_KUBECONFIG: &str = "./ferry-data/admin.kubeconfig";

/// The environment variable naming the kubeconfig to use.
pub const KUBECONFIG_ENV: &str = "FERRY_KUBECONFIG";

/// What is missing or wrong inside a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum InvalidKubeconfig {
    /// No `current-context` is set.
    #[error("no current-context is set; set one with `kubectl config use-context NAME --kubeconfig FILE`")]
    NoCurrentContext,
    /// `current-context` names a context that is not in the file.
    #[error("current-context {0:?} is not defined under `contexts`")]
    ContextNotFound(String),
    /// The context names a cluster that is not in the file.
    #[error("context {context:?} refers to cluster {cluster:?}, which is not defined under `clusters`")]
    ClusterNotFound {
        /// The context.
        context: String,
        /// The missing cluster.
        cluster: String,
    },
    /// The context names no user.
    #[error("context {0:?} has no user; the hub needs a user with a client certificate")]
    NoUser(String),
    /// The context names a user that is not in the file.
    #[error("context {context:?} refers to user {user:?}, which is not defined under `users`")]
    UserNotFound {
        /// The context.
        context: String,
        /// The missing user.
        user: String,
    },
    /// A required field is absent.
    #[error("{entry} has no `{field}`{hint}")]
    MissingField {
        /// Which entry, e.g. `cluster "hub"`.
        entry: String,
        /// The field (or pair of alternatives) that is missing.
        field: &'static str,
        /// Extra advice, starting with `; ` when present.
        hint: &'static str,
    },
    /// A field is present but unusable.
    #[error("`{field}` of {entry} is invalid: {reason}")]
    InvalidField {
        /// Which entry, e.g. `user "admin"`.
        entry: String,
        /// The field.
        field: &'static str,
        /// Why it is unusable.
        reason: String,
    },
}

impl HubConfig {
    /// A hub at `url` (`https://host:port`), trusting only `ca_pem` (the
    /// hub's `ca.crt`), with `credential`.
    pub fn new(
        url: &str,
        ca_pem: impl Into<String>,
        credential: HubCredential,
    ) -> Result<Self, InvalidKubeconfig> {
        let invalid = |reason: String| InvalidKubeconfig::InvalidField {
            entry: "the hub".into(),
            field: "url",
            reason,
        };
        let server: http::Uri = url.parse().map_err(|e| invalid(format!("{url:?}: {e}")))?;
        if server.scheme_str() != Some("https") || server.host().is_none() {
            return Err(invalid(format!("{url:?} is not https://HOST[:PORT]")));
        }
        let ca_pem = ca_pem.into();
        check_certificates("the hub", "ca", ca_pem.as_bytes())?;
        Ok(HubConfig { server, tls_server_name: None, ca_pem, credential })
    }

    /// Loads the kubeconfig named by `$FERRY_KUBECONFIG`, else
    /// [`DEFAULT_KUBECONFIG`] (what `ferryctl` uses too).
    pub fn from_default_locations() -> Result<Self, HubConfigError> {
        match std::env::var_os(KUBECONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(path) => Self::load(PathBuf::from(path)),
            None => Self::load(DEFAULT_KUBECONFIG),
        }
    }

    /// The hub's base URL (`https://host:port`), without any path.
    pub fn base_url(&self) -> String {
        match self.server.authority() {
            Some(a) => format!("https://{a}"),
            None => self.server.to_string().trim_end_matches('/').to_owned(),
        }
    }

    /// A kubeconfig that reaches `cluster` through the hub with this
    /// configuration's CA and credential (server
    /// `https://HUB/clusters/CLUSTER`).
    pub fn kubeconfig_for(&self, cluster: &str) -> Kubeconfig {
        use base64::engine::general_purpose::STANDARD;
        use kube::config::{Context, NamedAuthInfo, NamedCluster, NamedContext};
        let mut auth = AuthInfo::default();
        match &self.credential {
            HubCredential::Token(t) => auth.token = Some(t.expose().to_owned().into()),
            HubCredential::ClientCert { cert_pem, key_pem } => {
                auth.client_certificate_data = Some(STANDARD.encode(cert_pem));
                auth.client_key_data = Some(STANDARD.encode(key_pem.expose()).into());
            }
        }
        let name = format!("ferry-{cluster}");
        Kubeconfig {
            clusters: vec![NamedCluster {
                name: name.clone(),
                cluster: Some(Cluster {
                    server: Some(format!("{}/clusters/{cluster}", self.base_url())),
                    certificate_authority_data: Some(STANDARD.encode(&self.ca_pem)),
                    tls_server_name: self.tls_server_name.clone(),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: name.clone(),
                auth_info: Some(auth),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: name.clone(),
                context: Some(Context {
                    cluster: name.clone(),
                    user: Some(name.clone()),
                    ..Default::default()
                }),
                other: Default::default(),
            }],
            current_context: Some(name),
            ..Default::default()
        }
    }

    /// Loads the current context of the kubeconfig at `path`. Relative
    /// certificate paths inside it are resolved against its directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, HubConfigError> {
        let path = path.as_ref();
        let kubeconfig = Kubeconfig::read_from(path).map_err(|source| match source {
            KubeconfigError::ReadConfig(source, _) => HubConfigError::Read { path: path.to_owned(), source },
            source => HubConfigError::Parse { path: path.to_owned(), source },
        })?;
        Self::from_kubeconfig(&kubeconfig)
            .map_err(|source| HubConfigError::Invalid { path: path.to_owned(), source })
    }

    /// Extracts the hub connection from an already parsed kubeconfig's
    /// current context. Relative certificate paths are resolved against the
    /// working directory (use [`HubConfig::load`] for file-relative ones).
    pub fn from_kubeconfig(kubeconfig: &Kubeconfig) -> Result<Self, InvalidKubeconfig> {
        let context_name = kubeconfig.current_context.as_deref().filter(|c| !c.is_empty());
        let context_name = context_name.ok_or(InvalidKubeconfig::NoCurrentContext)?;
        let context = kubeconfig
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.context.as_ref())
            .ok_or_else(|| InvalidKubeconfig::ContextNotFound(context_name.to_owned()))?;

        let cluster = kubeconfig
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .and_then(|c| c.cluster.as_ref())
            .ok_or_else(|| InvalidKubeconfig::ClusterNotFound {
                context: context_name.to_owned(),
                cluster: context.cluster.clone(),
            })?;
        let user_name = context
            .user
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| InvalidKubeconfig::NoUser(context_name.to_owned()))?;
        let user = kubeconfig
            .auth_infos
            .iter()
            .find(|u| u.name == user_name)
            .and_then(|u| u.auth_info.as_ref())
            .ok_or_else(|| InvalidKubeconfig::UserNotFound {
                context: context_name.to_owned(),
                user: user_name.to_owned(),
            })?;

        let cluster_entry = format!("cluster {:?}", context.cluster);
        let user_entry = format!("user {user_name:?}");
        let server = server_url(&cluster_entry, cluster)?;
        let ca_pem = certificate_authority(&cluster_entry, cluster)?;
        let credential = match bearer_token(&user_entry, user)? {
            Some(token) => HubCredential::Token(token),
            None => {
                let (cert_pem, key_pem) = client_identity(&user_entry, user)?;
                HubCredential::ClientCert { cert_pem, key_pem }
            }
        };
        Ok(HubConfig {
            server,
            tls_server_name: cluster.tls_server_name.clone().filter(|n| !n.is_empty()),
            ca_pem,
            credential,
        })
    }
}

fn server_url(entry: &str, cluster: &Cluster) -> Result<http::Uri, InvalidKubeconfig> {
    let server = cluster.server.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| {
        InvalidKubeconfig::MissingField { entry: entry.to_owned(), field: "server", hint: "" }
    })?;
    let invalid =
        |reason: String| InvalidKubeconfig::InvalidField { entry: entry.to_owned(), field: "server", reason };
    let uri: http::Uri = server.parse().map_err(|e| invalid(format!("{server:?} is not a URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(invalid(format!("{server:?} must be an https:// URL (the hub only speaks TLS)")));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(format!("{server:?} has no host")));
    }
    Ok(uri)
}

fn certificate_authority(entry: &str, cluster: &Cluster) -> Result<String, InvalidKubeconfig> {
    let (field, bytes) = data_or_file(
        entry,
        ("certificate-authority-data", cluster.certificate_authority_data.as_deref()),
        ("certificate-authority", cluster.certificate_authority.as_deref()),
    )?
    .ok_or_else(|| InvalidKubeconfig::MissingField {
        entry: entry.to_owned(),
        field: "certificate-authority-data",
        hint: " (or `certificate-authority`); the hub's CA must be pinned",
    })?;
    check_certificates(entry, field, &bytes)?;
    pem_text(entry, field, bytes)
}

/// A `token` or `token-file` of the user entry, if it has one.
fn bearer_token(entry: &str, user: &AuthInfo) -> Result<Option<Secret>, InvalidKubeconfig> {
    if let Some(token) =
        user.token.as_ref().map(|t| t.expose_secret().trim().to_owned()).filter(|t| !t.is_empty())
    {
        return Ok(Some(Secret::new(token)));
    }
    let Some(file) = user.token_file.as_deref().filter(|f| !f.is_empty()) else { return Ok(None) };
    let text = std::fs::read_to_string(file).map_err(|e| InvalidKubeconfig::InvalidField {
        entry: entry.to_owned(),
        field: "token-file",
        reason: format!("cannot read {file}: {e}"),
    })?;
    Ok(Some(Secret::new(text.trim())).filter(|t| !t.expose().is_empty()))
}

fn client_identity(entry: &str, user: &AuthInfo) -> Result<(String, Secret), InvalidKubeconfig> {
    let cert = data_or_file(
        entry,
        ("client-certificate-data", user.client_certificate_data.as_deref()),
        ("client-certificate", user.client_certificate.as_deref()),
    )?
    .ok_or_else(|| InvalidKubeconfig::MissingField {
        entry: entry.to_owned(),
        field: "client-certificate-data",
        hint: " (or `client-certificate`, or a `token`); the hub authenticates callers by client certificate or bearer token",
    })?;
    let key = data_or_file(
        entry,
        ("client-key-data", user.client_key_data.as_ref().map(|k| k.expose_secret())),
        ("client-key", user.client_key.as_deref()),
    )?
    .ok_or_else(|| InvalidKubeconfig::MissingField {
        entry: entry.to_owned(),
        field: "client-key-data",
        hint: " (or `client-key`) to go with the client certificate",
    })?;
    check_certificates(entry, cert.0, &cert.1)?;
    if PrivateKeyDer::from_pem_slice(&key.1).is_err() {
        // Say nothing about the content: it is (meant to be) a secret.
        return Err(InvalidKubeconfig::InvalidField {
            entry: entry.to_owned(),
            field: key.0,
            reason: "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
        });
    }
    let cert_pem = pem_text(entry, cert.0, cert.1)?;
    let key_pem = pem_text(entry, key.0, key.1)?;
    Ok((cert_pem, Secret::new(key_pem)))
}

/// Reads a `*-data` field (base64) or, when absent, its file-path twin.
/// Returns which field supplied the bytes, for error messages.
fn data_or_file(
    entry: &str,
    (data_field, data): (&'static str, Option<&str>),
    (file_field, file): (&'static str, Option<&str>),
) -> Result<Option<(&'static str, Vec<u8>)>, InvalidKubeconfig> {
    if let Some(data) = data.filter(|d| !d.is_empty()) {
        // Line-wrapped base64 is common in hand-edited files.
        let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|e| {
            InvalidKubeconfig::InvalidField {
                entry: entry.to_owned(),
                field: data_field,
                reason: format!("not base64: {e}"),
            }
        })?;
        return Ok(Some((data_field, bytes)));
    }
    if let Some(file) = file.filter(|f| !f.is_empty()) {
        let bytes = std::fs::read(file).map_err(|e| InvalidKubeconfig::InvalidField {
            entry: entry.to_owned(),
            field: file_field,
            reason: format!("cannot read {file}: {e}"),
        })?;
        return Ok(Some((file_field, bytes)));
    }
    Ok(None)
}

fn check_certificates(entry: &str, field: &'static str, pem: &[u8]) -> Result<(), InvalidKubeconfig> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(InvalidKubeconfig::InvalidField {
            entry: entry.to_owned(),
            field,
            reason: "no PEM certificate found".into(),
        }),
        Err(e) => Err(InvalidKubeconfig::InvalidField {
            entry: entry.to_owned(),
            field,
            reason: format!("bad PEM certificate: {e}"),
        }),
    }
}

fn pem_text(entry: &str, field: &'static str, bytes: Vec<u8>) -> Result<String, InvalidKubeconfig> {
    String::from_utf8(bytes).map_err(|_| InvalidKubeconfig::InvalidField {
        entry: entry.to_owned(),
        field,
        reason: "PEM is not text".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pems {
        ca: String,
        cert: String,
        key: String,
    }

    fn pems() -> Pems {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        Pems { ca: ca.pem(), cert: cert.pem(), key: key.serialize_pem() }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn data_kubeconfig(p: &Pems, server: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
current-context: ferry-admin
clusters:
- name: ferry
  cluster:
    server: {server}
    certificate-authority-data: {ca}
contexts:
- name: ferry-admin
  context:
    cluster: ferry
    user: admin
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
",
            ca = b64(&p.ca),
            cert = b64(&p.cert),
            key = b64(&p.key),
        )
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    use crate::management::chain;

    #[test]
    fn loads_data_fields() {
        let p = pems();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "admin.kubeconfig", &data_kubeconfig(&p, "https://127.0.0.1:8443"));
        let hub = HubConfig::load(&path).expect("loads");
        assert_eq!(hub.server, "https://127.0.0.1:8443/");
        assert_eq!(hub.ca_pem, p.ca);
        assert_cert(&hub, &p);
        assert_eq!(hub.tls_server_name, None);
        let debug = format!("{hub:?}");
        assert!(debug.contains("MASKED") && !debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn loads_relative_file_paths() {
        let p = pems();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("pki")).expect("mkdir");
        write(dir.path(), "pki/ca.crt", &p.ca);
        write(dir.path(), "pki/admin.crt", &p.cert);
        write(dir.path(), "pki/admin.key", &p.key);
        let text = "apiVersion: v1
kind: Config
current-context: c
clusters:
- name: hub
  cluster:
    server: https://hub.example.com:8443
    certificate-authority: pki/ca.crt
    tls-server-name: ferry-hub
contexts:
- name: c
  context: {cluster: hub, user: u}
users:
- name: u
  user:
    client-certificate: pki/admin.crt
    client-key: pki/admin.key
";
        let path = write(dir.path(), "kubeconfig", text);
        let hub = HubConfig::load(&path).expect("loads");
        assert_eq!(hub.server.host(), Some("hub.example.com"));
        assert_eq!(hub.tls_server_name.as_deref(), Some("ferry-hub"));
        assert_eq!(hub.ca_pem, p.ca);
        assert_cert(&hub, &p);
    }

    fn assert_cert(hub: &HubConfig, p: &Pems) {
        match &hub.credential {
            HubCredential::ClientCert { cert_pem, key_pem } => {
                assert_eq!(cert_pem, &p.cert);
                assert_eq!(key_pem.expose(), p.key);
            }
            other => panic!("expected a client certificate, got {other:?}"),
        }
    }

    #[test]
    fn loads_a_bearer_token() {
        let p = pems();
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_line = format!("    client-certificate-data: {}\n", b64(&p.cert));
        let key_line = format!("    client-key-data: {}\n", b64(&p.key));
        let text = data_kubeconfig(&p, "https://127.0.0.1:8443")
            .replace(&cert_line, "    token: ferryuser.abc.def\n")
            .replace(&key_line, "");
        let path = write(dir.path(), "kubeconfig", &text);
        let hub = HubConfig::load(&path).expect("loads");
        assert!(matches!(&hub.credential, HubCredential::Token(t) if t.expose() == "ferryuser.abc.def"));
        assert!(!format!("{hub:?}").contains("ferryuser.abc"), "the token is masked");
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = HubConfig::load(dir.path().join("nope")).expect_err("missing");
        assert!(matches!(err, HubConfigError::Read { .. }));
        let msg = chain(&err);
        assert!(msg.starts_with("cannot read kubeconfig ") && msg.contains("nope"), "{msg}");
    }

    fn invalid(text: &str) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "kubeconfig", text);
        let err = HubConfig::load(&path).expect_err("invalid");
        assert!(matches!(err, HubConfigError::Invalid { .. }), "{err:?}");
        chain(&err)
    }

    #[test]
    fn missing_fields_are_named() {
        let p = pems();
        let good = data_kubeconfig(&p, "https://127.0.0.1:8443");

        let no_context = good.replace("current-context: ferry-admin\n", "");
        assert!(invalid(&no_context).contains("no current-context is set"));

        let wrong_context = good.replace("current-context: ferry-admin", "current-context: other");
        assert!(invalid(&wrong_context).contains("current-context \"other\" is not defined"));

        let no_server = good.replace("    server: https://127.0.0.1:8443\n", "");
        let msg = invalid(&no_server);
        assert!(msg.ends_with("cluster \"ferry\" has no `server`"), "{msg}");

        let ca_line = format!("    certificate-authority-data: {}\n", b64(&p.ca));
        let msg = invalid(&good.replace(&ca_line, ""));
        assert!(msg.contains("cluster \"ferry\" has no `certificate-authority-data`"), "{msg}");

        let cert_line = format!("    client-certificate-data: {}\n", b64(&p.cert));
        let msg = invalid(&good.replace(&cert_line, ""));
        assert!(msg.contains("user \"admin\" has no `client-certificate-data`"), "{msg}");

        let key_line = format!("    client-key-data: {}\n", b64(&p.key));
        let msg = invalid(&good.replace(&key_line, ""));
        assert!(msg.contains("user \"admin\" has no `client-key-data`"), "{msg}");

        let msg = invalid(&good.replace("    user: admin\n", "    user: bob\n"));
        assert!(msg.contains("refers to user \"bob\""), "{msg}");
    }

    #[test]
    fn unusable_fields_are_explained() {
        let p = pems();
        let msg = invalid(&data_kubeconfig(&p, "http://127.0.0.1:8443"));
        assert!(msg.contains("must be an https:// URL"), "{msg}");

        let good = data_kubeconfig(&p, "https://127.0.0.1:8443");
        let msg = invalid(&good.replace(&b64(&p.ca), &b64("hello")));
        assert!(msg.contains("`certificate-authority-data` of cluster \"ferry\" is invalid"), "{msg}");

        let msg = invalid(&good.replace(&b64(&p.key), "not-base64"));
        assert!(msg.contains("`client-key-data` of user \"admin\" is invalid: not base64"), "{msg}");

        let msg = invalid(&good.replace(&b64(&p.key), &b64(&p.cert)));
        assert!(msg.contains("no PEM private key"), "{msg}");
        assert!(!msg.contains("BEGIN"), "{msg}");
    }
}
