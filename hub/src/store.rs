//! Durable hub state: clusters (approval, labels, bootstrap tokens, agent
//! certificate serials, the status last observed and its phase history),
//! callers' bearer tokens and grants. Secrets are kept as SHA-256 hashes
//! only; agent keys never reach the hub at all.
//!
//! A small trait so the embedded file store (default) and etcd (for several
//! hub replicas) can stand behind it. Writes that must be atomic are one
//! `update_cluster` call: a closure applied to the current record, which an
//! etcd backend runs as a compare-and-swap transaction (retrying on
//! conflict), so it must have no effect outside the record but what it
//! returns.
//!
//! Every write to a cluster record bumps the store's revision and is kept
//! as a [`ClusterChange`] (the last [`CHANGE_LOG_CAPACITY`] of them), so a
//! watcher can resume from the revision it last saw, across hub restarts:
//! what etcd's revisions and watch-from-revision give an etcd backend. The
//! file store keeps the changes in `changes.jsonl` beside `store.json`.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry::ids::{ClusterId, TokenId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::warn;

use crate::files;

/// How long expired caller tokens are kept, so their holders are told
/// "expired" rather than "unknown".
pub const EXPIRED_TOKEN_GRACE: u64 = 7 * 24 * 3600;

/// Bootstrap tokens kept per cluster (pending, used and superseded), so a
/// replayed token gets a message that says what happened to it.
pub const BOOTSTRAP_HISTORY: usize = 8;

/// Cluster changes kept for watchers to resume from. A watcher away for
/// longer than this many changes lists again (each change is one cluster
/// record, about 1-2 KiB).
pub const CHANGE_LOG_CAPACITY: usize = 1024;

/// Changes buffered per live watcher before it is cut off (it resumes from
/// its last revision, out of the change log).
pub const WATCH_BUFFER: usize = 256;

/// Phase changes kept per cluster.
pub const PHASE_HISTORY: usize = 16;

/// How a newly enrolled cluster becomes usable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    /// Usable as soon as an agent enrolls.
    #[default]
    Auto,
    /// Pending until an admin approves it.
    Manual,
}

/// Whether traffic may reach a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum Approval {
    /// Waiting for an admin (manual approval).
    Pending,
    /// Traffic is routed.
    #[default]
    Approved,
    /// Refused by an admin: agents are refused and nothing is routed.
    Denied {
        /// Who denied it.
        by: String,
        /// Seconds since the Unix epoch.
        at: u64,
    },
}

/// A registered cluster as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Unique name (DNS label), the `/clusters/NAME` path segment.
    pub name: String,
    /// Id the credentials are bound to; a cluster deleted and registered
    /// again under the same name gets a new one.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Labels (`ferryctl register --labels`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Auto or manual approval.
    #[serde(default)]
    pub approval_mode: ApprovalMode,
    /// Current approval state.
    #[serde(default)]
    pub approval: Approval,
    /// Recent bootstrap tokens, the newest last.
    #[serde(default)]
    pub bootstrap_tokens: Vec<BootstrapToken>,
    /// Agent client certificates that are still valid (serials only).
    #[serde(default)]
    pub agent_certs: Vec<AgentCert>,
    /// What the hub last observed of the cluster's agents and apiserver.
    #[serde(default)]
    pub status: ObservedStatus,
    /// The store revision of the record's last write (set by the store).
    #[serde(default)]
    pub revision: u64,
}

/// A cluster's phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Awaits an admin's approval.
    Pending,
    /// An agent is connected and its apiserver is healthy.
    Ready,
    /// An agent is connected but its apiserver is unreachable or
    /// unhealthy, or the agent lacks permissions.
    NotReady,
    /// No agent is connected.
    #[default]
    Offline,
    /// Denied by an admin.
    Denied,
}

/// One phase change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseChange {
    /// The phase entered.
    pub phase: Phase,
    /// Why.
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// The outcome of an apiserver health endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CheckState {
    /// Not checked.
    #[default]
    Unknown,
    /// Passing.
    Ok,
    /// Failing.
    Failed,
}

