//! The replica registry: which hub replicas are up, where they are, and
//! which clusters' agents each one holds (several replicas on one etcd,
//! docs/ha.md).
//!
//! Each replica keeps one etcd lease of [`REPLICA_TTL`], renewed every
//! third of it, and writes under it `PREFIX/hubs/ID` (its [`ReplicaInfo`])
//! and `PREFIX/live/CLUSTER/ID` for every cluster with at least one agent
//! session on it (the session count). A replica that stops cleanly revokes
//! its lease, so its keys go at once; one that dies leaves them until the
//! lease expires, [`REPLICA_TTL`] at most. A replica that loses etcd for
//! longer than that takes a new lease when etcd is back and writes
//! everything again.
//!
//! Every replica follows both key ranges with one etcd watch into a
//! [`Replicas`] view, published on a `watch` channel: what the forwarding
//! path and `agent.yaml` read, never waiting for etcd. Memory: one entry per
//! replica and per (cluster, replica) with agents.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::client::{EtcdClient, EtcdError, prefix_end};
use super::keys::Keys;
use super::proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, WatchCreateRequest};
use super::proto::mvccpb::event;

/// How long a dead replica's registration outlives it: the longest time
/// routing may still point at it.
pub const REPLICA_TTL: Duration = Duration::from_secs(6);
/// Pause before retrying etcd after a failure (lease, write or watch).
pub const REPLICA_RETRY: Duration = Duration::from_millis(500);

/// What a replica says about itself under `PREFIX/hubs/ID`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// The replica's id (fresh at every start).
    pub id: String,
    /// The URL agents and kubectl use for it (`--advertise-url`).
    pub url: String,
    /// Where other replicas reach it.
    pub peer_url: String,
}

/// Agent sessions a replica holds for one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    sessions: u32,
}

/// Every live replica and which clusters' agents each holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Replicas by id.
    pub hubs: BTreeMap<String, ReplicaInfo>,
    /// Per cluster: the replicas holding its agents, with session counts.
    pub live: BTreeMap<String, BTreeMap<String, u32>>,
}

impl Replicas {
    /// The live replicas holding agents of `cluster`.
    pub fn holders(&self, cluster: &str) -> Vec<&ReplicaInfo> {
        self.live
            .get(cluster)
            .into_iter()
            .flat_map(|by| by.keys())
            .filter_map(|id| self.hubs.get(id))
            .collect()
    }

    /// Every live replica with a URL that reaches that replica itself, for
    /// agents keeping sessions on several (`ferry-agent
    /// --hub-connections`): its advertise URL, or its peer URL when other
    /// replicas advertise the same URL (one load balancer in front of all).
    /// Both are names its serving certificate carries, so the agent verifies
    /// it against the hub CA as for any hub URL.
    pub fn for_agents(&self) -> Vec<ferry::proto::v1::HubReplica> {
        self.hubs
            .values()
            .map(|h| {
                let shared = self.hubs.values().filter(|o| o.url == h.url).count() > 1;
                let url = if shared { &h.peer_url } else { &h.url };
                ferry::proto::v1::HubReplica { id: h.id.clone(), url: url.clone() }
            })
            .collect()
    }

    /// The URLs agents may dial, `first` first, without repeats (replicas
    /// behind one load balancer advertise one URL).
    pub fn agent_urls(&self, first: &str) -> Vec<String> {
        let mut urls = vec![first.to_owned()];
        for h in self.hubs.values() {
            if !urls.contains(&h.url) {
                urls.push(h.url.clone());
            }
        }
        urls
    }
}

