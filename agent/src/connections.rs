//! Which hub replica each of the agent's sessions dials
//! (`--hub-connections N`, docs/ha.md).
//!
//! The agent keeps N session slots; each holds at most one session, and no
//! two slots hold sessions on the same replica. A slot that needs a replica
//! picks, in order: the `--hub` URLs (from the one in use), then (with
//! more than one slot) the replicas the hub named in its last welcome (each
//! with a URL reaching that replica itself), skipping what other slots dial or hold and what this
//! slot saw fail since its last session. The hub's welcome names the
//! replica that took the session: a session that lands on a replica another
//! slot holds already (two URLs of one replica, a load balancer) ends at
//! once and the slot moves on. With fewer replicas than slots, the spare
//! slots wait for a change (a slot freed, new replicas named) or retry
//! with backoff.
//!
//! Memory: one entry per slot and per replica the hub named.

use std::sync::Mutex;

use ferry::proto::v1::{HubReplica, Welcome};
use http::Uri;
use tokio::sync::Notify;
use tracing::debug;

use crate::config::{HubUrls, parse_hub_url};

/// What one slot dials or holds.
#[derive(Clone, Debug)]
struct Held {
    url: Uri,
    /// The replica that welcomed the session (`None` while dialling, or
    /// from a hub without replicas).
    replica: Option<String>,
}

#[derive(Debug)]
struct Inner {
    slots: Vec<Option<Held>>,
    /// Replicas the hub named in its last welcome: id and URL.
    named: Vec<(String, Uri)>,
}

