//! Live state: which agent sessions are connected for which cluster, what
//! each last reported, and their parked request streams.
//!
//! Nothing here is durable: the status recorder ([`crate::status`]) writes
//! what is shown of it to the store when it changes; the registry tells it
//! which clusters to look at through its [`ChangeFeed`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::ids::{ClusterId, SessionId};
use ferry::proto::v1::{AgentFrame, HubControl, HubFrame, OpenStreams, hub_control};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::store::{Capacity, Check, CheckState, NodeCount, unix_now};

/// Sender half of a parked stream (hub to agent).
pub type FrameTx = mpsc::Sender<Result<HubFrame, Status>>;
/// Sender half of a control stream (hub to agent).
pub type ControlTx = mpsc::Sender<Result<HubControl, Status>>;

/// An idle request stream an agent opened and the hub holds until a
/// request needs it.
pub struct Parked {
    /// Session that opened it.
    pub session: SessionId,
    /// Frames to the agent.
    pub tx: FrameTx,
    /// Frames from the agent.
    pub rx: Streaming<AgentFrame>,
    /// Whether the session's agent understands the whole layout
    /// (`Hello.whole_layout`); set when the stream is parked.
    pub whole_layout: bool,
}

/// An agent's status report, cleaned of anything unprintable or too long.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// Kubernetes version (`gitVersion`).
    pub kubernetes_version: String,
    /// Platform (`linux/amd64`).
    pub platform: String,
    /// Whether the agent reached its apiserver.
    pub apiserver_reachable: bool,
    /// Why not.
    pub apiserver_error: String,
    /// Permissions the agent lacks.
    pub missing_permissions: Vec<String>,
    /// `/readyz`.
    pub readyz: Check,
    /// `/livez`.
    pub livez: Check,
    /// Node counts, if the agent could list nodes.
    pub nodes: Option<NodeCount>,
    /// Summed node capacity.
    pub capacity: Option<Capacity>,
    /// Summed node allocatable.
    pub allocatable: Option<Capacity>,
    /// When the agent took it, milliseconds since the Unix epoch (agent
    /// clock).
    pub observed_at_ms: u64,
    /// Round trip of the agent's last answered heartbeat, microseconds.
    pub heartbeat_rtt_micros: u64,
}

impl AgentReport {
    /// Whether two reports show the same (times and round trips aside).
    pub fn shows_same(&self, other: &AgentReport) -> bool {
        let strip = |r: &AgentReport| AgentReport { observed_at_ms: 0, heartbeat_rtt_micros: 0, ..r.clone() };
        strip(self) == strip(other)
    }

    /// How healthy the report is, for picking the best of several agents.
    fn rank(&self) -> (bool, bool, bool, bool) {
        (
            self.apiserver_reachable,
            self.readyz.state != CheckState::Failed,
            self.livez.state != CheckState::Failed,
            self.missing_permissions.is_empty(),
        )
    }
}

/// What the hub knows of one connected agent session.
pub struct SessionInfo {
    /// Agent instance id.
    pub agent_id: String,
    /// Agent software version.
    pub agent_version: String,
    /// The agent's last status report (`None` until its first).
    pub report: Option<AgentReport>,
    /// When the session started, seconds since the Unix epoch.
    pub connected_at: u64,
    /// When the agent was last heard from, milliseconds since the Unix
    /// epoch.
    pub last_heartbeat_ms: u64,
    /// Control stream, for signals such as "open more streams".
    pub control: ControlTx,
    /// Cancelled to end the session (cluster deleted or denied).
    pub revoke: CancellationToken,
    /// The agent understands the whole layout (`Hello.whole_layout`).
    pub whole_layout: bool,
}

/// One connected agent replica, as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The session.
    pub session: SessionId,
    /// Agent instance id.
    pub agent_id: String,
    /// Agent software version.
    pub agent_version: String,
    /// When the session started, seconds since the Unix epoch.
    pub connected_at: u64,
    /// When the agent was last heard from, milliseconds since the Unix
    /// epoch.
    pub last_heartbeat_ms: u64,
    /// Its last report.
    pub report: Option<AgentReport>,
}

