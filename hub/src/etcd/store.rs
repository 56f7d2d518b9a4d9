//! The [`Store`] on etcd, for several hub replicas.
//!
//! Every record is one key (see [`super::keys`]). Each replica keeps a
//! mirror of everything under `PREFIX/store/`: loaded with paged ranges at
//! one revision, then followed with an etcd watch from the next revision.
//! Reads are served from the mirror (the gateway reads a cluster and the
//! grants on every request), so they never wait for etcd, and keep working
//! while etcd is away. The store's revision is etcd's: every record carries
//! its key's `mod_revision`, and a cluster change is reported at the
//! revision etcd gave it.
//!
//! Writes are etcd transactions. `update_cluster` compares the key's
//! `mod_revision` with the one its closure saw, and on a conflict takes the
//! record the transaction's failure branch read and runs the closure again
//! (at most [`MAX_CAS_ATTEMPTS`] times). A write returns once the mirror
//! has applied it, so a replica reads its own writes. A lookup that finds
//! nothing (a cluster, a token) first makes sure the mirror holds every key
//! etcd modified (one linearizable range, shared by concurrent lookups),
//! so a record written on another replica a moment ago is found at once.
//!
//! Watches: the mirror keeps the last [`CHANGE_LOG_CAPACITY`] cluster
//! changes and broadcasts new ones, as the embedded store does. A watch
//! resuming from an older revision (all replicas restarted since) is served
//! by its own etcd watch from that revision, while etcd keeps the history;
//! after etcd compacted it away the watch is refused with
//! [`StoreError::Compacted`] and the caller lists again. If the mirror
//! itself falls behind a compaction (etcd away for long), it loads afresh
//! and ends every live watch, whose callers then resume.
//!
//! Memory: the records themselves (shared between the mirror's versions),
//! the kept changes, and [`WATCH_BUFFER`] changes per live watcher.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry::ids::{ClusterId, TokenId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::client::{EtcdClient, EtcdConfig, EtcdError, prefix_end};
use super::keys::{Keys, StoreKey};
use super::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest,
    compare, range_request, request_op, response_op,
};
use super::proto::mvccpb::{Event, KeyValue, event};
use crate::store::{
    CHANGE_LOG_CAPACITY, ChangeKind, ClusterChange, ClusterList, ClusterRecord, ClusterUpdate, ClusterWatch,
    GrantRecord, Store, StoreError, Subject, TokenRecord, WATCH_BUFFER, prune_cluster, token_kept, unix_now,
};

/// Keys read per page when the mirror loads.
pub const LOAD_PAGE: i64 = 500;
/// Times `update_cluster` retries a transaction that lost a race.
pub const MAX_CAS_ATTEMPTS: usize = 16;
/// How long a write waits for the mirror to apply it before returning
/// anyway (the write is committed; only this replica's next read may miss
/// it).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause before following etcd again after the watch broke; doubles
/// up to [`FOLLOW_RETRY_MAX`].
pub const FOLLOW_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts to follow etcd.
pub const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(2);

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Everything durable, as of one revision.
#[derive(Clone, Default)]
struct Snapshot {
    /// Every event up to this revision is applied.
    revision: u64,
    clusters: BTreeMap<String, Arc<ClusterRecord>>,
    by_id: HashMap<String, String>,
    tokens: BTreeMap<String, Arc<TokenRecord>>,
    /// By key.
    grants: BTreeMap<String, Arc<GrantRecord>>,
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(key = %String::from_utf8_lossy(&kv.key), error = %e, "skipping an unreadable record in etcd");
            None
        }
    }
}