/// This replica's registration and its view of all replicas. Dropping it
/// stops its tasks without revoking the lease (as a crash would);
/// [`ReplicaSet::close`] revokes it.
pub struct ReplicaSet {
    me: ReplicaInfo,
    client: EtcdClient,
    keys: Keys,
    registered: watch::Receiver<bool>,
    view: watch::Receiver<Arc<Replicas>>,
    held: watch::Sender<BTreeMap<String, u32>>,
    stop: CancellationToken,
    revoke: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ReplicaSet {
    /// Registers `me` under a lease of `ttl` and starts following every
    /// replica (both in the background: etcd may be away at first).
    pub fn start(client: EtcdClient, keys: Keys, me: ReplicaInfo, ttl: Duration) -> ReplicaSet {
        let (view_tx, view) = watch::channel(Arc::new(Replicas::default()));
        let (held, held_rx) = watch::channel(BTreeMap::new());
        let (stop, revoke, tasks) = (CancellationToken::new(), CancellationToken::new(), TaskTracker::new());
        let (registered_tx, registered) = watch::channel(false);
        let register = Register {
            client: client.clone(),
            keys: keys.clone(),
            me: me.clone(),
            ttl,
            registered: registered_tx,
        };
        tasks.spawn(register.run(held_rx, stop.clone(), revoke.clone()));
        tasks.spawn(follow(client.clone(), keys.clone(), view_tx, stop.clone()));
        tasks.close();
        ReplicaSet { me, client, keys, registered, view, held, stop, revoke, tasks }
    }

    /// This replica.
    pub fn me(&self) -> &ReplicaInfo {
        &self.me
    }

    /// Follows the view of all replicas.
    pub fn view(&self) -> watch::Receiver<Arc<Replicas>> {
        self.view.clone()
    }

    /// The view now.
    pub fn now(&self) -> Arc<Replicas> {
        self.view.borrow().clone()
    }

    /// What etcd holds now (one read); the followed view when etcd is away.
    pub async fn fetch(&self) -> Arc<Replicas> {
        match load(&self.client, &self.keys).await {
            Ok((replicas, _)) => Arc::new(replicas),
            Err(e) => {
                debug!(error = %e, "cannot read the replicas from etcd; using this replica's view");
                self.now()
            }
        }
    }

    /// Waits up to `timeout` until this replica's registration is written;
    /// `false` if it was not in time.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let mut registered = self.registered.clone();
        matches!(tokio::time::timeout(timeout, registered.wait_for(|r| *r)).await, Ok(Ok(_)))
    }

    /// Publishes the clusters whose agents this replica holds (session
    /// counts; clusters without sessions are left out).
    pub fn set_held(&self, held: BTreeMap<String, u32>) {
        self.held.send_if_modified(|h| {
            let changed = *h != held;
            *h = held;
            changed
        });
    }

