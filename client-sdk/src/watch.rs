//! Following clusters as they change: [`Hub::watch_clusters`].
//!
//! The hub numbers every change with a revision and keeps the recent ones,
//! across its restarts. The stream remembers the revision of the last event
//! it yielded; when the connection drops (the hub restarts, the network
//! blips) it reconnects by itself, with backoff, and resumes from there, so
//! no change is missed. When the hub no longer has the changes after that
//! revision it lists every cluster again and yields
//! [`ClusterEvent::Relisted`].

use std::time::Duration;

use ferry::proto::v1 as pb;
use futures_util::Stream;
use tonic::{Code, Streaming};

use crate::error::ManagementError;
use crate::management::{Cluster, Hub};

/// First pause before reconnecting a dropped watch.
pub const WATCH_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest pause between reconnection attempts (the pause doubles up to
/// this while the hub stays away).
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// What [`Hub::watch_clusters`] follows.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    /// Resume after this revision (a list's, or the last event's you
    /// handled); `None`: start with every cluster as
    /// [`ClusterEvent::Added`].
    pub revision: Option<u64>,
    /// Only clusters matching this label selector.
    pub label_selector: Option<String>,
    /// Only this cluster.
    pub name: Option<String>,
}

/// One change to the clusters a watch follows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterEvent {
    /// A cluster was registered, started to match the watch, or (for a
    /// watch from the start) exists.
    Added {
        /// The cluster.
        cluster: Cluster,
        /// The revision of the change.
        revision: u64,
    },
    /// Something shown of a cluster changed (phase, agents, version, nodes,
    /// labels, approval).
    Modified {
        /// The cluster after the change.
        cluster: Cluster,
        /// The revision of the change.
        revision: u64,
    },
    /// A cluster was deleted or no longer matches the watch.
    Deleted {
        /// Its last state.
        cluster: Cluster,
        /// The revision of the change.
        revision: u64,
    },
    /// Nothing changed; the watch has caught up to `revision` (after the
    /// initial events, and periodically while idle). Keep it to resume
    /// from later.
    Bookmark {
        /// The revision caught up to.
        revision: u64,
    },
    /// The hub no longer had the changes after the watch's revision (it
    /// was away too long): these are all the clusters it follows now, and
    /// the watch goes on from `revision`.
    Relisted {
        /// Every cluster the watch follows.
        clusters: Vec<Cluster>,
        /// The revision of the list.
        revision: u64,
    },
}

impl ClusterEvent {
    /// The revision this event brings the watch to.
    pub fn revision(&self) -> u64 {
        match self {
            ClusterEvent::Added { revision, .. }
            | ClusterEvent::Modified { revision, .. }
            | ClusterEvent::Deleted { revision, .. }
            | ClusterEvent::Bookmark { revision }
            | ClusterEvent::Relisted { revision, .. } => *revision,
        }
    }

    /// The cluster the event is about, if it is about one.
    pub fn cluster(&self) -> Option<&Cluster> {
        match self {
            ClusterEvent::Added { cluster, .. }
            | ClusterEvent::Modified { cluster, .. }
            | ClusterEvent::Deleted { cluster, .. } => Some(cluster),
            _ => None,
        }
    }
}

/// What to do after a failure.
enum Next {
    /// Reconnect after a pause.
    Retry,
    /// List again, then watch from the list.
    Relist,
    /// Give up: the caller must act.
    Fail(ManagementError),
}

/// The watch's progress across reconnects.
struct State {
    hub: Hub,
    options: WatchOptions,
    revision: Option<u64>,
    stream: Option<Streaming<pb::ClusterEvent>>,
    pause: Duration,
    done: bool,
}

impl State {
    async fn classify(&self, status: &tonic::Status) -> Next {
        match status.code() {
            Code::OutOfRange => Next::Relist,
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unimplemented => Next::Fail(self.hub.error(status).await),
            _ => Next::Retry,
        }
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(WATCH_RETRY_MAX);
    }

