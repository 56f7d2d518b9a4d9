//! The agent's credential: a short-lived client certificate for its
//! cluster and the key the agent made for it, kept across restarts either
//! in the state directory or in a Secret of the local cluster.
//!
//! - The state directory (outside a cluster): `cluster`, `tls.crt`,
//!   `tls.key` (0600) and `agent-id`, each replaced atomically (temporary
//!   file, fsync, rename), so a crash leaves the old or the new file, never
//!   half of one.
//! - A Secret (`--credential-secret`, what `agent.yaml` sets up): keys
//!   `cluster`, `tls.crt`, `tls.key`. Every replica of the Deployment reads
//!   and writes the same Secret: the first to enroll stores the credential
//!   and the others pick it up (a bootstrap token is single use); each
//!   renews on its own and writes what it got, and since every recorded
//!   certificate of the cluster is valid until it expires, whichever one the
//!   Secret holds works for a restarted pod.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::ids::AgentId;
use ferry::secret::Secret;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::{Api, Patch, PatchParams};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::SecretRef;

/// File (and Secret key) holding the cluster name.
pub const CLUSTER_FILE: &str = "cluster";
/// File (and Secret key) holding the client certificate, PEM.
pub const CERT_FILE: &str = "tls.crt";
/// File (and Secret key) holding the private key, PEM.
pub const KEY_FILE: &str = "tls.key";
/// File holding the agent instance id (a uuid).
pub const AGENT_ID_FILE: &str = "agent-id";

/// Mode of the state directory: only the agent's user may list it.
const DIR_MODE: u32 = 0o700;
/// Mode of every state file: only the agent's user may read it.
const FILE_MODE: u32 = 0o600;

/// Why the credential cannot be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Reading or writing a state file failed.
    #[error("state file {path:?}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A stored credential is incomplete or unreadable.
    #[error("the stored credential in {0} is incomplete or corrupt; delete it to enroll again")]
    Corrupt(String),
    /// The credential Secret cannot be read or written.
    #[error("credential Secret {secret}: {source}")]
    Kube {
        /// The Secret.
        secret: String,
        /// What the apiserver said.
        #[source]
        source: kube::Error,
    },
}

/// The credential the agent authenticates to the hub with.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// Cluster the certificate is bound to (as the hub named it).
    pub cluster: String,
    /// Client certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM; masked in `Debug`.
    pub key_pem: Secret,
    /// Start of the certificate's validity.
    pub not_before: SystemTime,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
}

impl StoredCredential {
    /// A credential from its parts; reads the validity from the certificate.
    pub fn new(cluster: String, cert_pem: String, key_pem: Secret) -> Result<Self, String> {
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| format!("certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| format!("certificate: {e}"))?;
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or_default());
        let not_before = at(cert.validity().not_before.timestamp());
        let not_after = at(cert.validity().not_after.timestamp());
        if !key_pem.expose().contains("PRIVATE KEY") {
            return Err("the key is not a PEM private key".into());
        }
        Ok(Self { cluster, cert_pem, key_pem, not_before, not_after })
    }

    /// Whether the certificate is still valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        now < self.not_after
    }

    /// When to renew: two thirds into the lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_before + lifetime * 2 / 3
    }
}

/// Where the credential is kept.
#[derive(Clone)]
pub enum CredentialStore {
    /// Files in the state directory.
    Dir(StateDir),
    /// A Secret of the local cluster.
    Secret {
        /// The Secret.
        secret: SecretRef,
        /// Client for the local apiserver, as the agent itself.
        client: kube::Client,
    },
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl CredentialStore {
    /// Where the credential lives, for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            CredentialStore::Dir(dir) => format!("state dir {}", dir.path().display()),
            CredentialStore::Secret { secret, .. } => format!("Secret {secret}"),
        }
    }

    /// The stored credential, if any.
    pub async fn load(&self) -> Result<Option<StoredCredential>, CredentialError> {
        match self {
            CredentialStore::Dir(dir) => dir.load_credential(),
            CredentialStore::Secret { secret, client } => {
                let api: Api<KubeSecret> = Api::namespaced(client.clone(), &secret.namespace);
                let found = api
                    .get_opt(&secret.name)
                    .await
                    .map_err(|source| CredentialError::Kube { secret: secret.to_string(), source })?;
                let data = found.and_then(|s| s.data).unwrap_or_default();
                let text = |k: &str| data.get(k).map(|b| String::from_utf8_lossy(&b.0).trim().to_owned());
                match (text(CLUSTER_FILE), text(CERT_FILE), text(KEY_FILE)) {
                    (Some(cluster), Some(cert), Some(key)) if !cert.is_empty() => {
                        StoredCredential::new(cluster, cert, Secret::new(key))
                            .map(Some)
                            .map_err(|_| CredentialError::Corrupt(format!("Secret {secret}")))
                    }
                    _ => Ok(None),
                }
            }
        }
    }

    /// Stores a credential.
    pub async fn save(&self, credential: &StoredCredential) -> Result<(), CredentialError> {
        match self {
            CredentialStore::Dir(dir) => dir.save_credential(credential),
            CredentialStore::Secret { secret, client } => {
                let api: Api<KubeSecret> = Api::namespaced(client.clone(), &secret.namespace);
                let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
                let patch = serde_json::json!({
                    "data": {
                        CLUSTER_FILE: bytes(&credential.cluster),
                        CERT_FILE: bytes(&credential.cert_pem),
                        KEY_FILE: bytes(credential.key_pem.expose()),
                    }
                });
                // A merge patch needs no read first and no resourceVersion:
                // replicas writing at once each leave a valid credential.
                api.patch(&secret.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|source| CredentialError::Kube { secret: secret.to_string(), source })?;
                Ok(())
            }
        }
    }
}

