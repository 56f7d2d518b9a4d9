//! `Clusters.Watch`: the store's cluster changes, as the caller may see
//! them.
//!
//! A watch reads the store's change log from the revision the caller
//! gives (or lists every cluster first, from revision 0), then follows new
//! changes. Each change is shown as the record was written (phase, agents,
//! version, nodes, labels, approval: see [`crate::status`] for when those
//! are written); one that shows nothing new to this caller (an agent
//! certificate renewed, say) is skipped. What a caller may see is decided
//! at each change: admins see every cluster, users those their grants
//! cover at that moment.
//!
//! Memory per watch is bounded: the store's broadcast buffer
//! ([`WATCH_BUFFER`](crate::store::WATCH_BUFFER)) and [`EVENT_BUFFER`]
//! events towards the caller. A caller too slow for the broadcast is cut
//! off with a message naming the revision to resume from, which the change
//! log then serves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ferry::proto::v1::{Cluster, ClusterEvent, EventType, WatchClustersRequest};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::selector::Selector;
use super::{store_error, view};
use crate::access;
use crate::auth::Authenticated;
use crate::state::HubState;
use crate::store::{ChangeKind, ClusterChange, ClusterRecord, StoreError};

/// Events buffered towards one watcher (its gRPC stream's own flow
/// control holds the rest back).
pub const EVENT_BUFFER: usize = 64;
/// How often an idle watch gets a bookmark (its latest revision, to resume
/// from, and a sign of life through proxies).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);
/// Concurrent watches one hub serves.
pub const MAX_WATCHES: usize = 4096;

/// The stream a watch answers with.
pub type EventStream = ReceiverStream<Result<ClusterEvent, Status>>;

/// What one watcher is shown.
struct Watcher {
    who: Authenticated,
    selector: Selector,
    name: String,
    /// Clusters this stream has shown as present (for DELETED when one
    /// stops matching or goes away).
    seen: HashSet<String>,
    /// What was last sent per cluster, to skip changes that show nothing
    /// new.
    sent: HashMap<String, Cluster>,
    /// The revision of the last change looked at.
    revision: u64,
}

impl Watcher {
    fn wants(&self, record: &ClusterRecord, grants: &[crate::store::GrantRecord]) -> bool {
        (self.name.is_empty() || self.name == record.name)
            && self.selector.matches(&record.labels)
            && (self.who.is_admin()
                || grants.iter().any(|g| access::grant_applies(g, &record.name, &self.who.identity)))
    }