/// A summary of one cluster's connected agents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSummary {
    /// Connected sessions.
    pub sessions: usize,
    /// The healthiest report among them (`None`: no report yet).
    pub best: Option<AgentReport>,
    /// Permissions any session's agent reported missing, sorted, no
    /// repeats.
    pub missing_permissions: Vec<String>,
    /// Last time an agent was heard from, seconds since the Unix epoch (0:
    /// never since the hub started).
    pub last_seen: u64,
    /// The sessions, by agent id.
    pub replicas: Vec<Replica>,
}

/// The names of clusters whose live state changed since the status
/// recorder last looked (a set: a burst of changes is one look).
#[derive(Default)]
pub struct ChangeFeed {
    names: Mutex<BTreeSet<String>>,
    notify: Notify,
    /// Bumped at every mark, for followers other than the recorder (the
    /// replica registry).
    generation: watch::Sender<u64>,
}

impl ChangeFeed {
    /// Marks cluster `name` for the recorder.
    pub fn mark(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if !names.contains(name) {
            names.insert(name.to_owned());
        }
        drop(names);
        self.notify.notify_one();
        self.generation.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes at every [`ChangeFeed::mark`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Takes the marked names.
    pub fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Resolves after the next [`ChangeFeed::mark`] (or at once if one
    /// happened since the last wait).
    pub async fn marked(&self) {
        self.notify.notified().await;
    }
}

/// How long a parked stream beyond the pool size may stay idle before the
/// hub closes it. Streams come back to the pool after each request they
/// carry (the agent reuses them), so a burst of N concurrent requests leaves
/// N parked; the surplus goes once traffic is quiet for this long.
pub const PARKED_IDLE_TRIM: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionId, SessionInfo>,
    /// Parked streams, with when each was parked; the newest at the back.
    pool: VecDeque<(Instant, Parked)>,
    /// Parked streams per session.
    parked_by: HashMap<SessionId, usize>,
    /// Turns taken so far: requests go round the sessions with parked
    /// streams.
    turn: usize,
}

impl Inner {
    fn unparked(&mut self, session: SessionId) {
        if let Some(n) = self.parked_by.get_mut(&session) {
            *n = n.saturating_sub(1);
        }
    }

    /// Takes a parked stream for a request: the sessions with parked
    /// streams take turns (so requests spread over every agent session of
    /// the cluster, whichever replica of the agent or of this cluster's
    /// agents they belong to), and within one session the newest stream
    /// goes (it is the likeliest to be alive, and the oldest age into the
    /// surplus that `trim_idle` closes).
    fn take_next(&mut self) -> Option<Parked> {
        let back = self.pool.len().checked_sub(1)?;
        let mut with: Vec<SessionId> =
            self.parked_by.iter().filter(|(_, n)| **n > 0).map(|(s, _)| *s).collect();
        with.sort_unstable();
        let pos = match with.get(self.turn % with.len().max(1)) {
            Some(session) => self.pool.iter().rposition(|(_, p)| p.session == *session).unwrap_or(back),
            None => back,
        };
        self.turn = self.turn.wrapping_add(1);
        let (_, p) = self.pool.remove(pos)?;
        self.unparked(p.session);
        Some(p)
    }
}

/// One cluster's live state.
pub struct LiveCluster {
    /// Cluster name.
    pub name: String,
    /// Cluster id.
    pub id: ClusterId,
    feed: Arc<ChangeFeed>,
    inner: Mutex<Inner>,
    parked: Notify,
    sessions_tx: watch::Sender<usize>,
    /// Bumped whenever anything the cluster's phase depends on changes.
    changes: watch::Sender<u64>,
    in_flight: Arc<AtomicUsize>,
    callers: CallerCounts,
    last_seen: std::sync::atomic::AtomicU64,
}

/// Streams one agent session may keep parked at once. Legitimate agents
/// park their pool (8) plus what the hub asked for in a burst; the bound
/// stops a hostile agent from parking tens of thousands.
pub const MAX_PARKED_PER_SESSION: usize = 1024;

/// Requests in flight per caller, by user name.
type CallerCounts = Arc<Mutex<HashMap<Arc<str>, usize>>>;

/// One proxied request in flight; dropping it frees the slots.
pub struct StreamPermit {
    cluster: Arc<AtomicUsize>,
    callers: CallerCounts,
    caller: Arc<str>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.cluster.fetch_sub(1, Ordering::AcqRel);
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = callers.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                callers.remove(&self.caller);
            }
        }
    }
}