/// An apiserver health endpoint as an agent found it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Passing or not.
    pub state: CheckState,
    /// For a failing one: what failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Nodes by their `Ready` condition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCount {
    /// Ready nodes.
    pub ready: u32,
    /// Other nodes.
    pub not_ready: u32,
}

/// CPU and memory summed over nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

/// What the hub last observed of a cluster, written when something shown
/// of it changes (never for a heartbeat alone), so it survives hub restarts
/// and the cluster's last known version and nodes show while it is Offline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedStatus {
    /// The phase its agents put it in (Ready, NotReady or Offline; the
    /// approval decides whether it is shown as Pending or Denied instead).
    pub health: Phase,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// The last phase changes as shown (approval included), oldest first,
    /// at most [`PHASE_HISTORY`].
    #[serde(default)]
    pub history: Vec<PhaseChange>,
    /// Connected agent sessions.
    #[serde(default)]
    pub agents: u32,
    /// Kubernetes version.
    #[serde(default)]
    pub kubernetes_version: String,
    /// Platform (`linux/amd64`).
    #[serde(default)]
    pub platform: String,
    /// `/readyz`.
    #[serde(default)]
    pub readyz: Check,
    /// `/livez`.
    #[serde(default)]
    pub livez: Check,
    /// Node counts, if known.
    #[serde(default)]
    pub nodes: Option<NodeCount>,
    /// Summed node capacity, if known.
    #[serde(default)]
    pub capacity: Option<Capacity>,
    /// Summed node allocatable, if known.
    #[serde(default)]
    pub allocatable: Option<Capacity>,
    /// Permissions the agents lack.
    #[serde(default)]
    pub missing_permissions: Vec<String>,
    /// Last time an agent was heard from when this was written, seconds
    /// since the Unix epoch (0: never).
    #[serde(default)]
    pub last_seen: u64,
}

impl ObservedStatus {
    /// The phase shown and when it was entered, from the history.
    pub fn current(&self) -> Option<&PhaseChange> {
        self.history.last()
    }
}

/// What a change did to a cluster record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// Registered.
    Created,
    /// Written.
    Updated,
    /// Deleted.
    Deleted,
}

/// One write to a cluster record, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterChange {
    /// The store revision of the write.
    pub revision: u64,
    /// What it did.
    pub kind: ChangeKind,
    /// The record after the write (as it was, for a deletion).
    pub record: ClusterRecord,
}

/// Clusters read at one revision.
#[derive(Clone, Debug, Default)]
pub struct ClusterList {
    /// By name.
    pub clusters: Vec<ClusterRecord>,
    /// The store revision they were read at.
    pub revision: u64,
}

/// A watch on cluster changes: those after the revision asked for, then
/// every new one as it is written.
pub struct ClusterWatch {
    /// Changes after the revision asked for, oldest first.
    pub backlog: Vec<Arc<ClusterChange>>,
    /// New changes; a receiver that lags behind [`WATCH_BUFFER`] gets
    /// `Lagged` and should resume from its last revision.
    pub live: broadcast::Receiver<Arc<ClusterChange>>,
}

impl ClusterRecord {
    /// The id, parsed.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        ClusterId::parse(&self.id)
    }

    /// Whether an agent certificate with `serial` is known and unexpired.
    pub fn knows_cert(&self, serial: &str, now: u64) -> bool {
        self.agent_certs.iter().any(|c| c.serial == serial && c.not_after > now)
    }
}

/// A bootstrap token: its hash and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapToken {
    /// SHA-256 hex of the token.
    pub hash: String,
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
    /// Seconds since the Unix epoch after which the token is refused.
    pub expires_at: u64,
    /// Set once an agent enrolled with it.
    #[serde(default)]
    pub used: Option<TokenUse>,
    /// A newer token replaced it before it was used.
    #[serde(default)]
    pub superseded: bool,
}

/// Who used a bootstrap token, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The agent instance that enrolled.
    pub agent_id: String,
}

/// An agent certificate the hub issued: its serial, never its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCert {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub issued_at: u64,
    /// Seconds since the Unix epoch.
    pub not_after: u64,
    /// The agent instance it was issued to.
    pub agent_id: String,
}