    fn event(kind: EventType, cluster: Cluster, revision: u64) -> ClusterEvent {
        ClusterEvent { r#type: kind as i32, cluster: Some(cluster), revision }
    }

    fn bookmark(&self) -> ClusterEvent {
        ClusterEvent { r#type: EventType::Bookmark as i32, cluster: None, revision: self.revision }
    }

    /// What to send for one change, if anything.
    fn on_change(
        &mut self,
        change: &ClusterChange,
        grants: &[crate::store::GrantRecord],
    ) -> Option<ClusterEvent> {
        if change.revision <= self.revision {
            return None;
        }
        self.revision = change.revision;
        let name = &change.record.name;
        let cluster = view::recorded(&change.record);
        if change.kind == ChangeKind::Deleted {
            self.sent.remove(name);
            let shown = self.seen.remove(name);
            return (shown || (self.who.is_admin() && self.wants(&change.record, grants)))
                .then(|| Self::event(EventType::Deleted, cluster, change.revision));
        }
        if !self.wants(&change.record, grants) {
            self.sent.remove(name);
            return self.seen.remove(name).then(|| Self::event(EventType::Deleted, cluster, change.revision));
        }
        let newly = self.seen.insert(name.clone());
        let kind =
            if newly || change.kind == ChangeKind::Created { EventType::Added } else { EventType::Modified };
        let same = |a: &Cluster, b: &Cluster| {
            Cluster { revision: 0, ..a.clone() } == Cluster { revision: 0, ..b.clone() }
        };
        if kind == EventType::Modified && self.sent.get(name).is_some_and(|last| same(last, &cluster)) {
            return None;
        }
        self.sent.insert(name.clone(), cluster.clone());
        Some(Self::event(kind, cluster, change.revision))
    }
}

/// Maps a store refusal of the revision to what the caller should do.
fn revision_error(e: StoreError) -> Status {
    match e {
        StoreError::Compacted { requested, oldest } => Status::out_of_range(format!(
            "revision {requested} is too old: the hub keeps changes from revision {oldest} on; list the clusters again and watch from the list's revision"
        )),
        StoreError::FutureRevision { requested, current } => Status::out_of_range(format!(
            "revision {requested} is newer than the hub's ({current}): the hub's store was replaced; list the clusters again and watch from the list's revision"
        )),
        e => store_error(e),
    }
}

/// Starts a watch for `who`; the stream's task is owned by the hub.
pub async fn start(
    state: Arc<HubState>,
    who: Authenticated,
    req: WatchClustersRequest,
    permit: OwnedSemaphorePermit,
) -> Result<EventStream, Status> {
    let selector = Selector::parse(&req.label_selector).map_err(Status::invalid_argument)?;
    let mut watcher = Watcher {
        who,
        selector,
        name: req.name.clone(),
        seen: HashSet::new(),
        sent: HashMap::new(),
        revision: req.revision,
    };
    let mut initial = Vec::new();
    let grants = state.store.grants().await.map_err(store_error)?;
    let list = state.store.list_clusters().await.map_err(store_error)?;
    let from = if req.revision == 0 { list.revision } else { req.revision };
    let mut changes = state.store.watch_clusters(from).await.map_err(revision_error)?;
    let wanted: Vec<&ClusterRecord> = list.clusters.iter().filter(|r| watcher.wants(r, &grants)).collect();
    for record in wanted {
        watcher.seen.insert(record.name.clone());
        if req.revision == 0 {
            let cluster = view::live(&state, record);
            watcher.sent.insert(record.name.clone(), cluster.clone());
            initial.push(Watcher::event(EventType::Added, cluster, list.revision));
        }
    }
    if req.revision == 0 {
        watcher.revision = list.revision;
    }
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    tasks.spawn(async move {
        let _permit = permit;
        let send = |event: Result<ClusterEvent, Status>| {
            let tx = tx.clone();
            async move { tx.send(event).await.is_ok() }
        };
        for event in initial {
            if !send(Ok(event)).await {
                return;
            }
        }
        for change in std::mem::take(&mut changes.backlog) {
            let grants = match state.store.grants().await {
                Ok(g) => g,
                Err(e) => {
                    let _ = send(Err(store_error(e))).await;
                    return;
                }
            };
            if let Some(event) = watcher.on_change(&change, &grants)
                && !send(Ok(event)).await
            {
                return;
            }
        }
        if !send(Ok(watcher.bookmark())).await {
            return;
        }
        let mut bookmarks = tokio::time::interval(BOOKMARK_INTERVAL);
        bookmarks.reset();
        loop {
            let change = tokio::select! {
                c = changes.live.recv() => c,
                _ = bookmarks.tick() => {
                    if !send(Ok(watcher.bookmark())).await {
                        return;
                    }
                    continue;
                }
                () = tx.closed() => return,
                () = shutdown.cancelled() => {
                    let _ = tx.try_send(Err(Status::unavailable(format!(
                        "the hub is shutting down; watch again from revision {}", watcher.revision
                    ))));
                    return;
                }
            };
            let change = match change {
                Ok(c) => c,
                Err(RecvError::Lagged(_)) => {
                    let _ = send(Err(Status::unavailable(format!(
                        "this watch fell behind the hub's changes; watch again from revision {}",
                        watcher.revision
                    ))))
                    .await;
                    return;
                }
                Err(RecvError::Closed) => return,
            };
            let grants = match state.store.grants().await {
                Ok(g) => g,
                Err(e) => {
                    let _ = send(Err(store_error(e))).await;
                    return;
                }
            };
            if let Some(event) = watcher.on_change(&change, &grants) {
                bookmarks.reset();
                if !send(Ok(event)).await {
                    return;
                }
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