fn decode_cluster(kv: &KeyValue) -> Option<ClusterRecord> {
    let mut record: ClusterRecord = decode(kv)?;
    record.revision = kv.mod_revision as u64;
    Some(record)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Snapshot {
    /// Applies one put; returns the cluster change it makes, if any.
    fn put(&mut self, keys: &Keys, kv: &KeyValue) -> Option<ClusterChange> {
        let key = String::from_utf8_lossy(&kv.key);
        match keys.parse_store(&key)? {
            StoreKey::Cluster(name) => {
                let record = decode_cluster(kv)?;
                let before = self.clusters.insert(name.to_owned(), Arc::new(record.clone()));
                let kind = match before {
                    Some(b) if b.id == record.id => ChangeKind::Updated,
                    _ => ChangeKind::Created,
                };
                Some(ClusterChange { revision: record.revision, kind, record })
            }
            StoreKey::Token(id) => {
                let token: TokenRecord = decode(kv)?;
                self.tokens.insert(id.to_owned(), Arc::new(token));
                None
            }
            StoreKey::Grant => {
                let grant: GrantRecord = decode(kv)?;
                self.grants.insert(key.into_owned(), Arc::new(grant));
                None
            }
            StoreKey::Sync => None,
        }
    }

    /// Applies one deletion at `revision`; returns the cluster change.
    fn delete(&mut self, keys: &Keys, key: &[u8], revision: u64) -> Option<ClusterChange> {
        let key = String::from_utf8_lossy(key);
        match keys.parse_store(&key)? {
            StoreKey::Cluster(name) => {
                let record = self.clusters.remove(name)?;
                Some(ClusterChange { revision, kind: ChangeKind::Deleted, record: (*record).clone() })
            }
            StoreKey::Token(id) => {
                self.tokens.remove(id);
                None
            }
            StoreKey::Grant => {
                self.grants.remove(key.as_ref());
                None
            }
            StoreKey::Sync => None,
        }
    }

    fn reindex(&mut self) {
        self.by_id = self.clusters.values().map(|c| (c.id.clone(), c.name.clone())).collect();
    }
}

/// The kept cluster changes and the live feed.
struct Log {
    kept: VecDeque<Arc<ClusterChange>>,
    /// Every change after this revision is kept.
    resumable_from: u64,
    feed: broadcast::Sender<Arc<ClusterChange>>,
}

/// One replica's copy of the store.
struct Mirror {
    keys: Keys,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Taken before the snapshot is replaced (see `EtcdStore::watch_clusters`).
    log: Mutex<Log>,
    /// The revision applied so far.
    applied: watch::Sender<u64>,
}

impl Mirror {
    fn read(&self) -> Arc<Snapshot> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a batch of watch events.
    fn apply(&self, events: &[Event]) {
        let mut log = self.log();
        let prev = self.read();
        let mut next = (*prev).clone();
        let mut changes = Vec::new();
        let mut reindex = false;
        for ev in events {
            let Some(kv) = &ev.kv else { continue };
            let revision = kv.mod_revision as u64;
            next.revision = next.revision.max(revision);
            let change = if ev.r#type == event::EventType::Delete as i32 {
                next.delete(&self.keys, &kv.key, revision)
            } else {
                next.put(&self.keys, kv)
            };
            if let Some(c) = change {
                reindex = true;
                changes.push(Arc::new(c));
            }
        }
        if reindex {
            next.reindex();
        }
        let revision = next.revision;
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        for c in changes {
            log.kept.push_back(c.clone());
            if log.kept.len() > CHANGE_LOG_CAPACITY
                && let Some(old) = log.kept.pop_front()
            {
                log.resumable_from = old.revision;
            }
            // No receiver is fine; a lagging one is told so when it reads.
            let _ = log.feed.send(c);
        }
        drop(log);
        self.applied.send_if_modified(|r| {
            let moved = revision > *r;
            *r = (*r).max(revision);
            moved
        });
    }

    /// Replaces everything with a fresh load (after the watch fell behind
    /// a compaction). Live watches end (their feed closes); their callers
    /// resume from their last revision.
    fn replace(&self, snapshot: Snapshot) {
        let mut log = self.log();
        let revision = snapshot.revision;
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        log.kept.clear();
        log.resumable_from = revision;
        log.feed = broadcast::channel(WATCH_BUFFER).0;
        drop(log);
        self.applied.send_replace(revision);
    }
}

