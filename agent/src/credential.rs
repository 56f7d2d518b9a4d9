//! The state directory: the per-cluster credential, the cluster name and the
//! agent's stable id, kept across restarts.
//!
//! Files are replaced atomically (write a temporary file, fsync, rename), so a
//! crash mid-write leaves either the old or the new credential, never half of
//! one. The credential file is created with mode 0600 from the start.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ferry::ids::AgentId;
use ferry::secret::Secret;

/// File holding the per-cluster credential.
pub const CREDENTIAL_FILE: &str = "credential";
/// File holding the name of the cluster the credential belongs to.
pub const CLUSTER_FILE: &str = "cluster";
/// File holding the agent instance id (a uuid).
pub const AGENT_ID_FILE: &str = "agent-id";

/// Mode of the state directory: only the agent's user may list it.
const DIR_MODE: u32 = 0o700;
/// Mode of every state file: only the agent's user may read it.
const FILE_MODE: u32 = 0o600;

/// Why the state directory cannot be used.
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
    /// A state file exists but holds nothing usable.
    #[error("state file {0:?} is empty or corrupt; delete it to enroll again")]
    Corrupt(PathBuf),
}

/// The credential the agent authenticates to the hub with.
#[derive(Clone, Debug)]
pub struct StoredCredential {
    /// Cluster the credential is bound to (as the hub named it at enrollment).
    pub cluster: String,
    /// The credential itself; masked in `Debug`.
    pub credential: Secret,
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
        let Some(credential) = self.read_trimmed(CREDENTIAL_FILE)? else {
            return Ok(None);
        };
        if credential.is_empty() {
            return Err(CredentialError::Corrupt(self.path.join(CREDENTIAL_FILE)));
        }
        let cluster = self.read_trimmed(CLUSTER_FILE)?.unwrap_or_default();
        Ok(Some(StoredCredential { cluster, credential: Secret::new(credential) }))
    }

    /// Stores a credential: the cluster name first, then the credential,
    /// whose presence marks the agent as enrolled.
    pub fn save_credential(&self, stored: &StoredCredential) -> Result<(), CredentialError> {
        self.ensure()?;
        self.write_atomic(CLUSTER_FILE, stored.cluster.as_bytes())?;
        self.write_atomic(CREDENTIAL_FILE, stored.credential.expose().as_bytes())
    }

    /// The agent's stable id, created and stored on first use.
    pub fn agent_id(&self) -> Result<AgentId, CredentialError> {
        if let Some(text) = self.read_trimmed(AGENT_ID_FILE)? {
            return AgentId::parse(&text)
                .ok_or_else(|| CredentialError::Corrupt(self.path.join(AGENT_ID_FILE)));
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn credential_round_trip_with_private_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path().join("state"));
        assert!(state.load_credential().expect("readable").is_none());
        let stored = StoredCredential { cluster: "edge-1".into(), credential: Secret::new("ferryagent.x.y") };
        state.save_credential(&stored).expect("saved");

        let loaded = state.load_credential().expect("readable").expect("present");
        assert_eq!(loaded.cluster, "edge-1");
        assert_eq!(loaded.credential.expose(), "ferryagent.x.y");
        assert_eq!(mode(&state.path().join(CREDENTIAL_FILE)), 0o600);
        assert_eq!(mode(&state.path().join(CLUSTER_FILE)), 0o600);
        assert_eq!(mode(state.path()), 0o700);
        assert!(!format!("{loaded:?}").contains("ferryagent"), "Debug masks the credential");
    }

    #[test]
    fn replacing_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        for c in ["first", "second"] {
            let stored = StoredCredential { cluster: "c".into(), credential: Secret::new(c) };
            state.save_credential(&stored).expect("saved");
        }
        let loaded = state.load_credential().expect("readable").expect("present");
        assert_eq!(loaded.credential.expose(), "second");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![CLUSTER_FILE, CREDENTIAL_FILE]);
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
    fn empty_credential_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(CREDENTIAL_FILE), "\n").expect("write");
        let state = StateDir::new(dir.path());
        assert!(matches!(state.load_credential(), Err(CredentialError::Corrupt(_))));
    }
}