    /// Revokes the lease (the registration goes at once) and stops.
    pub async fn close(&self) {
        self.revoke.cancel();
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// The registering half: lease, keep-alive, and this replica's keys.
struct Register {
    client: EtcdClient,
    keys: Keys,
    me: ReplicaInfo,
    ttl: Duration,
    registered: watch::Sender<bool>,
}

impl Register {
    async fn run(
        self,
        mut held: watch::Receiver<BTreeMap<String, u32>>,
        stop: CancellationToken,
        revoke: CancellationToken,
    ) {
        let mut healthy = true;
        loop {
            let (lease, failure) = tokio::select! {
                // The registration first: on `stop` it hands back its lease.
                biased;
                r = self.registered(&mut held, &stop) => r,
                () = stop.cancelled() => return,
            };
            if stop.is_cancelled() {
                if let Some(lease) = lease
                    && revoke.is_cancelled()
                    && let Err(e) = self.client.lease_revoke(lease).await
                {
                    warn!(error = %e, "cannot revoke this replica's lease; it expires by itself");
                }
                return;
            }
            if healthy {
                warn!(error = %failure, "lost this replica's registration in etcd; registering again");
                healthy = false;
            } else {
                debug!(error = %failure, "etcd still unavailable for the replica registration");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REPLICA_RETRY) => {}
            }
        }
    }

    /// One lease: grant it, write everything, then keep it alive and follow
    /// `held` until something fails (returned, with the lease if granted)
    /// or `stop` (lease returned, error irrelevant).
    async fn registered(
        &self,
        held: &mut watch::Receiver<BTreeMap<String, u32>>,
        stop: &CancellationToken,
    ) -> (Option<i64>, EtcdError) {
        let lease = match self.client.lease_grant(self.ttl).await {
            Ok(l) => l,
            Err(e) => return (None, e),
        };
        let result = async {
            let value = serde_json::to_vec(&self.me).unwrap_or_default();
            self.put(self.keys.hub(&self.me.id), value, lease).await?;
            self.registered.send_replace(true);
            let mut keep_alive = self.client.lease_keep_alive(lease).await?;
            info!(replica = %self.me.id, peer_url = %self.me.peer_url, "replica registered in etcd");
            let mut published: BTreeMap<String, u32> = BTreeMap::new();
            let mut renew = tokio::time::interval(self.ttl / 3);
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            held.mark_changed();
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    _ = renew.tick() => {
                        if keep_alive.renew().await?.is_none() {
                            return Err(EtcdError::StreamEnded("lease expired"));
                        }
                    }
                    r = held.changed() => {
                        if r.is_err() {
                            return Ok(());
                        }
                        let now = held.borrow_and_update().clone();
                        self.sync(&published, &now, lease).await?;
                        published = now;
                    }
                }
            }
        }
        .await;
        match result {
            Ok(()) => (Some(lease), EtcdError::StreamEnded("stopped")),
            Err(e) => (Some(lease), e),
        }
    }

    async fn put(&self, key: String, value: Vec<u8>, lease: i64) -> Result<(), EtcdError> {
        self.client.put(PutRequest { key: key.into_bytes(), value, lease, ..Default::default() }).await?;
        Ok(())
    }

    /// Writes the clusters whose counts changed, deletes the ones gone.
    async fn sync(
        &self,
        before: &BTreeMap<String, u32>,
        now: &BTreeMap<String, u32>,
        lease: i64,
    ) -> Result<(), EtcdError> {
        for (cluster, &sessions) in now {
            if before.get(cluster) != Some(&sessions) {
                let value = serde_json::to_vec(&Held { sessions }).unwrap_or_default();
                self.put(self.keys.live(cluster, &self.me.id), value, lease).await?;
            }
        }
        for cluster in before.keys().filter(|c| !now.contains_key(*c)) {
            let key = self.keys.live(cluster, &self.me.id).into_bytes();
            self.client.delete(DeleteRangeRequest { key, ..Default::default() }).await?;
        }
        Ok(())
    }
}

/// The key range holding `hubs/` and `live/` (`hubs/` sorts before `live/`,
/// and nothing else lies between them).
fn range_of(keys: &Keys) -> (Vec<u8>, Vec<u8>) {
    (keys.hubs().into_bytes(), prefix_end(keys.lives().as_bytes()))
}

/// Every replica and what it holds, read at one revision (returned).
async fn load(client: &EtcdClient, keys: &Keys) -> Result<(Replicas, i64), EtcdError> {
    let (key, range_end) = range_of(keys);
    let answer = client.range(RangeRequest { key, range_end, ..Default::default() }).await?;
    let revision = answer.header.as_ref().map_or(0, |h| h.revision);
    let mut now = Replicas::default();
    for kv in &answer.kvs {
        apply_put(keys, &mut now, &kv.key, &kv.value);
    }
    Ok((now, revision))
}

/// Keeps `view` equal to what etcd holds under `hubs/` and `live/`: a range,
/// then a watch from the next revision; both again after any failure.
async fn follow(client: EtcdClient, keys: Keys, view: watch::Sender<Arc<Replicas>>, stop: CancellationToken) {
    let (start, end) = range_of(&keys);
    loop {
        let failure = async {
            let (mut now, revision) = load(&client, &keys).await?;
            view.send_replace(Arc::new(now.clone()));
            let create = WatchCreateRequest {
                key: start.clone(),
                range_end: end.clone(),
                start_revision: revision + 1,
                ..Default::default()
            };
            let mut watcher = client.watch(create).await?;
            loop {
                let r = match watcher.next().await {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                };
                for ev in &r.events {
                    let Some(kv) = &ev.kv else { continue };
                    if ev.r#type == event::EventType::Delete as i32 {
                        apply_delete(&keys, &mut now, &kv.key);
                    } else {
                        apply_put(&keys, &mut now, &kv.key, &kv.value);
                    }
                }
                if !r.events.is_empty() {
                    view.send_replace(Arc::new(now.clone()));
                }
            }
        };
        let failure: Result<(), EtcdError> = tokio::select! {
            () = stop.cancelled() => return,
            r = failure => r,
        };
        if let Err(e) = failure {
            debug!(error = %e, "lost the replica watch; following again");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REPLICA_RETRY) => {}
        }
    }
}