/// Reads everything under the store prefix at one revision, page by page.
async fn load(client: &EtcdClient, keys: &Keys) -> Result<Snapshot, EtcdError> {
    let prefix = keys.store();
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.into_bytes();
    let mut revision = 0;
    let mut snapshot = Snapshot::default();
    loop {
        let page = client
            .range(RangeRequest {
                key: from,
                range_end: end.clone(),
                limit: LOAD_PAGE,
                revision,
                ..Default::default()
            })
            .await?;
        if revision == 0 {
            revision = page.header.as_ref().map_or(0, |h| h.revision);
        }
        for kv in &page.kvs {
            snapshot.put(keys, kv);
        }
        match page.kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    snapshot.revision = revision as u64;
    snapshot.reindex();
    Ok(snapshot)
}

/// Follows etcd from the mirror's revision until `stop`, loading afresh
/// when the history it needs was compacted away.
async fn follow(client: EtcdClient, mirror: Arc<Mirror>, stop: CancellationToken) {
    let keys = mirror.keys.clone();
    let prefix = keys.store();
    let mut retry = FOLLOW_RETRY_MIN;
    let mut healthy = true;
    loop {
        let from = *mirror.applied.borrow() as i64 + 1;
        let create = WatchCreateRequest {
            key: prefix.clone().into_bytes(),
            range_end: prefix_end(prefix.as_bytes()),
            start_revision: from,
            ..Default::default()
        };
        let opened = tokio::select! {
            () = stop.cancelled() => return,
            w = client.watch(create) => w,
        };
        let failure = match opened {
            Ok(mut watcher) => {
                if !healthy {
                    info!(revision = from - 1, "following etcd again");
                    healthy = true;
                }
                loop {
                    let next = tokio::select! {
                        () = stop.cancelled() => return,
                        r = watcher.next() => r,
                    };
                    match next {
                        Ok(r) => {
                            retry = FOLLOW_RETRY_MIN;
                            if !r.events.is_empty() {
                                mirror.apply(&r.events);
                            }
                        }
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        if let EtcdError::Compacted { requested } = failure {
            warn!(
                revision = from - 1,
                oldest = requested,
                "etcd compacted changes this replica had not seen; loading the store again"
            );
            match load(&client, &keys).await {
                Ok(snapshot) => {
                    mirror.replace(snapshot);
                    continue;
                }
                Err(e) => warn!(error = %e, "cannot load the store from etcd; trying again"),
            }
        } else if healthy {
            warn!(error = %failure, "lost the etcd watch; reads are served from this replica's copy until it is back");
            healthy = false;
        } else {
            debug!(error = %failure, "etcd still unavailable");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(FOLLOW_RETRY_MAX);
    }
}

/// Lookups waiting for the mirror to catch up share one etcd read.
#[derive(Default)]
struct CatchUp {
    lock: tokio::sync::Mutex<()>,
    /// Catch-ups started so far.
    started: AtomicU64,
    /// The number of the last catch-up that completed.
    done: AtomicU64,
    /// etcd's revision when the last completed catch-up read it.
    revision: AtomicU64,
}

/// The store on etcd (see the module docs).
pub struct EtcdStore {
    client: EtcdClient,
    keys: Keys,
    mirror: Arc<Mirror>,
    catch_up: CatchUp,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn put_op(key: String, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value,
            ..Default::default()
        })),
    }
}

fn delete_op(key: String, prefix: bool) -> RequestOp {
    let range_end = if prefix { prefix_end(key.as_bytes()) } else { Vec::new() };
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into_bytes(),
            range_end,
            prev_kv: false,
        })),
    }
}

fn range_op(key: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        })),
    }
}

fn compare_mod(key: &str, revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(revision)),
        range_end: Vec::new(),
    }
}

fn compare_absent(key: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        range_end: Vec::new(),
    }
}