/// A caller's bearer token, hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Token id (the middle part of the token).
    pub id: String,
    /// SHA-256 hex of the token.
    pub hash: String,
    /// User name.
    pub user: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The cluster the token is bound to (name and id), if any.
    #[serde(default)]
    pub cluster: Option<BoundCluster>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
    /// Who created it.
    pub created_by: String,
}

/// A cluster a credential is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundCluster {
    /// Cluster name.
    pub name: String,
    /// Cluster id at issuance (a re-registered cluster is another one).
    pub id: String,
}

/// Who a grant is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum Subject {
    /// One user.
    User(String),
    /// Every member of a group.
    Group(String),
}

/// A grant: `subject` may reach `cluster` (a name, or `*` for all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// Cluster name or `*`.
    pub cluster: String,
    /// User or group.
    pub subject: Subject,
    /// Whether the subject may act as someone else (kubectl `--as`).
    #[serde(default)]
    pub allow_impersonate: bool,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Who created it.
    pub created_by: String,
}

/// The cluster name of grants that apply to every cluster.
pub const ALL_CLUSTERS: &str = "*";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not read or write.
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The stored data could not be decoded.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// No such record.
    #[error("not found")]
    NotFound,
    /// A record with that key exists.
    #[error("already exists")]
    AlreadyExists,
    /// A watch asked for changes older than the store keeps.
    #[error("revision {requested} is too old: changes from revision {oldest} on are kept")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision whose change is kept.
        oldest: u64,
    },
    /// A watch asked for a revision the store has not reached.
    #[error("revision {requested} is newer than the store's ({current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The store's revision.
        current: u64,
    },
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A change to one cluster record: returns whether it changed anything (a
/// `false` writes nothing). It may run more than once (etcd retries), so
/// it must not act outside the record except by what its caller reads
/// after the call returns.
pub type ClusterUpdate<'a> = &'a mut (dyn FnMut(&mut ClusterRecord) -> bool + Send);

/// The hub's durable state.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cluster by name.
    async fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError>;
    /// A cluster by id.
    async fn cluster_by_id(&self, id: ClusterId) -> Result<Option<ClusterRecord>, StoreError>;
    /// All clusters, by name.
    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError>;
    /// All clusters, by name, with the revision they were read at.
    async fn list_clusters(&self) -> Result<ClusterList, StoreError>;
    /// Cluster changes after `revision`, then live ones;
    /// [`StoreError::Compacted`] when changes after it are no longer kept.
    async fn watch_clusters(&self, revision: u64) -> Result<ClusterWatch, StoreError>;
    /// Adds a cluster; [`StoreError::AlreadyExists`] if the name is taken.
    async fn create_cluster(&self, record: ClusterRecord) -> Result<ClusterRecord, StoreError>;
    /// Applies `update` to cluster `name` atomically and returns the record
    /// as stored afterwards; [`StoreError::NotFound`] if there is none.
    async fn update_cluster(
        &self,
        name: &str,
        update: ClusterUpdate<'_>,
    ) -> Result<ClusterRecord, StoreError>;
    /// Deletes cluster `name` with its grants and the tokens bound to it;
    /// returns what was deleted.
    async fn delete_cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError>;

    /// A caller token by id.
    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError>;
    /// All caller tokens, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Adds a caller token.
    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError>;
    /// Deletes a caller token; returns it.
    async fn delete_token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError>;

    /// Grants, by cluster and subject.
    async fn grants(&self) -> Result<Vec<GrantRecord>, StoreError>;
    /// Adds a grant or replaces the one for the same cluster and subject.
    async fn put_grant(&self, grant: GrantRecord) -> Result<(), StoreError>;
    /// Deletes the grant for `cluster` and `subject`; returns it.
    async fn delete_grant(&self, cluster: &str, subject: &Subject)
    -> Result<Option<GrantRecord>, StoreError>;

    /// Whether the store answers (for the hub's `/readyz`).
    async fn ping(&self) -> Result<(), StoreError> {
        self.cluster("").await.map(|_| ())
    }
}