fn apply_put(keys: &Keys, view: &mut Replicas, key: &[u8], value: &[u8]) {
    let key = String::from_utf8_lossy(key);
    if let Some(id) = keys.parse_hub(&key) {
        match serde_json::from_slice::<ReplicaInfo>(value) {
            Ok(info) => {
                view.hubs.insert(id.to_owned(), info);
            }
            Err(e) => warn!(%key, error = %e, "skipping an unreadable replica record"),
        }
    } else if let Some((cluster, id)) = keys.parse_live(&key)
        && let Ok(held) = serde_json::from_slice::<Held>(value)
    {
        view.live.entry(cluster.to_owned()).or_default().insert(id.to_owned(), held.sessions);
    }
}

fn apply_delete(keys: &Keys, view: &mut Replicas, key: &[u8]) {
    let key = String::from_utf8_lossy(key);
    if let Some(id) = keys.parse_hub(&key) {
        view.hubs.remove(id);
    } else if let Some((cluster, id)) = keys.parse_live(&key)
        && let Some(by) = view.live.get_mut(cluster)
    {
        by.remove(id);
        if by.is_empty() {
            view.live.remove(cluster);
        }
    }
}

/// This hub's registration, with a fresh replica id; other replicas reach
/// it at `peer_url`.
/// Waits (up to [`REPLICA_TTL`]) until it is written, so a replica that
/// says it is ready is known to the others.
pub async fn start(client: EtcdClient, keys: Keys, advertise_url: &str, peer_url: &str) -> ReplicaSet {
    let id = uuid::Uuid::new_v4().to_string();
    let me = ReplicaInfo { id, url: advertise_url.to_owned(), peer_url: peer_url.to_owned() };
    let set = ReplicaSet::start(client, keys, me, REPLICA_TTL);
    if !set.wait_registered(REPLICA_TTL).await {
        warn!("this replica is not registered in etcd yet; it keeps trying in the background");
    }
    set
}

/// Publishes which clusters' agents this replica holds whenever a session
/// comes or goes, until the hub shuts down.
pub async fn publish_sessions(state: Arc<crate::state::HubState>) {
    let Some(set) = state.replicas.clone() else { return };
    let mut changes = state.registry.feed().subscribe();
    loop {
        set.set_held(state.registry.held());
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            r = changes.changed() => if r.is_err() { break },
        }
    }
    set.close().await;
}

/// Tells every connected agent session the live replicas whenever they
/// change (a replica joined, or one's lease went), so agents keeping
/// sessions on several replicas find a new one without waiting for their
/// next session start; until the hub shuts down.
pub async fn announce_replicas(state: Arc<crate::state::HubState>) {
    use ferry::proto::v1::{HubControl, HubReplicas, hub_control};
    let Some(set) = state.replicas.clone() else { return };
    let mut view = set.view();
    let mut told = view.borrow_and_update().for_agents();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            r = view.changed() => if r.is_err() { return },
        }
        let now = view.borrow_and_update().for_agents();
        if now == told {
            continue;
        }
        let message =
            HubControl { msg: Some(hub_control::Msg::Replicas(HubReplicas { replicas: now.clone() })) };
        for live in state.registry.clusters() {
            live.signal_sessions(&message);
        }
        told = now;
    }
}

#[cfg(test)]
mod tests {
    use ferry_integration::etcd::Etcd;

    use super::*;
    use crate::etcd::EtcdConfig;

    fn replica(etcd: &Etcd, id: &str, ttl: Duration) -> ReplicaSet {
        let config = EtcdConfig::from_url(&etcd.store_url(), "/ferry", None).expect("config");
        let client = EtcdClient::new(&config).expect("client");
        let me = ReplicaInfo {
            id: id.into(),
            url: format!("https://{id}:8443"),
            peer_url: format!("https://{id}:8443"),
        };
        ReplicaSet::start(client, Keys::new("/ferry"), me, ttl)
    }