/// The agent's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state directory at `path` (created on first use).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the directory (mode 0700) if it does not exist.
    pub fn ensure(&self) -> Result<(), CredentialError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.path)
            .map_err(|source| CredentialError::Io { path: self.path.clone(), source })
    }

    /// The stored credential, if the agent has enrolled before.
    pub fn load_credential(&self) -> Result<Option<StoredCredential>, CredentialError> {
        let Some(cert) = self.read_trimmed(CERT_FILE)? else {
            return Ok(None);
        };
        let corrupt = || CredentialError::Corrupt(self.path.display().to_string());
        let key = self.read_trimmed(KEY_FILE)?.ok_or_else(corrupt)?;
        let cluster = self.read_trimmed(CLUSTER_FILE)?.unwrap_or_default();
        StoredCredential::new(cluster, cert, Secret::new(key)).map(Some).map_err(|_| corrupt())
    }

    /// Stores a credential: the cluster name and key first, then the
    /// certificate, whose presence marks the agent as enrolled.
    pub fn save_credential(&self, stored: &StoredCredential) -> Result<(), CredentialError> {
        self.ensure()?;
        self.write_atomic(CLUSTER_FILE, stored.cluster.as_bytes())?;
        self.write_atomic(KEY_FILE, stored.key_pem.expose().as_bytes())?;
        self.write_atomic(CERT_FILE, stored.cert_pem.as_bytes())
    }

    /// The agent's stable id, created and stored on first use.
    pub fn agent_id(&self) -> Result<AgentId, CredentialError> {
        if let Some(text) = self.read_trimmed(AGENT_ID_FILE)? {
            return AgentId::parse(&text)
                .ok_or_else(|| CredentialError::Corrupt(self.path.display().to_string()));
        }
        let id = AgentId::new();
        self.ensure()?;
        self.write_atomic(AGENT_ID_FILE, id.to_string().as_bytes())?;
        Ok(id)
    }

    fn read_trimmed(&self, name: &str) -> Result<Option<String>, CredentialError> {
        let path = self.path.join(name);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim().to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialError::Io { path, source }),
        }
    }

    fn write_atomic(&self, name: &str, contents: &[u8]) -> Result<(), CredentialError> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| CredentialError::Io { path, source }
        };
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(&tmp)?;
            file.write_all(contents)?;
            file.sync_all()
        })();
        if let Err(e) = result.and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&path)(e));
        }
        // Make the rename itself durable.
        fs::File::open(&self.path).and_then(|d| d.sync_all()).map_err(io_err(&self.path))
    }
}

/// A fresh key and a certificate request for it (DER), for enrollment and
/// renewal. The key never leaves the agent.
pub fn new_key_and_request() -> Result<(Secret, Vec<u8>), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "ferry-agent");
    let csr = params.serialize_request(&key)?;
    Ok((Secret::new(key.serialize_pem()), csr.der().to_vec()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    /// A self-signed certificate valid from now for `lifetime`, and its key.
    fn credential(lifetime: Duration) -> StoredCredential {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        let now = SystemTime::now();
        params.not_before = now.into();
        params.not_after = (now + lifetime).into();
        let cert = params.self_signed(&key).expect("cert");
        StoredCredential::new("edge-1".into(), cert.pem(), Secret::new(key.serialize_pem()))
            .expect("credential")
    }

    #[test]
    fn credential_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        assert!(state.load_credential().expect("readable").is_none());
        let stored = credential(Duration::from_secs(3600));
        state.save_credential(&stored).expect("saved");

        let loaded = state.load_credential().expect("readable").expect("present");
        assert_eq!(loaded.cluster, "edge-1");
        assert_eq!(loaded.cert_pem.trim(), stored.cert_pem.trim());
        assert_eq!(loaded.key_pem.expose().trim(), stored.key_pem.expose().trim());
        for f in [CERT_FILE, KEY_FILE, CLUSTER_FILE] {
            assert_eq!(mode(&state.path().join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(state.path()), 0o700);
        assert!(!format!("{loaded:?}").contains("PRIVATE KEY"), "Debug masks the key");
    }

    #[test]
    fn renewal_is_due_two_thirds_in() {
        let c = credential(Duration::from_secs(3000));
        let due = c.renew_at().duration_since(c.not_before).expect("after start");
        assert_eq!(due.as_secs(), 2000);
        assert!(c.valid_at(SystemTime::now()));
        assert!(!c.valid_at(c.not_after));
    }

    #[test]
    fn replacing_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        for _ in 0..2 {
            state.save_credential(&credential(Duration::from_secs(60))).expect("saved");
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![CLUSTER_FILE, CERT_FILE, KEY_FILE]);
    }

    #[test]
    fn agent_id_is_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let id = state.agent_id().expect("created");
        assert_eq!(state.agent_id().expect("reused"), id);
        assert_eq!(mode(&dir.path().join(AGENT_ID_FILE)), 0o600);
    }

    #[test]
    fn a_certificate_without_its_key_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = credential(Duration::from_secs(60));
        fs::write(dir.path().join(CERT_FILE), &c.cert_pem).expect("write");
        let state = StateDir::new(dir.path());
        assert!(matches!(state.load_credential(), Err(CredentialError::Corrupt(_))));
    }

    #[test]
    fn requests_carry_a_fresh_key_each_time() {
        let (k1, r1) = new_key_and_request().expect("csr");
        let (k2, r2) = new_key_and_request().expect("csr");
        assert_ne!(k1.expose(), k2.expose());
        assert_ne!(r1, r2);
        assert!(k1.expose().contains("PRIVATE KEY"));
    }
}