/// Why a request got no slot.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// The cluster has its maximum of requests in flight.
    #[error("the cluster has too many requests in flight")]
    Cluster,
    /// This caller has its maximum of requests in flight to the cluster.
    #[error("the caller has too many requests in flight to this cluster")]
    Caller,
}

/// Why no stream could be had for a request.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoStream {
    /// No agent session is connected.
    #[error("no agent is connected for this cluster")]
    NoAgent,
    /// Agents are connected but none offered a stream in time.
    #[error("the cluster's agents offered no request stream in time")]
    Timeout,
}

impl LiveCluster {
    fn new(name: String, id: ClusterId, feed: Arc<ChangeFeed>) -> Self {
        LiveCluster {
            name,
            id,
            feed,
            inner: Mutex::default(),
            parked: Notify::new(),
            sessions_tx: watch::Sender::new(0),
            changes: watch::Sender::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            callers: CallerCounts::default(),
            last_seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes one of the cluster's `max` request slots and one of `caller`'s
    /// `max_per_caller`, so no single caller can take them all.
    pub fn try_acquire(&self, max: u32, caller: &str, max_per_caller: u32) -> Result<StreamPermit, Busy> {
        let max = max as usize;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| Busy::Cluster)?;
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        let key: Arc<str> = match callers.get_key_value(caller) {
            Some((k, _)) => k.clone(),
            None => Arc::from(caller),
        };
        let count = callers.entry(key.clone()).or_insert(0);
        if *count >= max_per_caller as usize {
            drop(callers);
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy::Caller);
        }
        *count += 1;
        Ok(StreamPermit { cluster: self.in_flight.clone(), callers: self.callers.clone(), caller: key })
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connected session, unless the cluster has `max` already.
    #[allow(clippy::result_large_err)]
    pub fn try_add_session(&self, id: SessionId, info: SessionInfo, max: usize) -> Result<(), SessionInfo> {
        if self.lock().sessions.len() >= max {
            return Err(info);
        }
        self.add_session(id, info);
        Ok(())
    }

    /// Adds a connected session.
    pub fn add_session(&self, id: SessionId, info: SessionInfo) {
        let mut inner = self.lock();
        inner.sessions.insert(id, info);
        self.touch();
        self.sessions_tx.send_replace(inner.sessions.len());
        self.changed();
    }

    /// Tells watchers and the status recorder that something the phase
    /// depends on changed (a session, an agent's report, the approval).
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        self.feed.mark(&self.name);
    }