fn header_revision(header: Option<&super::proto::etcdserverpb::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

impl EtcdStore {
    /// Connects, loads the store under `config.prefix` and starts following
    /// it.
    pub async fn open(config: &EtcdConfig) -> Result<Self, StoreError> {
        let client = EtcdClient::new(config)?;
        let keys = Keys::new(&config.prefix);
        let snapshot = load(&client, &keys).await?;
        let revision = snapshot.revision;
        let mirror = Arc::new(Mirror {
            keys: keys.clone(),
            snapshot: RwLock::new(Arc::new(snapshot)),
            log: Mutex::new(Log {
                kept: VecDeque::new(),
                resumable_from: revision,
                feed: broadcast::channel(WATCH_BUFFER).0,
            }),
            applied: watch::Sender::new(revision),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(follow(client.clone(), mirror.clone(), stop.clone()));
        Ok(EtcdStore { client, keys, mirror, catch_up: CatchUp::default(), stop, tasks })
    }

    /// The etcd client (the replica registry shares it).
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Stops following etcd and waits for the store's tasks.
    pub async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn applied(&self) -> u64 {
        *self.mirror.applied.borrow()
    }

    /// Waits (bounded) until the mirror has applied `revision`.
    async fn settle(&self, revision: i64) {
        let revision = revision.max(0) as u64;
        let mut applied = self.mirror.applied.subscribe();
        let caught = tokio::time::timeout(SETTLE_TIMEOUT, applied.wait_for(|r| *r >= revision)).await;
        if !matches!(caught, Ok(Ok(_))) {
            warn!(revision, "this replica's copy of the store has not caught up with a write yet");
        }
    }

    /// Makes the mirror hold every key modified before this call; returns
    /// etcd's revision at that point. Concurrent callers share one read.
    async fn catch_up(&self) -> Result<u64, StoreError> {
        let arrived = self.catch_up.started.load(Ordering::Acquire);
        let _one = self.catch_up.lock.lock().await;
        // A catch-up that began after this call did is as good as our own.
        if self.catch_up.done.load(Ordering::Acquire) > arrived {
            return Ok(self.catch_up.revision.load(Ordering::Acquire));
        }
        let number = self.catch_up.started.fetch_add(1, Ordering::AcqRel) + 1;
        let prefix = self.keys.store();
        let newest = self
            .client
            .range(RangeRequest {
                key: prefix.clone().into_bytes(),
                range_end: prefix_end(prefix.as_bytes()),
                limit: 1,
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Mod as i32,
                keys_only: true,
                min_mod_revision: self.applied() as i64 + 1,
                ..Default::default()
            })
            .await?;
        if let Some(kv) = newest.kvs.first() {
            self.settle(kv.mod_revision).await;
        }
        let revision = header_revision(newest.header.as_ref()).max(0) as u64;
        self.catch_up.revision.store(revision, Ordering::Release);
        self.catch_up.done.store(number, Ordering::Release);
        Ok(revision)
    }

    /// Writes the sync marker and waits until the mirror has applied it:
    /// afterwards the mirror is at etcd's revision of this moment or later,
    /// deletions included.
    async fn mark(&self) -> Result<(), StoreError> {
        let put =
            PutRequest { key: self.keys.sync().into_bytes(), value: b"sync".to_vec(), ..Default::default() };
        let r = self.client.put(put).await?;
        self.settle(header_revision(r.header.as_ref())).await;
        Ok(())
    }

    /// A cluster as etcd holds it now, with its `mod_revision`.
    async fn read_cluster(&self, name: &str) -> Result<Option<(ClusterRecord, i64)>, StoreError> {
        let r = self
            .client
            .range(RangeRequest { key: self.keys.cluster(name).into_bytes(), ..Default::default() })
            .await?;
        Ok(r.kvs.first().and_then(|kv| decode_cluster(kv).map(|c| (c, kv.mod_revision))))
    }

    /// A lookup in the mirror; when it finds nothing, again after catching
    /// up with etcd. With etcd away, the mirror's answer stands.
    async fn lookup<T>(&self, find: impl Fn(&Snapshot) -> Option<T>) -> Result<Option<T>, StoreError> {
        if let Some(found) = find(&self.mirror.read()) {
            return Ok(Some(found));
        }
        self.refresh().await?;
        Ok(find(&self.mirror.read()))
    }

    /// Cluster changes after `revision` from etcd's own history, for a
    /// watch resuming from before what the mirror keeps.
    async fn history(&self, revision: u64) -> Result<ClusterWatch, StoreError> {
        let compacted =
            || StoreError::Compacted { requested: revision, oldest: self.mirror.log().resumable_from + 1 };
        // A read at the first revision wanted fails if it was compacted.
        let probe = RangeRequest {
            key: self.keys.sync().into_bytes(),
            revision: revision as i64 + 1,
            ..Default::default()
        };
        match self.client.range(probe).await {
            Ok(_) => {}
            Err(EtcdError::Call { code: tonic::Code::OutOfRange, .. }) => return Err(compacted()),
            Err(e) => return Err(e.into()),
        }
        let prefix = self.keys.clusters();
        let create = WatchCreateRequest {
            key: prefix.clone().into_bytes(),
            range_end: prefix_end(prefix.as_bytes()),
            start_revision: revision as i64 + 1,
            prev_kv: true,
            ..Default::default()
        };
        let mut watcher = match self.client.watch(create).await {
            Ok(w) => w,
            Err(EtcdError::Compacted { .. }) => return Err(compacted()),
            Err(e) => return Err(e.into()),
        };
        let (tx, rx) = broadcast::channel(WATCH_BUFFER);
        let stop = self.stop.clone();
        // Ends when the watcher goes away, etcd fails (the watcher's feed
        // closes and it resumes), or the store closes.
        self.tasks.spawn(async move {
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    r = watcher.next() => r,
                };
                let Ok(response) = next else { return };
                for ev in &response.events {
                    if let Some(c) = history_change(ev) {
                        let _ = tx.send(Arc::new(c));
                    }
                }
            }
        });
        Ok(ClusterWatch { backlog: Vec::new(), live: rx })
    }
}

/// A cluster change from an etcd event carrying the previous value.
fn history_change(ev: &Event) -> Option<ClusterChange> {
    let kv = ev.kv.as_ref()?;
    let before = ev.prev_kv.as_ref().and_then(decode_cluster);
    if ev.r#type == event::EventType::Delete as i32 {
        let mut record = before?;
        record.revision = kv.mod_revision as u64;
        return Some(ClusterChange { revision: kv.mod_revision as u64, kind: ChangeKind::Deleted, record });
    }
    let record = decode_cluster(kv)?;
    let kind = match before {
        Some(b) if b.id == record.id => ChangeKind::Updated,
        _ => ChangeKind::Created,
    };
    Some(ClusterChange { revision: record.revision, kind, record })
}

