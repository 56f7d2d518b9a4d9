//! The object store: every object as JSON, one global `resourceVersion`
//! bumped on each write, and a bounded event history feeding watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::broadcast;

use super::resources::ResourceKind;
use super::status::ApiError;

/// Events kept for watches that resume from a `resourceVersion`; older ones
/// are answered "too old resource version" (410).
pub(crate) const WATCH_HISTORY_CAPACITY: usize = 10_000;
/// Events a watcher may fall behind before it is closed.
pub(crate) const WATCH_LAG_CAPACITY: usize = 1_024;

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ObjectKey {
    pub kind: ResourceKind,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: ResourceKind, namespace: &str, name: &str) -> Self {
        Self { kind, namespace: namespace.to_string(), name: name.to_string() }
    }
}

/// Watch event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One committed change.
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: ObjectKey,
    pub event_type: EventType,
    /// The object after the change (for deletes: as deleted, with the
    /// delete's resourceVersion).
    pub object: Value,
    /// The object before the change, for updates and deletes.
    pub old: Option<Value>,
}

/// How a watch starts: current objects or a backlog, then live events.
pub(crate) struct WatchStart {
    /// Current objects (when the watch starts "now" with initial state).
    pub snapshot: Vec<Value>,
    /// Missed events after the requested resourceVersion.
    pub backlog: Vec<Arc<Event>>,
    /// Live events.
    pub rx: broadcast::Receiver<Arc<Event>>,
    /// The store's resourceVersion at the start.
    pub rv: u64,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<Arc<Event>>,
    /// Events at or below this resourceVersion are no longer in `history`.
    compacted: u64,
}

/// The in-memory object store.
#[derive(Debug)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".to_string(), Value::String(rv.to_string()));
    }
}

impl Inner {
    fn commit(
        &mut self,
        tx: &broadcast::Sender<Arc<Event>>,
        key: ObjectKey,
        event_type: EventType,
        mut object: Value,
        old: Option<Value>,
    ) -> Value {
        self.rv += 1;
        set_rv(&mut object, self.rv);
        if event_type == EventType::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        let event = Arc::new(Event { rv: self.rv, key, event_type, object: object.clone(), old });
        if self.history.len() >= WATCH_HISTORY_CAPACITY
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = dropped.rv;
        }
        self.history.push_back(Arc::clone(&event));
        // No receivers is fine: nobody is watching.
        let _ = tx.send(event);
        object
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&ObjectKey::new(ResourceKind::Namespace, "", ns))
    }
}

