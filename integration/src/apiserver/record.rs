//! Recording of every request the test apiserver receives, as received.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::auth::UserInfo;

/// How many requests are kept; the oldest are dropped beyond this.
pub const MAX_RECORDED_REQUESTS: usize = 20_000;
/// How much of each request body is kept.
pub const RECORDED_BODY_LIMIT: usize = 16 * 1024;

/// How a recorded request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestOutcome {
    /// The response (or its stream) is still going.
    InProgress,
    /// The whole response was handed to the connection.
    Completed,
    /// The response was dropped before it finished: the client went away
    /// (or the connection was aborted at shutdown).
    Cancelled,
}

/// One request as the test apiserver received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRequest {
    /// Sequence number, from 1, in arrival order.
    pub id: u64,
    /// HTTP method.
    pub method: String,
    /// Path, not decoded.
    pub path: String,
    /// The authority the client addressed (`:authority` in HTTP/2, `Host`
    /// in HTTP/1.1).
    pub authority: Option<String>,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Every header as received, names lower-case, in order, including
    /// `Authorization` and `Impersonate-*`.
    pub headers: Vec<(String, String)>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: String,
    /// The body (lossy UTF-8), at most [`RECORDED_BODY_LIMIT`] bytes of it.
    pub body: String,
    /// The body's full length in bytes.
    pub body_len: usize,
    /// Who presented the credential (`test-admin`, or a ServiceAccount's
    /// `system:serviceaccount:NS:NAME`), once authenticated (`None` when
    /// rejected with 401). Differs from `user` when impersonating.
    #[serde(default)]
    pub authenticated_user: Option<String>,
    /// The effective user name: the impersonated user, or else the
    /// authenticated one. `None` when rejected with 401, or with 403
    /// because the impersonation was not allowed.
    pub user: Option<String>,
    /// The effective user's groups (including `system:authenticated`).
    pub groups: Vec<String>,
    /// The effective user's uid (`Impersonate-Uid`), empty if none.
    pub uid: String,
    /// The effective user's extra attributes (`Impersonate-Extra-*`).
    pub extra: BTreeMap<String, Vec<String>>,
    /// Whether the effective user came from `Impersonate-*` headers.
    pub impersonated: bool,
    /// The response status code, once decided.
    pub status: Option<u16>,
    /// When the request arrived.
    pub received_at: SystemTime,
    /// When the response finished or was cancelled (for an upgraded
    /// connection: when the connection ended).
    pub finished_at: Option<SystemTime>,
    /// How the exchange ended. For an upgraded connection (`exec`,
    /// `attach`, `port-forward`): `Completed` when the server ended the
    /// session (the command exited), `Cancelled` when the client went away
    /// first.
    pub outcome: RequestOutcome,
    /// The protocol the connection was upgraded to (`SPDY/3.1` or
    /// `websocket`), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<String>,
    /// The negotiated streaming protocol (`v4.channel.k8s.io`,
    /// `v5.channel.k8s.io`, `portforward.k8s.io`,
    /// `SPDY/3.1+portforward.k8s.io`, ...); empty when the client named none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_protocol: Option<String>,
    /// The exit code of an `exec` (or `attach`) session that ran to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

impl RecordedRequest {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every value of a header (name case-insensitive), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// A decoded query parameter.
    pub fn query_param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_deref().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

/// The bounded log of recorded requests.
#[derive(Debug)]
pub(crate) struct Recorder {
    inner: Mutex<Inner>,
    /// Bumped on every change, so waiters need not poll.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self { inner: Mutex::default(), changed: tokio::sync::watch::Sender::new(0) }
    }
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    entries: VecDeque<RecordedRequest>,
}

/// The parts of a request known when it arrives.
pub(crate) struct Arrival {
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub http_version: String,
}

impl Recorder {
    /// Starts recording a request; the guard fills in the rest.
    pub fn start(self: &Arc<Self>, a: Arrival) -> RecordGuard {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.next_id += 1;
        let id = inner.next_id;
        if inner.entries.len() >= MAX_RECORDED_REQUESTS {
            inner.entries.pop_front();
        }
        inner.entries.push_back(RecordedRequest {
            id,
            method: a.method,
            path: a.path,
            authority: a.authority,
            query: a.query,
            headers: a.headers,
            http_version: a.http_version,
            body: String::new(),
            body_len: 0,
            authenticated_user: None,
            user: None,
            groups: Vec::new(),
            uid: String::new(),
            extra: BTreeMap::new(),
            impersonated: false,
            status: None,
            received_at: SystemTime::now(),
            finished_at: None,
            outcome: RequestOutcome::InProgress,
            upgrade: None,
            stream_protocol: None,
            exit_code: None,
        });
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
        RecordGuard { recorder: Some(Arc::clone(self)), id, finished: AtomicBool::new(false) }
    }