#[tonic::async_trait]
impl Store for EtcdStore {
    async fn cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        self.lookup(|s| s.clusters.get(name).map(|c| (**c).clone())).await
    }

    async fn cluster_by_id(&self, id: ClusterId) -> Result<Option<ClusterRecord>, StoreError> {
        let id = id.to_string();
        self.lookup(|s| s.by_id.get(&id).and_then(|n| s.clusters.get(n)).map(|c| (**c).clone())).await
    }

    async fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        Ok(self.mirror.read().clusters.values().map(|c| (**c).clone()).collect())
    }

    async fn list_clusters(&self) -> Result<ClusterList, StoreError> {
        let s = self.mirror.read();
        Ok(ClusterList {
            clusters: s.clusters.values().map(|c| (**c).clone()).collect(),
            revision: s.revision,
        })
    }

    async fn watch_clusters(&self, revision: u64) -> Result<ClusterWatch, StoreError> {
        if revision > self.applied() {
            // Another replica may have shown the caller a revision this one
            // has not applied yet.
            let current = self.catch_up().await?;
            if revision > current {
                return Err(StoreError::FutureRevision { requested: revision, current });
            }
            if revision > self.applied() {
                self.mark().await?;
            }
        }
        {
            // Under the log's lock the mirror applies nothing: no change
            // falls between the backlog and the subscription.
            let log = self.mirror.log();
            if revision >= log.resumable_from {
                let backlog = log.kept.iter().filter(|c| c.revision > revision).cloned().collect();
                return Ok(ClusterWatch { backlog, live: log.feed.subscribe() });
            }
        }
        self.history(revision).await
    }

    async fn create_cluster(&self, mut record: ClusterRecord) -> Result<ClusterRecord, StoreError> {
        let key = self.keys.cluster(&record.name);
        record.revision = 0;
        let txn = TxnRequest {
            compare: vec![compare_absent(&key)],
            success: vec![put_op(key, encode(&record)?)],
            failure: Vec::new(),
        };
        let r = self.client.txn(txn).await?;
        if !r.succeeded {
            return Err(StoreError::AlreadyExists);
        }
        let revision = header_revision(r.header.as_ref());
        self.settle(revision).await;
        record.revision = revision as u64;
        Ok(record)
    }

    async fn update_cluster(
        &self,
        name: &str,
        update: ClusterUpdate<'_>,
    ) -> Result<ClusterRecord, StoreError> {
        let key = self.keys.cluster(name);
        let mut current = match self.mirror.read().clusters.get(name) {
            Some(c) => Some(((**c).clone(), c.revision as i64)),
            None => self.read_cluster(name).await?,
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((mut record, mod_revision)) = current.take() else { return Err(StoreError::NotFound) };
            if !update(&mut record) {
                return Ok(record);
            }
            prune_cluster(&mut record, unix_now());
            let mut stored = record.clone();
            stored.revision = 0;
            let txn = TxnRequest {
                compare: vec![compare_mod(&key, mod_revision)],
                success: vec![put_op(key.clone(), encode(&stored)?)],
                failure: vec![range_op(key.clone())],
            };
            let r = self.client.txn(txn).await?;
            if r.succeeded {
                let revision = header_revision(r.header.as_ref());
                self.settle(revision).await;
                record.revision = revision as u64;
                return Ok(record);
            }
            // Someone else wrote it first: run the update on what they wrote.
            current = r.responses.into_iter().find_map(|op| match op.response {
                Some(response_op::Response::ResponseRange(range)) => {
                    range.kvs.first().and_then(|kv| decode_cluster(kv).map(|c| (c, kv.mod_revision)))
                }
                _ => None,
            });
        }
        Err(StoreError::Unavailable(format!(
            "cluster {name:?} kept changing under {MAX_CAS_ATTEMPTS} attempts to update it"
        )))
    }

    async fn delete_cluster(&self, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
        let key = self.keys.cluster(name);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((record, mod_revision)) = self.read_cluster(name).await? else { return Ok(None) };
            let mut success = vec![delete_op(key.clone(), false), delete_op(self.keys.grants_of(name), true)];
            let bound = self.mirror.read();
            for (id, token) in &bound.tokens {
                if token.cluster.as_ref().is_some_and(|c| c.id == record.id) {
                    success.push(delete_op(self.keys.token(id), false));
                }
            }
            let txn =
                TxnRequest { compare: vec![compare_mod(&key, mod_revision)], success, failure: Vec::new() };
            let r = self.client.txn(txn).await?;
            if r.succeeded {
                self.settle(header_revision(r.header.as_ref())).await;
                return Ok(Some(record));
            }
        }
        Err(StoreError::Unavailable(format!(
            "cluster {name:?} kept changing under {MAX_CAS_ATTEMPTS} attempts to delete it"
        )))
    }

    async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let id = id.to_string();
        self.lookup(|s| s.tokens.get(&id).map(|t| (**t).clone())).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut tokens: Vec<TokenRecord> =
            self.mirror.read().tokens.values().map(|t| (**t).clone()).collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        let key = self.keys.token(&token.id);
        let mut success = vec![put_op(key.clone(), encode(&token)?)];
        // Tokens long expired go with the next one created.
        let now = unix_now();
        for (id, old) in &self.mirror.read().tokens {
            if !token_kept(old, now) && *id != token.id {
                success.push(delete_op(self.keys.token(id), false));
            }
        }
        let txn = TxnRequest { compare: vec![compare_absent(&key)], success, failure: Vec::new() };
        let r = self.client.txn(txn).await?;
        if !r.succeeded {
            return Err(StoreError::AlreadyExists);
        }
        self.settle(header_revision(r.header.as_ref())).await;
        Ok(())
    }

    async fn delete_token(&self, id: TokenId) -> Result<Option<TokenRecord>, StoreError> {
        let key = self.keys.token(&id.to_string()).into_bytes();
        let r = self.client.delete(DeleteRangeRequest { key, range_end: Vec::new(), prev_kv: true }).await?;
        self.settle(header_revision(r.header.as_ref())).await;
        Ok(r.prev_kvs.first().and_then(decode))
    }

    async fn grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        let mut grants: Vec<GrantRecord> =
            self.mirror.read().grants.values().map(|g| (**g).clone()).collect();
        grants.sort_by(|a, b| (&a.cluster, &a.subject).cmp(&(&b.cluster, &b.subject)));
        Ok(grants)
    }

    async fn put_grant(&self, grant: GrantRecord) -> Result<(), StoreError> {
        let key = self.keys.grant(&grant.cluster, &grant.subject).into_bytes();
        let r = self.client.put(PutRequest { key, value: encode(&grant)?, ..Default::default() }).await?;
        self.settle(header_revision(r.header.as_ref())).await;
        Ok(())
    }

    async fn delete_grant(
        &self,
        cluster: &str,
        subject: &Subject,
    ) -> Result<Option<GrantRecord>, StoreError> {
        let key = self.keys.grant(cluster, subject).into_bytes();
        let r = self.client.delete(DeleteRangeRequest { key, range_end: Vec::new(), prev_kv: true }).await?;
        self.settle(header_revision(r.header.as_ref())).await;
        Ok(r.prev_kvs.first().and_then(decode))
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        if let Err(e) = self.catch_up().await {
            debug!(error = %e, "cannot catch up with etcd; answering from this replica's copy");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use ferry::secret::Secret;
    use ferry_integration::etcd::{Etcd, EtcdTls as ServerTls};

    use super::*;
    use crate::etcd::EtcdTls;
    use crate::store::contract::{self, Backend, cluster, grant, token};

    fn config(etcd: &Etcd, prefix: &str) -> EtcdConfig {
        EtcdConfig::from_url(&etcd.store_url(), prefix, None).expect("config")
    }

    struct OnEtcd {
        etcd: Arc<Etcd>,
        prefix: String,
    }

    #[tonic::async_trait]
    impl Backend for OnEtcd {
        async fn open(&self) -> Box<dyn Store> {
            Box::new(EtcdStore::open(&config(&self.etcd, &self.prefix)).await.expect("open"))
        }
    }

    #[tokio::test]
    async fn the_etcd_store_keeps_the_store_contract() {
        let etcd = Arc::new(Etcd::start());
        let n = AtomicUsize::new(0);
        // Each test on its own prefix of one etcd: prefixes keep hubs apart.
        contract::all(|| {
            let prefix = format!("/ferry-{}", n.fetch_add(1, Ordering::Relaxed));
            Box::new(OnEtcd { etcd: etcd.clone(), prefix }) as Box<dyn Backend>
        })
        .await;
    }

    fn counter(c: &ClusterRecord) -> u32 {
        c.labels.get("n").and_then(|n| n.parse().ok()).unwrap_or(0)
    }

    async fn bump(store: &EtcdStore, times: usize) {
        for _ in 0..times {
            store
                .update_cluster("edge", &mut |c| {
                    let next = counter(c) + 1;
                    c.labels.insert("n".into(), next.to_string());
                    true
                })
                .await
                .expect("update");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_see_each_others_writes_at_once_and_updates_are_atomic() {
        let etcd = Etcd::start();
        let a = EtcdStore::open(&config(&etcd, "/ferry")).await.expect("a");
        let b = EtcdStore::open(&config(&etcd, "/ferry")).await.expect("b");

        // What one replica writes, another finds on its very next read.
        let created = a.create_cluster(cluster("edge")).await.expect("create");
        let id = created.cluster_id().expect("id");
        assert_eq!(b.cluster_by_id(id).await.expect("get").map(|c| c.revision), Some(created.revision));
        let tid = TokenId::new();
        a.create_token(token(tid, Some(&created))).await.expect("token");
        assert!(b.token(tid).await.expect("get").is_some());
        a.put_grant(grant("edge", Subject::Group("sre".into()))).await.expect("grant");
        b.refresh().await.expect("refresh");
        assert_eq!(b.grants().await.expect("grants").len(), 1);

        // A watch on one replica sees the other's writes; a revision shown
        // by one is good for resuming on the other at once.
        let start = b.list_clusters().await.expect("list").revision;
        let mut watch = b.watch_clusters(start).await.expect("watch");
        let labelled = a
            .update_cluster("edge", &mut |c| c.labels.insert("tier".into(), "1".into()).is_none())
            .await
            .expect("label");
        assert!(b.watch_clusters(labelled.revision).await.expect("resume on b").backlog.is_empty());
        let seen = watch.live.recv().await.expect("change");
        assert_eq!((seen.revision, seen.kind), (labelled.revision, ChangeKind::Updated));

        // Concurrent updates on both replicas: none is lost.
        tokio::join!(bump(&a, 15), bump(&b, 15));
        let final_a = counter(&a.read_cluster("edge").await.expect("read").expect("edge").0);
        assert_eq!(final_a, 30, "every update applied exactly once");
        b.refresh().await.expect("refresh");
        assert_eq!(counter(&b.cluster("edge").await.expect("get").expect("edge")), 30);

        // Deleting on one replica takes the bound token everywhere.
        a.delete_cluster("edge").await.expect("delete");
        b.mark().await.expect("mark");
        assert!(b.cluster("edge").await.expect("get").is_none());
        assert!(b.token(tid).await.expect("get").is_none());
        assert!(b.grants().await.expect("grants").is_empty());
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_watch_from_before_a_replica_started_reads_history_until_etcd_compacts_it() {
        let etcd = Etcd::start();
        let a = EtcdStore::open(&config(&etcd, "/ferry")).await.expect("a");
        let first = a.create_cluster(cluster("c")).await.expect("create").revision;
        let mut last = first;
        for i in 0..3 {
            last = a
                .update_cluster("c", &mut |c| {
                    c.created_at = i;
                    true
                })
                .await
                .expect("update")
                .revision;
        }
        // A replica started now keeps no change of its own from before.
        let b = EtcdStore::open(&config(&etcd, "/ferry")).await.expect("b");
        let mut w = b.watch_clusters(first).await.expect("history");
        assert!(w.backlog.is_empty());
        let mut revisions = Vec::new();
        while revisions.len() < 3 {
            revisions.push(w.live.recv().await.expect("change").revision);
        }
        assert_eq!(revisions.last(), Some(&last));
        // A change made after the watch started comes through it too.
        let next = a.update_cluster("c", &mut |c| c.labels.insert("x".into(), "y".into()).is_none()).await;
        assert_eq!(w.live.recv().await.expect("live").revision, next.expect("update").revision);

        a.client().compact(last as i64).await.expect("compact");
        let c = EtcdStore::open(&config(&etcd, "/ferry")).await.expect("c");
        match c.watch_clusters(first).await.err() {
            Some(StoreError::Compacted { requested, oldest }) => {
                assert_eq!((requested, oldest > last), (first, true))
            }
            other => panic!("expected compacted, got {other:?}"),
        }
        for s in [a, b, c] {
            s.close().await;
        }
    }

    #[tokio::test]
    async fn reads_outlive_etcd_and_writes_resume_after_its_restart() {
        let mut etcd = Etcd::start();
        let store = EtcdStore::open(&config(&etcd, "/ferry")).await.expect("open");
        store.create_cluster(cluster("c")).await.expect("create");
        etcd.kill();
        assert!(store.cluster("c").await.expect("read from the mirror").is_some());
        assert!(store.cluster("gone").await.expect("a miss is answered too").is_none());
        assert!(matches!(store.create_cluster(cluster("d")).await, Err(StoreError::Unavailable(_))));
        etcd.restart();
        let d = store.create_cluster(cluster("d")).await.expect("writes resume");
        let mut applied = store.mirror.applied.subscribe();
        applied.wait_for(|r| *r >= d.revision).await.expect("the mirror follows again");
        store.close().await;
    }

    #[tokio::test]
    async fn tls_with_client_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write");
            p
        };
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::from_ca_cert_der(ca_cert.der(), &ca_key).expect("issuer");
        let leaf = |ip: bool| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            if ip {
                params.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip"))];
            }
            params.distinguished_name.push(rcgen::DnType::CommonName, "ferry-hub");
            let cert = params.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(true);
        let (client_cert, client_key) = leaf(false);
        let tls = ServerTls {
            ca: write("ca.crt", ca_cert.pem()),
            server_cert: write("server.crt", server_cert),
            server_key: write("server.key", server_key),
        };
        let etcd = Etcd::start_with(Some(tls));
        let with = |client: Option<(String, Secret)>| {
            let tls = EtcdTls { ca_pem: ca_cert.pem().into_bytes(), client };
            EtcdConfig::from_url(&etcd.store_url(), "/ferry", Some(tls)).expect("config")
        };
        let store = EtcdStore::open(&with(Some((client_cert, Secret::new(client_key))))).await.expect("mTLS");
        store.create_cluster(cluster("c")).await.expect("create over TLS");
        store.close().await;
        assert!(EtcdStore::open(&with(None)).await.is_err(), "etcd requires a client certificate");
    }
}