/// Everything the embedded store keeps, as written to `store.json`.
#[derive(Clone, Default, Serialize, Deserialize)]
struct FileState {
    /// Bumped by every cluster write.
    #[serde(default)]
    revision: u64,
    /// Keyed by name.
    #[serde(default)]
    clusters: BTreeMap<String, ClusterRecord>,
    /// Keyed by token id.
    #[serde(default)]
    tokens: BTreeMap<String, TokenRecord>,
    #[serde(default)]
    grants: Vec<GrantRecord>,
    /// Cluster id to name, rebuilt after every change (agents are looked up
    /// by id on every stream they open).
    #[serde(skip)]
    by_id: std::collections::HashMap<String, String>,
}

impl FileState {
    fn reindex(&mut self) {
        self.by_id = self.clusters.values().map(|c| (c.id.clone(), c.name.clone())).collect();
    }

    /// Drops what can no longer matter: expired agent certificates, and
    /// bootstrap tokens beyond the history.
    fn prune(&mut self, now: u64) {
        for c in self.clusters.values_mut() {
            c.agent_certs.retain(|a| a.not_after > now);
            let excess = c.bootstrap_tokens.len().saturating_sub(BOOTSTRAP_HISTORY);
            c.bootstrap_tokens.drain(..excess);
        }
        self.tokens.retain(|_, t| t.expires_at.saturating_add(EXPIRED_TOKEN_GRACE) > now);
    }
}

/// The embedded store: one JSON file in the data dir (`store.json`, 0600),
/// rewritten atomically (temp file, fsync, rename) on every change, and the
/// change log `changes.jsonl` (0600), appended (and fsynced) before it.
///
/// Readers take a snapshot (an `Arc` clone) and never wait for a write;
/// writers are serialised by an async mutex and write the files on a
/// blocking thread, so no async worker waits on fsync. Fine for thousands of
/// clusters and one hub replica.
///
/// A crash between the two writes leaves changes in the log that
/// `store.json` never got (their revision is above its own): they are
/// dropped when the store is opened again.
pub struct FileStore {
    path: PathBuf,
    snapshot: RwLock<Arc<FileState>>,
    writer: tokio::sync::Mutex<()>,
    changes: Mutex<ChangeLog>,
    feed: broadcast::Sender<Arc<ClusterChange>>,
}

/// The kept changes, newest last, and their file.
struct ChangeLog {
    path: PathBuf,
    kept: VecDeque<Arc<ClusterChange>>,
    /// Lines in the file (compacted when it reaches twice the capacity).
    lines: usize,
}

impl ChangeLog {
    fn open(path: PathBuf, revision: u64) -> Result<Self, StoreError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        let mut kept: VecDeque<Arc<ClusterChange>> = VecDeque::new();
        let mut lines = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            match serde_json::from_str::<ClusterChange>(line) {
                // Written before a crash kept it out of store.json.
                Ok(c) if c.revision > revision => {}
                Ok(c) => {
                    kept.push_back(Arc::new(c));
                    if kept.len() > CHANGE_LOG_CAPACITY {
                        kept.pop_front();
                    }
                }
                // A line cut short by a crash.
                Err(e) => warn!(file = %path.display(), error = %e, "skipping an unreadable change"),
            }
        }
        let mut log = ChangeLog { path, kept, lines };
        if log.lines > log.kept.len() {
            log.rewrite()?;
        }
        Ok(log)
    }

    /// Writes the kept changes as the whole file.
    fn rewrite(&mut self) -> Result<(), StoreError> {
        let mut text = Vec::new();
        for c in &self.kept {
            serde_json::to_writer(&mut text, c.as_ref()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            text.push(b'\n');
        }
        files::write_private(&self.path, &text)?;
        self.lines = self.kept.len();
        Ok(())
    }

    /// Appends `changes` to the file (fsynced).
    fn append(path: &Path, changes: &[ClusterChange]) -> Result<(), StoreError> {
        let mut text = Vec::new();
        for c in changes {
            serde_json::to_writer(&mut text, c).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            text.push(b'\n');
        }
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        file.write_all(&text)?;
        file.sync_data()?;
        Ok(())
    }

    /// The oldest revision a watcher can resume after: changes after it are
    /// all kept.
    fn resumable_from(&self, current: u64) -> u64 {
        match self.kept.front() {
            Some(c) => c.revision - 1,
            None => current,
        }
    }
}

