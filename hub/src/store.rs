//! Durable hub state: registered clusters, their bootstrap tokens and agent
//! credentials (hashes only).
//!
//! A small trait so the embedded file store (default) and etcd (for several
//! hub replicas) can stand behind it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::ids::ClusterId;
use ferry::secret::hashes_equal;
use serde::{Deserialize, Serialize};

use crate::files;

/// A registered cluster as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Unique name (DNS label), the `/clusters/NAME` path segment.
    pub name: String,
    /// Id the credentials are bound to.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Pending bootstrap token (hash, expiry), single use.
    #[serde(default)]
    pub bootstrap: Option<BootstrapToken>,
    /// Hashes of agent credentials issued for this cluster.
    #[serde(default)]
    pub credential_hashes: Vec<String>,
}

/// A pending bootstrap token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapToken {
    /// SHA-256 hex of the token.
    pub hash: String,
    /// Seconds since the Unix epoch after which the token is refused.
    pub expires_at: u64,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not read or write.
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The stored data could not be decoded.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// No such cluster.
    #[error("cluster not found")]
    NotFound,
    /// The token is unknown, used or expired (one error for all three, so a
    /// caller learns nothing from it).
    #[error("invalid or expired token")]
    BadToken,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The hub's durable state.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cluster by name.
    async fn cluster_by_name(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError>;
    /// A cluster by id.
    async fn cluster_by_id(&self, id: ClusterId) -> Result<Option<ClusterRecord>, StoreError>;
    /// All clusters, by name.
    async fn list(&self) -> Result<Vec<ClusterRecord>, StoreError>;
    /// Returns the cluster `name`, creating it if needed.
    async fn ensure_cluster(&self, name: &str) -> Result<ClusterRecord, StoreError>;
    /// Sets a new pending bootstrap token for cluster `id`, replacing any
    /// earlier one.
    async fn set_bootstrap(&self, id: ClusterId, token_hash: String, ttl: Duration)
    -> Result<(), StoreError>;
    /// Consumes the bootstrap token of cluster `id` if `token_hash` matches and
    /// it has not expired, and records `credential_hash` in one step.
    async fn enroll(
        &self,
        id: ClusterId,
        token_hash: &str,
        credential_hash: String,
    ) -> Result<ClusterRecord, StoreError>;
}

#[derive(Default, Serialize, Deserialize)]
struct FileState {
    /// Keyed by name.
    clusters: BTreeMap<String, ClusterRecord>,
}

/// The embedded store: one JSON file in the data dir, rewritten atomically
/// on every change. Fine for hundreds of clusters and one hub replica.
pub struct FileStore {
    path: PathBuf,
    state: Mutex<FileState>,
}

impl FileStore {
    /// Opens (or creates) `DIR/store.json`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("store.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let empty = FileState::default();
                let store = FileStore { path, state: Mutex::new(FileState::default()) };
                store.save(&empty)?;
                return Ok(store);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(FileStore { path, state: Mutex::new(state) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, state: &FileState) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        files::write_private(&self.path, &bytes)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Store for FileStore {
    async fn cluster_by_name(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        Ok(self.lock().clusters.get(name).cloned())
    }

    async fn cluster_by_id(&self, id: ClusterId) -> Result<Option<ClusterRecord>, StoreError> {
        let id = id.to_string();
        Ok(self.lock().clusters.values().find(|c| c.id == id).cloned())
    }

    async fn list(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Ok(self.lock().clusters.values().cloned().collect())
    }

    async fn ensure_cluster(&self, name: &str) -> Result<ClusterRecord, StoreError> {
        let mut state = self.lock();
        if let Some(c) = state.clusters.get(name) {
            return Ok(c.clone());
        }
        let record = ClusterRecord {
            name: name.to_owned(),
            id: ClusterId::new().to_string(),
            created_at: unix_now(),
            bootstrap: None,
            credential_hashes: Vec::new(),
        };
        state.clusters.insert(name.to_owned(), record.clone());
        self.save(&state)?;
        Ok(record)
    }

    async fn set_bootstrap(
        &self,
        id: ClusterId,
        token_hash: String,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        let id = id.to_string();
        let record = state.clusters.values_mut().find(|c| c.id == id).ok_or(StoreError::NotFound)?;
        record.bootstrap = Some(BootstrapToken { hash: token_hash, expires_at: unix_now() + ttl.as_secs() });
        self.save(&state)?;
        Ok(())
    }

    async fn enroll(
        &self,
        id: ClusterId,
        token_hash: &str,
        credential_hash: String,
    ) -> Result<ClusterRecord, StoreError> {
        let mut state = self.lock();
        let id = id.to_string();
        let record = state.clusters.values_mut().find(|c| c.id == id).ok_or(StoreError::BadToken)?;
        match &record.bootstrap {
            Some(t) if hashes_equal(&t.hash, token_hash) && unix_now() < t.expires_at => {}
            _ => return Err(StoreError::BadToken),
        }
        record.bootstrap = None;
        record.credential_hashes.push(credential_hash);
        let out = record.clone();
        self.save(&state)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bootstrap_token_is_single_use_and_state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        let rec = store.ensure_cluster("edge-1").await.expect("register");
        let id = ClusterId::parse(&rec.id).expect("id");
        store.set_bootstrap(id, "h1".into(), Duration::from_secs(60)).await.expect("token");
        assert!(matches!(store.enroll(id, "wrong", "c".into()).await, Err(StoreError::BadToken)));
        store.enroll(id, "h1", "cred".into()).await.expect("enroll");
        assert!(matches!(store.enroll(id, "h1", "cred2".into()).await, Err(StoreError::BadToken)));
        let reopened = FileStore::open(dir.path()).expect("reopen");
        let rec = reopened.cluster_by_name("edge-1").await.expect("get").expect("exists");
        assert_eq!(rec.credential_hashes, vec!["cred".to_owned()]);
        assert_eq!(rec.bootstrap, None);
        assert_eq!(reopened.cluster_by_id(id).await.expect("get").map(|c| c.name), Some("edge-1".into()));
        // Registering again keeps the id and issues a new token.
        let again = reopened.ensure_cluster("edge-1").await.expect("re-register");
        assert_eq!(again.id, rec.id);
        reopened.set_bootstrap(id, "h2".into(), Duration::from_secs(60)).await.expect("token");
        reopened.enroll(id, "h2", "cred2".into()).await.expect("second agent enrolls with a new token");
    }

    #[tokio::test]
    async fn expired_token_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        let rec = store.ensure_cluster("c").await.expect("register");
        let id = ClusterId::parse(&rec.id).expect("id");
        store.set_bootstrap(id, "h".into(), Duration::ZERO).await.expect("token");
        assert!(matches!(store.enroll(id, "h", "c".into()).await, Err(StoreError::BadToken)));
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("store.json"), b"{not json").expect("write");
        assert!(matches!(FileStore::open(dir.path()), Err(StoreError::Corrupt(_))));
    }
}