/// The slots' shared view of hub replicas.
#[derive(Debug)]
pub(crate) struct Targets {
    hubs: HubUrls,
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Targets {
    /// `slots` slots (at least one) over the configured `hubs`.
    pub(crate) fn new(hubs: HubUrls, slots: usize) -> Self {
        let inner = Inner { slots: vec![None; slots.max(1)], named: Vec::new() };
        Targets { hubs, inner: Mutex::new(inner), changed: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The URLs slot `slot` may dial now, best first: not dialled or held
    /// by another slot, not in `failed`, no replica twice.
    fn candidates(&self, inner: &Inner, slot: usize, failed: &[Uri]) -> Vec<Uri> {
        let others =
            inner.slots.iter().enumerate().filter(|(i, _)| *i != slot).filter_map(|(_, h)| h.as_ref());
        let (taken_urls, taken_ids): (Vec<&Uri>, Vec<Option<&String>>) =
            others.map(|h| (&h.url, h.replica.as_ref())).unzip();
        let configured = self.hubs.from_current();
        // One slot dials the `--hub` URLs only, as an agent always did.
        let named = inner
            .named
            .iter()
            .filter(|_| inner.slots.len() > 1)
            .filter(|(id, _)| !taken_ids.contains(&Some(id)))
            .map(|(_, u)| u.clone());
        let mut out: Vec<Uri> = Vec::new();
        for url in configured.into_iter().chain(named) {
            if !taken_urls.contains(&&url) && !failed.contains(&url) && !out.contains(&url) {
                out.push(url);
            }
        }
        out
    }

    /// The URL slot `slot` should dial now (marked as dialled by it), or
    /// `None` when every URL is held by another slot or in `failed`.
    pub(crate) fn pick(&self, slot: usize, failed: &[Uri]) -> Option<Uri> {
        let mut inner = self.lock();
        let url = self.candidates(&inner, slot, failed).into_iter().next()?;
        inner.slots[slot] = Some(Held { url: url.clone(), replica: None });
        Some(url)
    }

    /// Whether slot `slot` has anything left to dial besides `failed`.
    pub(crate) fn has_candidate(&self, slot: usize, failed: &[Uri]) -> bool {
        let inner = self.lock();
        !self.candidates(&inner, slot, failed).is_empty()
    }

    /// Takes the hub's welcome of slot `slot`'s session: keeps the replicas
    /// it names, and claims its replica for the slot. `false` when another
    /// slot holds a session on that replica already (the session should
    /// end).
    pub(crate) fn welcomed(&self, slot: usize, welcome: &Welcome) -> bool {
        self.named(&welcome.replicas);
        let mut inner = self.lock();
        let replica = (!welcome.replica_id.is_empty()).then(|| welcome.replica_id.clone());
        let duplicate = replica.as_ref().is_some_and(|id| {
            inner
                .slots
                .iter()
                .enumerate()
                .any(|(i, h)| i != slot && h.as_ref().is_some_and(|h| h.replica.as_ref() == Some(id)))
        });
        if !duplicate && let Some(held) = inner.slots[slot].as_mut() {
            held.replica = replica;
        }
        !duplicate
    }

    /// Keeps the live replicas the hub named (in a welcome, or when they
    /// changed); waiting slots look again.
    pub(crate) fn named(&self, replicas: &[HubReplica]) {
        let mut inner = self.lock();
        let named: Vec<(String, Uri)> = replicas
            .iter()
            .filter_map(|r| match parse_hub_url(&r.url) {
                Ok(url) if !r.id.is_empty() => Some((r.id.clone(), url)),
                _ => {
                    debug!(url = %r.url, "ignoring an unusable replica URL from the hub");
                    None
                }
            })
            .collect();
        let news = named != inner.named;
        if news {
            inner.named = named;
        }
        drop(inner);
        if news {
            self.changed.notify_waiters();
        }
    }

    /// Slot `slot`'s session ended: its replica is free for the others.
    pub(crate) fn release(&self, slot: usize) {
        self.lock().slots[slot] = None;
        self.changed.notify_waiters();
    }

    /// Resolves at the next release or change of the named replicas.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_hub_urls;

    fn welcome(replica: &str, named: &[(&str, &str)]) -> Welcome {
        Welcome {
            replica_id: replica.into(),
            replicas: named
                .iter()
                .map(|(id, url)| HubReplica { id: (*id).into(), url: (*url).into() })
                .collect(),
            ..Default::default()
        }
    }

    fn uri(s: &'static str) -> Uri {
        Uri::from_static(s)
    }

    #[test]
    fn one_slot_dials_the_urls_in_turn() {
        let t = Targets::new(parse_hub_urls("https://a:1,https://b:1").expect("urls"), 1);
        assert_eq!(t.pick(0, &[]), Some(uri("https://a:1")));
        assert_eq!(t.pick(0, &[uri("https://a:1")]), Some(uri("https://b:1")));
        assert_eq!(t.pick(0, &[uri("https://a:1"), uri("https://b:1")]), None);
        // One slot sticks to the --hub URLs, whatever the hub names.
        assert!(t.welcomed(0, &welcome("a", &[("a", "https://a:1"), ("c", "https://c:1")])));
        t.release(0);
        assert_eq!(t.pick(0, &[uri("https://a:1"), uri("https://b:1")]), None);
    }

    #[test]
    fn slots_spread_over_the_listed_urls() {
        let t = Targets::new(parse_hub_urls("https://a:1,https://b:1,https://c:1").expect("urls"), 2);
        assert_eq!(t.pick(0, &[]), Some(uri("https://a:1")));
        assert_eq!(t.pick(1, &[]), Some(uri("https://b:1")), "not the URL slot 0 dials");
        // a fails: slot 0 moves to c, the one nobody holds.
        t.release(0);
        assert_eq!(t.pick(0, &[uri("https://a:1")]), Some(uri("https://c:1")));
    }

    #[test]
    fn behind_one_url_the_replicas_the_hub_names_are_dialled() {
        let t = Targets::new(parse_hub_urls("https://lb:1").expect("url"), 2);
        assert_eq!(t.pick(0, &[]), Some(uri("https://lb:1")));
        assert_eq!(t.pick(1, &[]), None, "nothing else known yet");
        let named = [("a", "https://a:1"), ("b", "https://b:1"), ("c", "https://c:1")];
        assert!(t.welcomed(0, &welcome("a", &named)));
        // a is held through the load balancer: the next is b.
        assert_eq!(t.pick(1, &[]), Some(uri("https://b:1")));
        assert!(t.welcomed(1, &welcome("b", &named)));
        // b dies: c, not a (held) nor b (failed).
        t.release(1);
        assert_eq!(t.pick(1, &[uri("https://b:1")]), Some(uri("https://c:1")));
        // Only a left alive: slot 1 has nothing to dial but what failed.
        assert!(!t.has_candidate(1, &[uri("https://b:1"), uri("https://c:1")]));
        // A replica joins: the hub names it, and slot 1 has it to dial.
        let joined = [("a", "https://a:1"), ("d", "https://d:1")];
        t.named(&welcome("", &joined).replicas);
        assert_eq!(t.pick(1, &[uri("https://b:1"), uri("https://c:1")]), Some(uri("https://d:1")));
    }

    #[test]
    fn a_second_session_on_a_held_replica_is_refused() {
        let t = Targets::new(parse_hub_urls("https://lb:1,https://a:1").expect("urls"), 2);
        assert_eq!(t.pick(0, &[]), Some(uri("https://lb:1")));
        assert!(t.welcomed(0, &welcome("a", &[])));
        assert_eq!(t.pick(1, &[]), Some(uri("https://a:1")));
        assert!(!t.welcomed(1, &welcome("a", &[])), "replica a holds slot 0's session");
        t.release(1);
        // Hubs without replicas name none: nothing is refused.
        let single = Targets::new(parse_hub_urls("https://h:1").expect("url"), 1);
        assert_eq!(single.pick(0, &[]), Some(uri("https://h:1")));
        assert!(single.welcomed(0, &welcome("", &[])));
    }
}