impl FileStore {
    /// Opens (or creates) `DIR/store.json` and `DIR/changes.jsonl`. A store
    /// file that does not decode is an error, never silently replaced.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("store.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{}: {e}; the hub will not start over it (restore it from a backup or move it away)",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let empty = FileState::default();
                write_file(&path, &empty)?;
                empty
            }
            Err(e) => return Err(e.into()),
        };
        let mut state: FileState = state;
        state.reindex();
        let changes = ChangeLog::open(dir.join("changes.jsonl"), state.revision)?;
        let (feed, _) = broadcast::channel(WATCH_BUFFER);
        Ok(FileStore {
            path,
            snapshot: RwLock::new(Arc::new(state)),
            writer: tokio::sync::Mutex::new(()),
            changes: Mutex::new(changes),
            feed,
        })
    }

    fn read(&self) -> Arc<FileState> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn changes(&self) -> std::sync::MutexGuard<'_, ChangeLog> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to a copy of the state; when it returns `Ok(true)`,
    /// logs the cluster records it changed, writes the copy and makes it
    /// current, then tells watchers.
    async fn write<T>(
        &self,
        change: impl FnOnce(&mut FileState) -> Result<(bool, T), StoreError>,
    ) -> Result<T, StoreError> {
        let _guard = self.writer.lock().await;
        let prev = self.read();
        let mut next = (*prev).clone();
        let (changed, out) = change(&mut next)?;
        if !changed {
            return Ok(out);
        }
        next.prune(unix_now());
        let logged = stamp_changes(&prev, &mut next);
        next.reindex();
        let path = self.path.clone();
        let log_path = self.changes().path.clone();
        let (next, logged) = tokio::task::spawn_blocking(move || {
            if !logged.is_empty() {
                ChangeLog::append(&log_path, &logged)?;
            }
            write_file(&path, &next).map(|()| (next, logged))
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        // The new state, its changes in the log and their broadcast become
        // visible together (see `watch_clusters`).
        let mut log = self.changes();
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        for c in logged {
            let c = Arc::new(c);
            log.kept.push_back(c.clone());
            log.lines += 1;
            if log.kept.len() > CHANGE_LOG_CAPACITY {
                log.kept.pop_front();
            }
            // No receiver is fine; a lagging one is told so when it reads.
            let _ = self.feed.send(c);
        }
        if log.lines >= 2 * CHANGE_LOG_CAPACITY
            && let Err(e) = log.rewrite()
        {
            // The appended file is still complete; compaction waits.
            warn!(error = %e, "could not compact the change log");
        }
        Ok(out)
    }
}

/// Gives every cluster record that differs between `prev` and `next` the
/// next revision, and returns the changes in revision order.
fn stamp_changes(prev: &FileState, next: &mut FileState) -> Vec<ClusterChange> {
    let mut names: Vec<&String> = prev.clusters.keys().chain(next.clusters.keys()).collect();
    names.sort();
    names.dedup();
    let mut revision = prev.revision;
    let mut out = Vec::new();
    let names: Vec<String> = names.into_iter().cloned().collect();
    for name in names {
        let before = prev.clusters.get(&name);
        match next.clusters.get_mut(&name) {
            Some(after) if before == Some(after) => {}
            Some(after) => {
                revision += 1;
                after.revision = revision;
                let kind = match before {
                    Some(b) if b.id == after.id => ChangeKind::Updated,
                    _ => ChangeKind::Created,
                };
                out.push(ClusterChange { revision, kind, record: after.clone() });
            }
            None => {
                if let Some(b) = before {
                    revision += 1;
                    out.push(ClusterChange { revision, kind: ChangeKind::Deleted, record: b.clone() });
                }
            }
        }
    }
    next.revision = revision;
    out
}

fn write_file(path: &Path, state: &FileState) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    files::write_private(path, &bytes)?;
    Ok(())
}