    /// Follows [`LiveCluster::changed`].
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Removes a session and drops its parked streams. (The agent was last
    /// heard from at its last message, not now.)
    pub fn remove_session(&self, id: SessionId) {
        let mut inner = self.lock();
        inner.sessions.remove(&id);
        inner.pool.retain(|(_, p)| p.session != id);
        inner.parked_by.remove(&id);
        self.sessions_tx.send_replace(inner.sessions.len());
        self.changed();
    }

    /// Ends every session (they remove themselves as they stop); returns
    /// how many there were.
    pub fn revoke_sessions(&self) -> usize {
        let inner = self.lock();
        for s in inner.sessions.values() {
            s.revoke.cancel();
        }
        inner.sessions.len()
    }

    /// Sends `message` on every session's control stream (dropped for a
    /// session whose control channel is full: the message is advice).
    pub fn signal_sessions(&self, message: &HubControl) {
        for s in self.lock().sessions.values() {
            let _ = s.control.try_send(Ok(message.clone()));
        }
    }

    /// Whether session `id` is connected.
    pub fn has_session(&self, id: SessionId) -> bool {
        self.lock().sessions.contains_key(&id)
    }

    /// Records that session `id` was heard from (any control message).
    pub fn heartbeat(&self, id: SessionId) {
        if let Some(s) = self.lock().sessions.get_mut(&id) {
            s.last_heartbeat_ms = unix_ms();
        }
        self.touch();
    }

    /// Records a status report from session `id`.
    pub fn report(&self, id: SessionId, report: AgentReport) {
        let mut changed = false;
        if let Some(s) = self.lock().sessions.get_mut(&id) {
            changed = s.report.as_ref().is_none_or(|old| !old.shows_same(&report));
            s.last_heartbeat_ms = unix_ms();
            s.report = Some(report);
        }
        self.touch();
        if changed {
            self.changed();
        }
    }

    fn touch(&self) {
        self.last_seen.store(unix_now(), Ordering::Relaxed);
    }

    /// What the connected agents report, summed up.
    pub fn summary(&self) -> LiveSummary {
        let inner = self.lock();
        let mut replicas: Vec<Replica> = inner
            .sessions
            .iter()
            .map(|(id, s)| Replica {
                session: *id,
                agent_id: s.agent_id.clone(),
                agent_version: s.agent_version.clone(),
                connected_at: s.connected_at,
                last_heartbeat_ms: s.last_heartbeat_ms,
                report: s.report.clone(),
            })
            .collect();
        drop(inner);
        replicas.sort_by(|a, b| (&a.agent_id, a.connected_at).cmp(&(&b.agent_id, b.connected_at)));
        let best = replicas
            .iter()
            .filter_map(|r| r.report.as_ref())
            .max_by_key(|r| (r.rank(), r.observed_at_ms))
            .cloned();
        let mut missing: Vec<String> = replicas
            .iter()
            .filter_map(|r| r.report.as_ref())
            .flat_map(|r| r.missing_permissions.iter().cloned())
            .collect();
        missing.sort();
        missing.dedup();
        LiveSummary {
            sessions: replicas.len(),
            best,
            missing_permissions: missing,
            last_seen: self.last_seen.load(Ordering::Relaxed),
            replicas,
        }
    }

    /// Parks a stream (new, or back from a finished request); refused
    /// (returned) when its session is unknown or already parks
    /// [`MAX_PARKED_PER_SESSION`].
    #[allow(clippy::result_large_err)]
    pub fn park(&self, mut parked: Parked) -> Result<(), Parked> {
        let mut inner = self.lock();
        let Some(info) = inner.sessions.get(&parked.session) else {
            return Err(parked);
        };
        parked.whole_layout = info.whole_layout;
        if inner.parked_by.get(&parked.session).copied().unwrap_or(0) >= MAX_PARKED_PER_SESSION {
            // Streams the agent gave up on still count until seen: drop them.
            let session = parked.session;
            inner.pool.retain(|(_, p)| p.session != session || !p.tx.is_closed());
            let live = inner.pool.iter().filter(|(_, p)| p.session == session).count();
            inner.parked_by.insert(session, live);
            if live >= MAX_PARKED_PER_SESSION {
                return Err(parked);
            }
        }
        *inner.parked_by.entry(parked.session).or_insert(0) += 1;
        inner.pool.push_back((Instant::now(), parked));
        drop(inner);
        self.parked.notify_one();
        Ok(())
    }

    /// Takes out the streams parked longer than `idle` while more than
    /// `keep_per_session` × sessions are parked, for the caller to close in
    /// order. Requests take the newest stream, so under steady traffic the
    /// oldest are the surplus.
    pub fn trim_idle(&self, keep_per_session: usize, idle: Duration) -> Vec<Parked> {
        let mut inner = self.lock();
        let keep = keep_per_session.saturating_mul(inner.sessions.len());
        let mut trimmed = Vec::new();
        while inner.pool.len() > keep && inner.pool.front().is_some_and(|(since, _)| since.elapsed() >= idle)
        {
            if let Some((_, p)) = inner.pool.pop_front() {
                inner.unparked(p.session);
                trimmed.push(p);
            }
        }
        trimmed
    }

    /// Number of connected sessions.
    pub fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Number of parked streams.
    pub fn parked_count(&self) -> usize {
        self.lock().pool.len()
    }

    /// Watches the number of connected sessions.
    pub fn watch_sessions(&self) -> watch::Receiver<usize> {
        self.sessions_tx.subscribe()
    }

    /// Takes a parked stream, waiting up to `wait` for one; asks the agents
    /// for more when the pool is dry.
    pub async fn take_stream(&self, wait: Duration) -> Result<Parked, NoStream> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.parked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                while let Some(p) = inner.take_next() {
                    // A stream of a session that just dropped is skipped: the
                    // request goes to another session.
                    if !p.tx.is_closed() {
                        return Ok(p);
                    }
                }
                if inner.sessions.is_empty() {
                    return Err(NoStream::NoAgent);
                }
                let ask = HubControl { msg: Some(hub_control::Msg::OpenStreams(OpenStreams { count: 1 })) };
                for s in inner.sessions.values() {
                    // A full control channel means a request is already pending.
                    let _ = s.control.try_send(Ok(ask.clone()));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(NoStream::Timeout);
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// All clusters' live state, keyed by name, and the agent connections of
/// each cluster id (so revoking a cluster can close them).
#[derive(Default)]
pub struct Registry {
    clusters: Mutex<HashMap<String, Arc<LiveCluster>>>,
    connections: Mutex<HashMap<ClusterId, CancellationToken>>,
    feed: Arc<ChangeFeed>,
}

impl Registry {
    /// Marks cluster `name` for the status recorder (its approval or
    /// registration changed).
    pub fn touch(&self, name: &str) {
        self.feed.mark(name);
    }

    /// The clusters marked since the recorder last looked.
    pub fn feed(&self) -> &ChangeFeed {
        &self.feed
    }

    /// The live state of a cluster, created on first use. A cluster
    /// registered again under the same name (a new id) starts afresh: the
    /// old one's sessions are revoked.
    pub fn cluster(&self, name: &str, id: ClusterId) -> Arc<LiveCluster> {
        let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = map.get(name) {
            if live.id == id {
                return live.clone();
            }
            live.revoke_sessions();
        }
        let live = Arc::new(LiveCluster::new(name.to_owned(), id, self.feed.clone()));
        map.insert(name.to_owned(), live.clone());
        live
    }

    /// Agent sessions per cluster, for clusters with at least one.
    pub fn held(&self) -> std::collections::BTreeMap<String, u32> {
        let map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(name, live)| (name.clone(), u32::try_from(live.session_count()).unwrap_or(u32::MAX)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The live state of a cluster if it was ever used since start.
    pub fn get(&self, name: &str) -> Option<Arc<LiveCluster>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// Every cluster's live state (for metrics).
    pub fn clusters(&self) -> Vec<Arc<LiveCluster>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// A token cancelled when cluster `id`'s agents are disconnected; each
    /// agent connection watches one.
    pub fn agent_connection(&self, id: ClusterId) -> CancellationToken {
        let mut map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id).or_default().child_token()
    }

    /// Ends every session of cluster `name` (id `id`) and closes its agents'
    /// connections; with `forget`, drops its live state too (deleted
    /// clusters). Returns the number of sessions ended.
    pub fn disconnect(&self, name: &str, id: ClusterId, forget: bool) -> usize {
        let ended = {
            let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
            let live = if forget { map.remove(name) } else { map.get(name).cloned() };
            live.filter(|l| l.id == id).map(|l| l.revoke_sessions()).unwrap_or(0)
        };
        if let Some(token) = self.connections.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
            token.cancel();
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(live: &LiveCluster) -> (SessionId, mpsc::Receiver<Result<HubControl, Status>>) {
        let (tx, rx) = mpsc::channel(4);
        let id = SessionId::new();
        live.add_session(
            id,
            SessionInfo {
                agent_id: "a".into(),
                agent_version: "v".into(),
                report: None,
                connected_at: unix_now(),
                last_heartbeat_ms: unix_ms(),
                control: tx,
                revoke: CancellationToken::new(),
                whole_layout: true,
            },
        );
        (id, rx)
    }

    /// A parked stream over channels, with the agent's side held by the test.
    fn stream(session: SessionId) -> (Parked, mpsc::Receiver<Result<HubFrame, Status>>) {
        let (tx, rx) = mpsc::channel(1);
        let body = http_body_util::Empty::<bytes::Bytes>::new();
        let agent = Streaming::new_empty(tonic_prost::ProstDecoder::<AgentFrame>::default(), body);
        (Parked { session, tx, rx: agent, whole_layout: false }, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_take_the_newest_stream_and_idle_surplus_is_trimmed() {
        let live = LiveCluster::new("c".into(), ClusterId::new(), Arc::default());
        let (id, _control) = session(&live);
        let mut agent_sides = Vec::new();
        let mut first_tx = None;
        for i in 0..4 {
            let (p, rx) = stream(id);
            if i == 0 {
                first_tx = Some(p.tx.clone());
            }
            assert!(live.park(p).is_ok());
            agent_sides.push(rx);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // The newest goes to a request; it comes back after its request.
        let taken = live.take_stream(Duration::from_secs(1)).await.expect("stream");
        assert!(!first_tx.as_ref().expect("first").same_channel(&taken.tx));
        assert!(live.park(taken).is_ok());
        assert_eq!(live.parked_count(), 4);

        // Nothing is trimmed before the idle time, nor below the pool size.
        assert!(live.trim_idle(2, PARKED_IDLE_TRIM).is_empty());
        tokio::time::advance(PARKED_IDLE_TRIM).await;
        let trimmed = live.trim_idle(2, PARKED_IDLE_TRIM);
        assert_eq!(trimmed.len(), 2);
        assert!(trimmed[0].tx.same_channel(first_tx.as_ref().expect("first")), "the oldest go first");
        assert_eq!(live.parked_count(), 2);
        assert!(live.trim_idle(2, PARKED_IDLE_TRIM).is_empty());
    }

    #[tokio::test]
    async fn requests_take_turns_over_the_sessions_and_skip_a_dropped_one() {
        let live = LiveCluster::new("c".into(), ClusterId::new(), Arc::default());
        let (a, _ca) = session(&live);
        let (b, _cb) = session(&live);
        let mut agent_sides = Vec::new();
        for id in [a, a, a, b, b, b] {
            let (p, rx) = stream(id);
            assert!(live.park(p).is_ok());
            agent_sides.push(rx);
        }
        // Sequential requests, each stream parked again after its request
        // (as the agent does): both sessions carry them.
        let mut served = HashMap::new();
        for _ in 0..10 {
            let taken = live.take_stream(Duration::from_secs(1)).await.expect("stream");
            *served.entry(taken.session).or_insert(0) += 1;
            assert!(live.park(taken).is_ok());
        }
        assert_eq!((served[&a], served[&b]), (5, 5), "round the sessions: {served:?}");
        // Session a drops: every request goes to b, none to a dead stream.
        live.remove_session(a);
        for _ in 0..4 {
            let taken = live.take_stream(Duration::from_secs(1)).await.expect("stream");
            assert_eq!(taken.session, b);
            assert!(live.park(taken).is_ok());
        }
        // Its streams closed but not yet removed are skipped too.
        let (c, _cc) = session(&live);
        let (p, rx) = stream(c);
        assert!(live.park(p).is_ok());
        drop(rx);
        for _ in 0..4 {
            let taken = live.take_stream(Duration::from_secs(1)).await.expect("stream");
            assert_eq!(taken.session, b, "c's only stream is closed");
            assert!(live.park(taken).is_ok());
        }
    }

    #[tokio::test]
    async fn no_session_means_no_agent() {
        let live = LiveCluster::new("c".into(), ClusterId::new(), Arc::default());
        assert_eq!(live.take_stream(Duration::from_secs(5)).await.err(), Some(NoStream::NoAgent));
    }

    #[tokio::test(start_paused = true)]
    async fn dry_pool_asks_agents_for_streams_then_times_out() {
        let live = LiveCluster::new("c".into(), ClusterId::new(), Arc::default());
        let (_id, mut control) = session(&live);
        let r = live.take_stream(Duration::from_secs(5)).await;
        assert_eq!(r.err(), Some(NoStream::Timeout));
        let ask = control.recv().await.expect("signal").expect("ok");
        assert!(matches!(ask.msg, Some(hub_control::Msg::OpenStreams(OpenStreams { count: 1 }))));
    }

    #[test]
    fn permits_are_bounded_per_cluster_and_per_caller_and_returned() {
        let live = LiveCluster::new("c".into(), ClusterId::new(), Arc::default());
        let a = live.try_acquire(3, "alice", 2).expect("first");
        let _b = live.try_acquire(3, "alice", 2).expect("second");
        assert_eq!(live.try_acquire(3, "alice", 2).err(), Some(Busy::Caller), "alice has her share");
        let _c = live.try_acquire(3, "bob", 2).expect("bob still gets one");
        assert_eq!(live.try_acquire(3, "carol", 2).err(), Some(Busy::Cluster));
        assert_eq!(live.in_flight(), 3, "a refused caller holds no cluster slot");
        drop(a);
        assert_eq!(live.in_flight(), 2);
        assert!(live.try_acquire(3, "alice", 2).is_ok());
    }

    #[tokio::test]
    async fn a_session_parks_a_bounded_number_of_streams() {
        let live = LiveCluster::new("c".into(), ClusterId::new(), Arc::default());
        let (id, _control) = session(&live);
        let mut agent_sides = Vec::new();
        for _ in 0..MAX_PARKED_PER_SESSION {
            let (p, rx) = stream(id);
            assert!(live.park(p).is_ok());
            agent_sides.push(rx);
        }
        let (extra, _rx) = stream(id);
        assert!(live.park(extra).is_err(), "one more than the bound is refused");
        let taken = live.take_stream(Duration::from_secs(1)).await.expect("a stream");
        assert!(live.park(taken).is_ok(), "a taken stream frees its place");
        // A bound on sessions per cluster.
        let (tx, _rx) = mpsc::channel(1);
        let info = || SessionInfo {
            agent_id: "b".into(),
            agent_version: "v".into(),
            report: None,
            connected_at: unix_now(),
            last_heartbeat_ms: unix_ms(),
            control: tx.clone(),
            revoke: CancellationToken::new(),
            whole_layout: true,
        };
        assert!(live.try_add_session(SessionId::new(), info(), 2).is_ok());
        assert!(live.try_add_session(SessionId::new(), info(), 2).is_err());
    }

    #[tokio::test]
    async fn disconnecting_revokes_sessions_and_connections() {
        let registry = Registry::default();
        let id = ClusterId::new();
        let live = registry.cluster("c", id);
        let (_s, _rx) = session(&live);
        let token = live.lock().sessions.values().next().expect("session").revoke.clone();
        let conn = registry.agent_connection(id);
        assert_eq!(registry.disconnect("c", id, true), 1);
        assert!(token.is_cancelled() && conn.is_cancelled());
        assert!(registry.get("c").is_none());
        // A fresh connection after that is not born cancelled.
        assert!(!registry.agent_connection(id).is_cancelled());
        // The same name with a new id is a new cluster.
        let old = registry.cluster("d", ClusterId::new());
        let (_s, _rx) = session(&old);
        let old_token = old.lock().sessions.values().next().expect("session").revoke.clone();
        let new = registry.cluster("d", ClusterId::new());
        assert!(old_token.is_cancelled());
        assert_eq!(new.session_count(), 0);
    }

    #[tokio::test]
    async fn sessions_are_watched() {
        let live = LiveCluster::new("c".into(), ClusterId::new(), Arc::default());
        let mut w = live.watch_sessions();
        let (id, _rx) = session(&live);
        assert_eq!(*w.borrow_and_update(), 1);
        live.remove_session(id);
        w.changed().await.expect("changed");
        assert_eq!(*w.borrow(), 0);
    }
}
