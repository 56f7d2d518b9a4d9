//! Watches: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`,
//! `BOOKMARK`, `ERROR`), streamed and flushed one by one as changes happen.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;

use super::body::{self, ResponseBody};
use super::handlers::{Target, matches, selectors};
use super::media::{OBJECT_REPRESENTATIONS, Representation, negotiate};
use super::resources::ResourceKind;
use super::router::Ctx;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, Cause};
use super::store::{Event, EventType};
use super::table::{IncludeObject, content_type, table};

/// Which events one watch wants, and how it encodes them.
struct Filter {
    kind: ResourceKind,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    repr: Representation,
    include: IncludeObject,
}

impl Filter {
    fn in_scope(&self, obj: &Value) -> bool {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        self.namespace.as_deref().is_none_or(|want| want == ns)
    }

    fn wants(&self, obj: &Value) -> bool {
        self.in_scope(obj) && matches(obj, &self.labels, &self.fields)
    }

    /// The event this watcher sees for a store event: a change that moves
    /// an object into or out of the selection is an ADDED or DELETED.
    fn translate(&self, e: &Event) -> Option<(&'static str, Value)> {
        if e.key.kind != self.kind {
            return None;
        }
        let now = self.wants(&e.object);
        let before = e.old.as_ref().is_some_and(|o| self.wants(o));
        let t = match (e.event_type, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, false) => "DELETED",
            (EventType::Deleted, true, _) => "DELETED",
            _ => return None,
        };
        Some((t, e.object.clone()))
    }

    fn encode(&self, event_type: &str, obj: &Value) -> Bytes {
        let object = match self.repr {
            Representation::Table(v) if event_type != "BOOKMARK" && event_type != "ERROR" => {
                let rv = obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""));
                table(
                    self.kind,
                    v,
                    std::slice::from_ref(obj),
                    json!({ "resourceVersion": rv }),
                    self.include,
                    SystemTime::now(),
                )
            }
            _ => obj.clone(),
        };
        let mut line = json!({ "type": event_type, "object": object }).to_string();
        line.push('\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut obj = json!({ "kind": self.kind.kind(), "apiVersion": self.kind.api_version(), "metadata": { "resourceVersion": rv.to_string() } });
        if initial_events_end {
            obj["metadata"]["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        self.encode("BOOKMARK", &obj)
    }
}

struct Watch {
    filter: Filter,
    pending: VecDeque<Bytes>,
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    bookmarks: Option<Interval>,
    deadline: Option<Instant>,
    shutdown: CancellationToken,
    last_rv: u64,
}

async fn next_event(mut w: Watch) -> Option<(Bytes, Watch)> {
    loop {
        if let Some(b) = w.pending.pop_front() {
            return Some((b, w));
        }
        let rx = w.rx.as_mut()?;
        let deadline = w.deadline;
        let event = tokio::select! {
            () = w.shutdown.cancelled() => return None,
            () = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => return None,
            _ = async { if let Some(i) = w.bookmarks.as_mut() { i.tick().await; } }, if w.bookmarks.is_some() => {
                let b = w.filter.bookmark(w.last_rv, false);
                return Some((b, w));
            }
            event = rx.recv() => event,
        };
        match event {
            Ok(e) => {
                w.last_rv = w.last_rv.max(e.rv);
                if let Some((t, obj)) = w.filter.translate(&e) {
                    let b = w.filter.encode(t, &obj);
                    return Some((b, w));
                }
            }
            // Too far behind (or the store is gone): close, as kube-apiserver
            // closes a watcher that cannot keep up; the client re-lists.
            Err(RecvError::Lagged(_) | RecvError::Closed) => return None,
        }
    }
}

fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::invalid(
        "ListOptions",
        "",
        vec![Cause { reason: "FieldValueForbidden", field: field.into(), message: message.into() }],
    )
}

/// `GET ...?watch=true`.
pub(crate) fn serve(ctx: &Ctx<'_>, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
    let kind = target.kind;
    let (labels, fields) = selectors(ctx, kind)?;
    let repr = negotiate(ctx.headers, &OBJECT_REPRESENTATIONS).ok_or_else(ApiError::not_acceptable)?;
    let bookmarks = ctx.query.flag("allowWatchBookmarks");
    let send_initial = ctx.query.flag("sendInitialEvents");
    let rv_param = ctx.query.get("resourceVersion").unwrap_or_default();
    if send_initial {
        if !bookmarks {
            return Err(invalid(
                "allowWatchBookmarks",
                "Forbidden: allowWatchBookmarks required when sendInitialEvents is specified",
            ));
        }
        if ctx.query.get("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(invalid(
                "resourceVersionMatch",
                "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
    }
    let from = match rv_param {
        _ if send_initial => None,
        "" | "0" => None,
        rv => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let timeout = ctx.query.int("timeoutSeconds").map_err(ApiError::bad_request)?.filter(|t| *t > 0);
    let filter = Filter {
        kind,
        namespace: target.namespace.clone().filter(|_| kind.namespaced()),
        labels,
        fields,
        repr,
        include: IncludeObject::parse(ctx.query.get("includeObject")),
    };
    let ct = match repr {
        Representation::Table(v) => content_type(v),
        _ => "application/json".to_string(),
    };
    let mut pending = VecDeque::new();
    let (rx, last_rv) = match ctx.state.store.watch(from) {
        Ok(start) => {
            for obj in start
                .snapshot
                .iter()
                .filter(|o| o.get("kind") == Some(&json!(kind.kind())) && filter.wants(o))
            {
                pending.push_back(filter.encode("ADDED", obj));
            }
            for e in &start.backlog {
                if let Some((t, obj)) = filter.translate(e) {
                    pending.push_back(filter.encode(t, &obj));
                }
            }
            if send_initial {
                pending.push_back(filter.bookmark(start.rv, true));
            }
            (Some(start.rx), start.rv)
        }
        // As kube-apiserver does: a 200 carrying one ERROR event.
        Err(gone) => {
            pending.push_back(filter.encode("ERROR", &gone.to_value()));
            (None, 0)
        }
    };
    let interval = ctx.state.bookmark_interval.max(Duration::from_millis(10));
    let w = Watch {
        filter,
        pending,
        rx,
        bookmarks: bookmarks.then(|| tokio::time::interval_at(Instant::now() + interval, interval)),
        deadline: timeout.map(|t| Instant::now() + Duration::from_secs(t.unsigned_abs())),
        shutdown: ctx.state.shutdown.clone(),
        last_rv,
    };
    Ok(body::respond(StatusCode::OK, &ct, ResponseBody::stream(stream::unfold(w, next_event))))
}