impl Store {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(WATCH_LAG_CAPACITY);
        Self { inner: Mutex::new(Inner::default()), events }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The latest resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.lock().objects.get(key).cloned()
    }

    /// Objects of a kind (in one namespace, or all), ordered by namespace
    /// and name, with the resourceVersion they were read at.
    pub fn list(&self, kind: ResourceKind, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Stores a new object (404 if its namespace is missing, 409 if it
    /// exists). With `dry_run` nothing is stored.
    pub fn create(&self, key: ObjectKey, object: Value, dry_run: bool) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        if key.kind.namespaced() && !inner.namespace_exists(&key.namespace) {
            return Err(ApiError::not_found("namespaces", &key.namespace));
        }
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&key.kind.qualified_plural(), &key.name));
        }
        if dry_run {
            return Ok(object);
        }
        Ok(inner.commit(&self.events, key, EventType::Added, object, None))
    }

    /// Replaces an object with `f(current)`, atomically (404 if missing). An
    /// unchanged object is not written, as etcd-backed storage does not.
    pub fn update(
        &self,
        key: &ObjectKey,
        dry_run: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(&key.kind.qualified_plural(), &key.name))?;
        let mut next = f(current)?;
        let rv = current.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
        if let Some(meta) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".to_string(), rv);
        }
        if next == *current || dry_run {
            return Ok(next);
        }
        let old = current.clone();
        Ok(inner.commit(&self.events, key.clone(), EventType::Modified, next, Some(old)))
    }

    /// Deletes an object after `f(current)` checks preconditions and returns
    /// its final form (404 if missing). Deleting a namespace deletes its
    /// contents first.
    pub fn delete(
        &self,
        key: &ObjectKey,
        dry_run: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let current = inner
            .objects
            .get(key)
            .ok_or_else(|| ApiError::not_found(&key.kind.qualified_plural(), &key.name))?;
        let last = f(current)?;
        if dry_run {
            return Ok(last);
        }
        let old = current.clone();
        if key.kind == ResourceKind::Namespace {
            let contents: Vec<(ObjectKey, Value)> = inner
                .objects
                .iter()
                .filter(|(k, _)| k.kind.namespaced() && k.namespace == key.name)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in contents {
                inner.commit(&self.events, k, EventType::Deleted, v.clone(), Some(v));
            }
        }
        Ok(inner.commit(&self.events, key.clone(), EventType::Deleted, last, Some(old)))
    }

    /// Starts a watch: from now with the current objects (`from` is `None`),
    /// or after resourceVersion `from` (410 if that is no longer known).
    pub fn watch(&self, from: Option<u64>) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        let rx = self.events.subscribe();
        match from {
            None => Ok(WatchStart {
                snapshot: inner.objects.values().cloned().collect(),
                backlog: Vec::new(),
                rx,
                rv: inner.rv,
            }),
            Some(rv) if rv < inner.compacted => {
                Err(ApiError::expired(format!("too old resource version: {rv} ({})", inner.compacted + 1)))
            }
            Some(rv) => Ok(WatchStart {
                snapshot: Vec::new(),
                backlog: inner.history.iter().filter(|e| e.rv > rv).cloned().collect(),
                rx,
                rv: inner.rv,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str) -> (ObjectKey, Value) {
        (ObjectKey::new(ResourceKind::Namespace, "", name), json!({"metadata": {"name": name}}))
    }

    fn cm(namespace: &str, name: &str) -> (ObjectKey, Value) {
        (
            ObjectKey::new(ResourceKind::ConfigMap, namespace, name),
            json!({"metadata": {"name": name, "namespace": namespace}}),
        )
    }

    #[test]
    fn writes_bump_the_resource_version_and_feed_watches() {
        let store = Store::new();
        let (k, v) = ns("default");
        store.create(k, v, false).expect("ns");
        let (k, v) = cm("missing", "a");
        assert_eq!(store.create(k, v, false).expect_err("no ns").code, http::StatusCode::NOT_FOUND);
        let mut w = store.watch(Some(1)).expect("watch");
        let (k, v) = cm("default", "a");
        let created = store.create(k.clone(), v.clone(), false).expect("create");
        assert_eq!(created["metadata"]["resourceVersion"], "2");
        assert_eq!(store.create(k.clone(), v, false).expect_err("dup").reason, "AlreadyExists");
        let same = store.update(&k, false, |c| Ok(c.clone())).expect("noop");
        assert_eq!(same["metadata"]["resourceVersion"], "2");
        let mut changed = created.clone();
        changed["data"] = json!({"x": "y"});
        let updated = store.update(&k, false, |_| Ok(changed)).expect("update");
        assert_eq!(updated["metadata"]["resourceVersion"], "3");
        let e = w.rx.try_recv().expect("added");
        assert_eq!((e.event_type, e.rv), (EventType::Added, 2));
        assert_eq!(w.rx.try_recv().expect("modified").event_type, EventType::Modified);
        let replay = store.watch(Some(1)).expect("replay");
        assert_eq!(replay.backlog.len(), 2);
    }

    #[test]
    fn resuming_before_the_kept_history_is_gone() {
        let store = Store::new();
        let (k, v) = ns("default");
        store.create(k, v, false).expect("ns");
        let (k, v) = cm("default", "a");
        store.create(k.clone(), v, false).expect("cm");
        for i in 0..WATCH_HISTORY_CAPACITY {
            store
                .update(&k, false, |c| {
                    let mut next = c.clone();
                    next["data"] = json!({ "i": i.to_string() });
                    Ok(next)
                })
                .expect("update");
        }
        let err = store.watch(Some(1)).err().expect("too old");
        assert_eq!((err.code, err.reason), (http::StatusCode::GONE, "Expired"));
        assert!(err.message.starts_with("too old resource version: 1 ("), "{}", err.message);
        let recent = store.watch(Some(store.current_rv() - 1)).expect("recent");
        assert_eq!(recent.backlog.len(), 1);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_contents() {
        let store = Store::new();
        let (nk, nv) = ns("team");
        store.create(nk.clone(), nv, false).expect("ns");
        let (k, v) = cm("team", "a");
        store.create(k.clone(), v, false).expect("cm");
        store.delete(&nk, false, |c| Ok(c.clone())).expect("delete");
        assert!(store.get(&k).is_none());
        assert_eq!(store.list(ResourceKind::ConfigMap, None).0.len(), 0);
        assert_eq!(store.current_rv(), 4);
    }
}