#[tonic::async_trait]
impl Store for FileStore {
    async fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        Ok(self.read().clusters.get(name).cloned())
    }

    async fn cluster_by_id(&self, id: ClusterId) -> Result<Option<ClusterRecord>, StoreError> {
        let state = self.read();
        Ok(state.by_id.get(&id.to_string()).and_then(|name| state.clusters.get(name)).cloned())
    }

    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Ok(self.read().clusters.values().cloned().collect())
    }

    async fn list_clusters(&self) -> Result<ClusterList, StoreError> {
        let state = self.read();
        Ok(ClusterList { clusters: state.clusters.values().cloned().collect(), revision: state.revision })
    }

    async fn watch_clusters(&self, revision: u64) -> Result<ClusterWatch, StoreError> {
        // Under the log's lock no write can publish between the backlog and
        // the subscription: nothing is missed, nothing sent twice.
        let log = self.changes();
        let current = self.read().revision;
        if revision > current {
            return Err(StoreError::FutureRevision { requested: revision, current });
        }
        let oldest = log.resumable_from(current);
        if revision < oldest {
            return Err(StoreError::Compacted { requested: revision, oldest: oldest + 1 });
        }
        let backlog = log.kept.iter().filter(|c| c.revision > revision).cloned().collect();
        Ok(ClusterWatch { backlog, live: self.feed.subscribe() })
    }

    async fn create_cluster(&self, record: ClusterRecord) -> Result<ClusterRecord, StoreError> {
        self.write(|s| {
            if s.clusters.contains_key(&record.name) {
                return Err(StoreError::AlreadyExists);
            }
            s.clusters.insert(record.name.clone(), record.clone());
            Ok((true, record))
        })
        .await
    }

    async fn update_cluster(
        &self,
        name: &str,
        update: ClusterUpdate<'_>,
    ) -> Result<ClusterRecord, StoreError> {
        self.write(|s| {
            let record = s.clusters.get_mut(name).ok_or(StoreError::NotFound)?;
            let changed = update(record);
            Ok((changed, record.clone()))
        })
        .await
    }

    async fn delete_cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        self.write(|s| {
            let Some(record) = s.clusters.remove(name) else { return Ok((false, None)) };
            s.grants.retain(|g| g.cluster != name);
            s.tokens.retain(|_, t| t.cluster.as_ref().is_none_or(|c| c.id != record.id));
            Ok((true, Some(record)))
        })
        .await
    }

    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.read().tokens.get(&id.to_string()).cloned())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tokens: Vec<TokenRecord> = self.read().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.write(|s| {
            if s.tokens.contains_key(&token.id) {
                return Err(StoreError::AlreadyExists);
            }
            s.tokens.insert(token.id.clone(), token);
            Ok((true, ()))
        })
        .await
    }

    async fn delete_token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        self.write(|s| {
            let removed = s.tokens.remove(&id.to_string());
            Ok((removed.is_some(), removed))
        })
        .await
    }

    async fn grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        Ok(self.read().grants.clone())
    }

    async fn put_grant(&self, grant: GrantRecord) -> Result<(), StoreError> {
        self.write(|s| {
            s.grants.retain(|g| !(g.cluster == grant.cluster && g.subject == grant.subject));
            s.grants.push(grant);
            s.grants.sort_by(|a, b| (&a.cluster, &a.subject).cmp(&(&b.cluster, &b.subject)));
            Ok((true, ()))
        })
        .await
    }

    async fn delete_grant(
        &self,
        cluster: &str,
        subject: &Subject,
    ) -> Result<Option<GrantRecord>, StoreError> {
        self.write(|s| {
            let at = s.grants.iter().position(|g| g.cluster == cluster && &g.subject == subject);
            let removed = at.map(|i| s.grants.remove(i));
            Ok((removed.is_some(), removed))
        })
        .await
    }

    /// Readers use a snapshot in memory; what can fail is the file under
    /// it (a removed data dir, a lost disk).
    async fn ping(&self) -> Result<(), StoreError> {
        tokio::fs::metadata(&self.path).await.map(|_| ()).map_err(StoreError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str) -> ClusterRecord {
        ClusterRecord {
            name: name.into(),
            id: ClusterId::new().to_string(),
            created_at: unix_now(),
            labels: BTreeMap::from([("env".into(), "edge".into())]),
            approval_mode: ApprovalMode::Manual,
            approval: Approval::Pending,
            bootstrap_tokens: Vec::new(),
            agent_certs: Vec::new(),
            status: ObservedStatus::default(),
            revision: 0,
        }
    }

    fn token(id: TokenId, cluster: Option<&ClusterRecord>) -> TokenRecord {
        TokenRecord {
            id: id.to_string(),
            hash: "h".into(),
            user: "alice".into(),
            groups: vec!["dev".into()],
            cluster: cluster.map(|c| BoundCluster { name: c.name.clone(), id: c.id.clone() }),
            created_at: unix_now(),
            expires_at: unix_now() + 3600,
            created_by: "admin".into(),
        }
    }

    #[tokio::test]
    async fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        let rec = store.create_cluster(cluster("edge-1")).await.expect("create");
        assert!(matches!(store.create_cluster(cluster("edge-1")).await, Err(StoreError::AlreadyExists)));
        let now = unix_now();
        store
            .update_cluster("edge-1", &mut |c| {
                c.approval = Approval::Approved;
                c.agent_certs.push(AgentCert {
                    serial: "ab".into(),
                    issued_at: now,
                    not_after: now + 60,
                    agent_id: "a".into(),
                });
                true
            })
            .await
            .expect("update");
        let tid = TokenId::new();
        store.create_token(token(tid, None)).await.expect("token");
        let grant = GrantRecord {
            cluster: "edge-1".into(),
            subject: Subject::Group("dev".into()),
            allow_impersonate: true,
            created_at: now,
            created_by: "admin".into(),
        };
        store.put_grant(grant.clone()).await.expect("grant");

        let reopened = FileStore::open(dir.path()).expect("reopen");
        let got = reopened.cluster("edge-1").await.expect("get").expect("exists");
        assert_eq!(got.approval, Approval::Approved);
        assert!(got.knows_cert("ab", now));
        assert!(!got.knows_cert("ab", now + 61), "an expired serial is not accepted");
        assert_eq!(got.labels["env"], "edge");
        let by_id = reopened.cluster_by_id(rec.cluster_id().expect("id")).await.expect("get");
        assert_eq!(by_id.map(|c| c.name), Some("edge-1".into()));
        assert_eq!(reopened.token(tid).await.expect("get").map(|t| t.user), Some("alice".into()));
        assert_eq!(reopened.grants().await.expect("grants"), vec![grant]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("store.json")).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn deleting_a_cluster_takes_its_grants_and_bound_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        let a = store.create_cluster(cluster("a")).await.expect("a");
        store.create_cluster(cluster("b")).await.expect("b");
        let (bound, free) = (TokenId::new(), TokenId::new());
        store.create_token(token(bound, Some(&a))).await.expect("bound");
        store.create_token(token(free, None)).await.expect("free");
        for c in ["a", "b", ALL_CLUSTERS] {
            let g = GrantRecord {
                cluster: c.into(),
                subject: Subject::User("alice".into()),
                allow_impersonate: false,
                created_at: 0,
                created_by: "x".into(),
            };
            store.put_grant(g).await.expect("grant");
        }
        assert_eq!(store.delete_cluster("a").await.expect("delete").map(|c| c.id), Some(a.id));
        assert_eq!(store.delete_cluster("a").await.expect("again"), None);
        let left: Vec<String> =
            store.grants().await.expect("grants").into_iter().map(|g| g.cluster).collect();
        assert_eq!(left, vec![ALL_CLUSTERS.to_owned(), "b".to_owned()]);
        assert!(store.token(bound).await.expect("get").is_none());
        assert!(store.token(free).await.expect("get").is_some());
    }

    #[tokio::test]
    async fn an_update_that_changes_nothing_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        store.create_cluster(cluster("c")).await.expect("create");
        let before = std::fs::read(dir.path().join("store.json")).expect("read");
        let rec = store.update_cluster("c", &mut |_| false).await.expect("update");
        assert_eq!(rec.name, "c");
        assert_eq!(std::fs::read(dir.path().join("store.json")).expect("read"), before);
        assert!(matches!(store.update_cluster("nope", &mut |_| true).await, Err(StoreError::NotFound)));
    }

    #[tokio::test]
    async fn every_cluster_write_is_a_change_a_watcher_can_resume_from_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        let mut live = store.watch_clusters(0).await.expect("watch from the start");
        assert!(live.backlog.is_empty());
        store.create_cluster(cluster("a")).await.expect("create");
        store
            .update_cluster("a", &mut |c| c.labels.insert("x".into(), "1".into()).is_none())
            .await
            .expect("label");
        // A write that changes nothing is no change.
        store.update_cluster("a", &mut |_| false).await.expect("nothing");
        store
            .put_grant(GrantRecord {
                cluster: "a".into(),
                subject: Subject::User("u".into()),
                allow_impersonate: false,
                created_at: 0,
                created_by: "x".into(),
            })
            .await
            .expect("grants are not cluster changes");
        store.delete_cluster("a").await.expect("delete");
        let mut seen = Vec::new();
        for _ in 0..3 {
            let c = live.live.recv().await.expect("change");
            seen.push((c.revision, c.kind, c.record.labels.get("x").cloned()));
        }
        assert_eq!(
            seen,
            [
                (1, ChangeKind::Created, None),
                (2, ChangeKind::Updated, Some("1".into())),
                (3, ChangeKind::Deleted, Some("1".into()))
            ]
        );
        assert_eq!(store.list_clusters().await.expect("list").revision, 3);

        let reopened = FileStore::open(dir.path()).expect("reopen");
        let w = reopened.watch_clusters(1).await.expect("resume");
        let revisions: Vec<u64> = w.backlog.iter().map(|c| c.revision).collect();
        assert_eq!(revisions, [2, 3]);
        assert!(reopened.watch_clusters(3).await.expect("caught up").backlog.is_empty());
        assert!(matches!(
            reopened.watch_clusters(9).await.err(),
            Some(StoreError::FutureRevision { requested: 9, current: 3 })
        ));
        reopened.create_cluster(cluster("b")).await.expect("create");
        assert_eq!(reopened.cluster("b").await.expect("get").expect("b").revision, 4);
    }

    #[tokio::test]
    async fn old_changes_are_compacted_and_uncommitted_ones_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        store.create_cluster(cluster("c")).await.expect("create");
        for i in 0..CHANGE_LOG_CAPACITY + 10 {
            store
                .update_cluster("c", &mut |c| {
                    c.created_at = i as u64;
                    true
                })
                .await
                .expect("update");
        }
        let current = store.list_clusters().await.expect("list").revision;
        assert_eq!(current, CHANGE_LOG_CAPACITY as u64 + 11);
        match store.watch_clusters(5).await.err() {
            Some(StoreError::Compacted { requested: 5, oldest }) => {
                assert_eq!(oldest, current - CHANGE_LOG_CAPACITY as u64 + 1)
            }
            other => panic!("expected compacted, got {other:?}"),
        }
        let w = store.watch_clusters(current - 3).await.expect("recent");
        assert_eq!(w.backlog.len(), 3);
        // A change logged but never committed to store.json (a crash between
        // the two writes) is dropped on open.
        let mut phantom = (*w.backlog[2]).clone();
        phantom.revision = current + 1;
        ChangeLog::append(&dir.path().join("changes.jsonl"), &[phantom]).expect("append");
        let reopened = FileStore::open(dir.path()).expect("reopen");
        assert!(reopened.watch_clusters(current).await.expect("watch").backlog.is_empty());
        let lines = std::fs::read_to_string(dir.path().join("changes.jsonl")).expect("log").lines().count();
        assert_eq!(lines, CHANGE_LOG_CAPACITY, "the file is compacted on open");
    }

    #[test]
    fn corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("store.json"), b"{not json").expect("write");
        match FileStore::open(dir.path()) {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("will not start"), "{m}"),
            other => panic!("expected corrupt, got {:?}", other.err()),
        }
        assert_eq!(std::fs::read(dir.path().join("store.json")).expect("kept"), b"{not json");
    }
}