    /// Waits until some recorded request satisfies `pred`; returns the
    /// first one that does.
    pub async fn wait_for(&self, pred: impl Fn(&RecordedRequest) -> bool) -> RecordedRequest {
        let mut rx = self.changed.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(found) =
                self.inner.lock().unwrap_or_else(PoisonError::into_inner).entries.iter().find(|r| pred(r))
            {
                return found.clone();
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`: unreachable in practice.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A copy of everything recorded, oldest first.
    pub fn snapshot(&self) -> Vec<RecordedRequest> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).entries.iter().cloned().collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut RecordedRequest)) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let first = inner.entries.front().map_or(id, |e| e.id);
        if let Some(offset) = id.checked_sub(first)
            && let Some(entry) = usize::try_from(offset).ok().and_then(|o| inner.entries.get_mut(o))
        {
            f(entry);
        }
        drop(inner);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Completes one recorded request; if dropped before [`RecordGuard::finish`]
/// the request is recorded as cancelled.
#[derive(Debug)]
pub(crate) struct RecordGuard {
    recorder: Option<Arc<Recorder>>,
    id: u64,
    finished: AtomicBool,
}

impl RecordGuard {
    /// A guard that records nothing (for the `/_test/` endpoints).
    pub fn disabled() -> Self {
        Self { recorder: None, id: 0, finished: AtomicBool::new(true) }
    }

    fn update(&self, f: impl FnOnce(&mut RecordedRequest)) {
        if let Some(r) = &self.recorder {
            r.update(self.id, f);
        }
    }

    /// Records who presented the credential.
    pub fn set_requester(&self, user: &UserInfo) {
        self.update(|e| e.authenticated_user = Some(user.username.clone()));
    }

    /// Records the effective user.
    pub fn set_user(&self, user: &UserInfo, impersonated: bool) {
        self.update(|e| {
            e.user = Some(user.username.clone());
            e.groups.clone_from(&user.groups);
            e.uid.clone_from(&user.uid);
            e.extra.clone_from(&user.extra);
            e.impersonated = impersonated;
        });
    }

    /// Records the request body.
    pub fn set_body(&self, body: &[u8]) {
        self.update(|e| {
            e.body_len = body.len();
            e.body = String::from_utf8_lossy(&body[..body.len().min(RECORDED_BODY_LIMIT)]).into_owned();
        });
    }

    /// Records the response status.
    pub fn set_status(&self, status: u16) {
        self.update(|e| e.status = Some(status));
    }

    /// Records the upgrade of the connection and the negotiated protocol.
    pub fn set_stream(&self, upgrade: &str, protocol: &str) {
        self.update(|e| {
            e.upgrade = Some(upgrade.to_string());
            e.stream_protocol = Some(protocol.to_string());
        });
    }

    /// Records a streaming session's exit code.
    pub fn set_exit_code(&self, code: i32) {
        self.update(|e| e.exit_code = Some(code));
    }

    /// Records the end of the exchange (only the first call counts).
    pub fn finish(&self, outcome: RequestOutcome) {
        if !self.finished.swap(true, Ordering::AcqRel) {
            self.update(|e| {
                e.outcome = outcome;
                e.finished_at = Some(SystemTime::now());
            });
        }
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        self.finish(RequestOutcome::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrival() -> Arrival {
        Arrival {
            method: "GET".into(),
            path: "/api".into(),
            authority: Some("127.0.0.1:1".into()),
            query: Some("a=b%20c".into()),
            headers: vec![("authorization".into(), "Bearer x".into())],
            http_version: "HTTP/2.0".into(),
        }
    }

    #[test]
    fn guards_record_outcomes() {
        let rec = Arc::new(Recorder::default());
        let done = rec.start(arrival());
        done.set_status(200);
        done.finish(RequestOutcome::Completed);
        drop(done);
        drop(rec.start(arrival()));
        let all = rec.snapshot();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].outcome, RequestOutcome::Completed);
        assert_eq!(all[0].status, Some(200));
        assert_eq!(all[1].outcome, RequestOutcome::Cancelled);
        assert_eq!(all[0].header("Authorization"), Some("Bearer x"));
        assert_eq!(all[0].query_param("a").as_deref(), Some("b c"));
        let json = serde_json::to_string(&all).expect("json");
        let back: Vec<RecordedRequest> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, all);
    }
}