    async fn relist(&mut self) -> Result<ClusterEvent, Next> {
        let page = match self.hub.list_all_clusters(self.options.label_selector.as_deref()).await {
            Ok(p) => p,
            Err(
                e @ (ManagementError::PermissionDenied(_)
                | ManagementError::Unauthenticated(_)
                | ManagementError::InvalidArgument(_)),
            ) => return Err(Next::Fail(e)),
            Err(_) => return Err(Next::Retry),
        };
        let clusters = match &self.options.name {
            Some(name) => page.clusters.into_iter().filter(|c| &c.name == name).collect(),
            None => page.clusters,
        };
        self.revision = Some(page.revision);
        Ok(ClusterEvent::Relisted { clusters, revision: page.revision })
    }

    /// The next event, reconnecting as needed; `None` once failed.
    async fn next(&mut self) -> Option<Result<ClusterEvent, ManagementError>> {
        if self.done {
            return None;
        }
        loop {
            let next = match self.stream.as_mut() {
                None => {
                    let request = pb::WatchClustersRequest {
                        revision: self.revision.unwrap_or(0),
                        label_selector: self.options.label_selector.clone().unwrap_or_default(),
                        name: self.options.name.clone().unwrap_or_default(),
                    };
                    match self.hub.clusters_client().watch(request).await {
                        Ok(response) => {
                            self.stream = Some(response.into_inner());
                            continue;
                        }
                        Err(status) => self.classify(&status).await,
                    }
                }
                Some(stream) => match stream.message().await {
                    Ok(Some(event)) => match self.event(event) {
                        Ok(e) => {
                            self.pause = WATCH_RETRY_MIN;
                            return Some(Ok(e));
                        }
                        Err(e) => Next::Fail(e),
                    },
                    // The hub ended the stream (it is shutting down).
                    Ok(None) => Next::Retry,
                    Err(status) => self.classify(&status).await,
                },
            };
            self.stream = None;
            match next {
                Next::Retry => {
                    tracing::debug!(revision = ?self.revision, "cluster watch interrupted; reconnecting");
                    self.pause().await;
                }
                Next::Relist => match self.relist().await {
                    Ok(event) => return Some(Ok(event)),
                    Err(Next::Fail(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    Err(_) => self.pause().await,
                },
                Next::Fail(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }

    fn event(&mut self, e: pb::ClusterEvent) -> Result<ClusterEvent, ManagementError> {
        let revision = e.revision;
        let cluster = || -> Result<Cluster, ManagementError> {
            e.cluster
                .clone()
                .ok_or_else(|| ManagementError::InvalidResponse("an event without its cluster".into()))?
                .try_into()
        };
        let event = match pb::EventType::try_from(e.r#type) {
            Ok(pb::EventType::Added) => ClusterEvent::Added { cluster: cluster()?, revision },
            Ok(pb::EventType::Modified) => ClusterEvent::Modified { cluster: cluster()?, revision },
            Ok(pb::EventType::Deleted) => ClusterEvent::Deleted { cluster: cluster()?, revision },
            Ok(pb::EventType::Bookmark) => ClusterEvent::Bookmark { revision },
            _ => return Err(ManagementError::InvalidResponse(format!("unknown event type {}", e.r#type))),
        };
        self.revision = Some(revision);
        Ok(event)
    }
}

impl Hub {
    /// Follows the clusters the caller may see: a [`Stream`] of
    /// [`ClusterEvent`]s that reconnects and resumes by itself (see the
    /// module docs) and ends only after an error the caller must act on
    /// (credentials refused, a bad selector).
    ///
    /// ```no_run
    /// # async fn run(hub: ferry_client_sdk::Hub) -> Result<(), ferry_client_sdk::ManagementError> {
    /// use ferry_client_sdk::{ClusterEvent, WatchOptions};
    /// use futures_util::StreamExt;
    ///
    /// let mut events = std::pin::pin!(hub.watch_clusters(WatchOptions::default()));
    /// while let Some(event) = events.next().await {
    ///     if let Some(cluster) = event?.cluster() {
    ///         println!("{} is {}", cluster.name, cluster.phase);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn watch_clusters(
        &self,
        options: WatchOptions,
    ) -> impl Stream<Item = Result<ClusterEvent, ManagementError>> + Send + 'static {
        let state = State {
            hub: self.clone(),
            revision: options.revision,
            options,
            stream: None,
            pause: WATCH_RETRY_MIN,
            done: false,
        };
        futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
    }
}