    /// Waits (on the watch, no polling) until `view` satisfies `ok`.
    async fn until(view: &mut watch::Receiver<Arc<Replicas>>, what: &str, ok: impl Fn(&Replicas) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(30), view.wait_for(|v| ok(v))).await.is_ok();
        let last = view.borrow().clone();
        assert!(waited, "{what}: last view {last:?}");
    }

    #[test]
    fn agents_are_told_each_replicas_own_url_even_behind_one_load_balancer() {
        let info = |id: &str, url: &str, peer: &str| ReplicaInfo {
            id: id.into(),
            url: url.into(),
            peer_url: peer.into(),
        };
        let mut view = Replicas::default();
        for r in [
            info("a", "https://lb:8443", "https://a.internal:8443"),
            info("b", "https://lb:8443", "https://b.internal:8443"),
            info("c", "https://c:8443", "https://c.internal:8443"),
        ] {
            view.hubs.insert(r.id.clone(), r);
        }
        let told: Vec<String> = view.for_agents().into_iter().map(|r| r.url).collect();
        assert_eq!(told, ["https://a.internal:8443", "https://b.internal:8443", "https://c:8443"]);
    }

    #[tokio::test]
    async fn replicas_see_each_other_and_the_clusters_each_holds() {
        let etcd = Etcd::start();
        let a = replica(&etcd, "a", REPLICA_TTL);
        let b = replica(&etcd, "b", REPLICA_TTL);
        let mut on_b = b.view();
        until(&mut on_b, "B sees both replicas", |v| v.hubs.len() == 2).await;

        a.set_held(BTreeMap::from([("edge".to_owned(), 2), ("core".to_owned(), 1)]));
        until(&mut on_b, "B sees A's clusters", |v| {
            v.holders("edge").iter().map(|r| r.id.as_str()).eq(["a"]) && v.live["edge"]["a"] == 2
        })
        .await;
        assert_eq!(b.now().agent_urls("https://b:8443"), ["https://b:8443", "https://a:8443"]);
        let told: Vec<(String, String)> = b.now().for_agents().into_iter().map(|r| (r.id, r.url)).collect();
        assert_eq!(
            told,
            [("a".into(), "https://a:8443".into()), ("b".into(), "https://b:8443".into())],
            "each replica with its own URL"
        );

        // The edge agent moves to B.
        a.set_held(BTreeMap::from([("core".to_owned(), 1)]));
        b.set_held(BTreeMap::from([("edge".to_owned(), 1)]));
        let mut on_a = a.view();
        until(&mut on_a, "A sees edge on B only", |v| {
            v.holders("edge").iter().map(|r| r.id.as_str()).eq(["b"])
                && v.holders("core").iter().map(|r| r.id.as_str()).eq(["a"])
        })
        .await;

        // A stops cleanly: its registration goes at once.
        a.close().await;
        until(&mut on_b, "A's keys are gone", |v| {
            !v.hubs.contains_key("a") && v.holders("core").is_empty() && v.holders("edge").len() == 1
        })
        .await;
        b.close().await;
    }

    #[tokio::test]
    async fn a_dead_replica_vanishes_when_its_lease_expires() {
        let etcd = Etcd::start();
        let ttl = Duration::from_secs(2);
        let a = replica(&etcd, "a", ttl);
        let b = replica(&etcd, "b", ttl);
        a.set_held(BTreeMap::from([("edge".to_owned(), 1)]));
        let mut on_b = b.view();
        until(&mut on_b, "B sees A holding edge", |v| v.holders("edge").len() == 1).await;
        // A crashes: its tasks stop, nothing is revoked.
        let crashed = std::time::Instant::now();
        drop(a);
        until(&mut on_b, "A's lease expired", |v| v.hubs.len() == 1 && v.holders("edge").is_empty()).await;
        let gone = crashed.elapsed();
        assert!(gone <= ttl + Duration::from_secs(3), "A vanished after {gone:?}");
        eprintln!(
            "a crashed replica vanished from the registry after {:.2} s (lease TTL {ttl:?})",
            gone.as_secs_f64()
        );
        b.close().await;
    }
}
