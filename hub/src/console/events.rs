//! `GET /ui/api/clusters/events`: `Clusters.Watch` as server-sent events,
//! so the clusters page updates without a reload.
//!
//! Each event is `event: added|modified|deleted|bookmark`, `id:` the
//! store revision and `data:` the cluster as JSON. A browser's
//! `EventSource` reconnects by itself with `Last-Event-ID`, and the watch
//! resumes after that revision; one the hub no longer keeps gets `event:
//! reset` (list again: reconnect without an id). The stream ends with
//! `event: signedout` when the session ends (sign-out, expiry, eviction, or
//! a revoked token, checked at every bookmark).
//!
//! Bounded: [`MAX_STREAMS_PER_SESSION`](super::session::MAX_STREAMS_PER_SESSION)
//! streams per session, every stream counted against the hub's
//! [`MAX_WATCHES`](crate::api::watch::MAX_WATCHES), [`SSE_BUFFER`] frames
//! queued per stream (then the watch's own bounded buffer, then it is cut
//! off and the browser resumes). The task is owned by the hub's tracker and
//! ends with the connection, the session or the hub.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry::proto::v1 as pb;
use ferry::proto::v1::clusters_server::Clusters;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::api::{ApiRequest, cluster_json, http_code};
use super::session::{Credential, MAX_STREAMS_PER_SESSION, Session};
use super::{Console, Reply, StreamError, error};
use crate::auth::{self, Peer};

/// Frames queued towards one browser.
pub const SSE_BUFFER: usize = 16;
/// How long a browser waits before reconnecting a dropped stream.
pub const SSE_RETRY: Duration = Duration::from_secs(2);

/// One server-sent event.
pub fn sse(event: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 48);
    s.push_str("event: ");
    s.push_str(event);
    s.push('\n');
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    for line in data.lines() {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

fn event_name(kind: i32) -> &'static str {
    match pb::EventType::try_from(kind).unwrap_or(pb::EventType::Unspecified) {
        pb::EventType::Added => "added",
        pb::EventType::Modified => "modified",
        pb::EventType::Deleted => "deleted",
        _ => "bookmark",
    }
}

impl Console {
    /// Starts a live event stream for session `s`.
    pub(crate) async fn events(&self, s: &Arc<Session>, headers: &HeaderMap, req: &ApiRequest<'_>) -> Reply {
        let given = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.query_param("revision"));
        let revision = match given.as_deref().map(str::trim) {
            None | Some("") => 0,
            Some(v) => match v.parse::<u64>() {
                Ok(r) => r,
                Err(_) => return error(StatusCode::BAD_REQUEST, format!("revision {v:?} is not a number")),
            },
        };
        let Ok(permit) = s.streams.clone().try_acquire_owned() else {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this session has {MAX_STREAMS_PER_SESSION} live streams open already; close a tab"),
            );
        };
        let msg = pb::WatchClustersRequest { revision, ..Default::default() };
        let mut events = match self.clusters.watch(self.grpc(s, req, msg)).await {
            Ok(r) => r.into_inner(),
            Err(e) if e.code() == Code::OutOfRange => {
                // Too old to resume: tell the page to list again.
                return stream_reply(once(sse(
                    "reset",
                    None,
                    &serde_json::json!({"error": e.message()}).to_string(),
                )));
            }
            Err(e) => return error(http_code(e.code()), e.message()),
        };
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, StreamError>>(SSE_BUFFER);
        let (session, state) = (s.clone(), self.state.clone());
        self.state.tasks.spawn(async move {
            let _permit = permit;
            let send = |b: Bytes| {
                let tx = tx.clone();
                async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
            };
            if !send(Bytes::from(format!("retry: {}\n\n", SSE_RETRY.as_millis()))).await {
                return;
            }
            let expiry = tokio::time::sleep_until(session.expires.into());
            tokio::pin!(expiry);
            let signed_out = || sse("signedout", None, "{}");
            loop {
                let frame = tokio::select! {
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            let kind = event_name(ev.r#type);
                            if kind == "bookmark" && !still_signed_in(&state, &session).await {
                                let _ = send(signed_out()).await;
                                return;
                            }
                            let data = ev.cluster.as_ref().map_or_else(|| "{}".to_owned(), |c| cluster_json(c).to_string());
                            sse(kind, Some(ev.revision), &data)
                        }
                        Some(Err(status)) => {
                            let kind = if status.code() == Code::OutOfRange { "reset" } else { "failed" };
                            let _ = send(sse(kind, None, &serde_json::json!({"error": status.message()}).to_string())).await;
                            return;
                        }
                        None => return,
                    },
                    () = session.ended.cancelled() => signed_out(),
                    () = &mut expiry => signed_out(),
                    () = tx.closed() => return,
                    () = state.shutdown.cancelled() => return,
                };
                let last = frame.starts_with(b"event: signedout");
                if !send(frame).await || last {
                    return;
                }
            }
        });
        stream_reply(ReceiverStream::new(rx))
    }
}

/// Whether the session's credential is still good (a token may have been
/// revoked or have expired since sign-in).
async fn still_signed_in(state: &crate::state::HubState, session: &Session) -> bool {
    match &session.credential {
        Credential::Token(t) => {
            let header = format!("Bearer {}", t.expose());
            matches!(
                auth::authenticate(state.store.as_ref(), &Peer::Anonymous, Some(&header)).await,
                Ok(Some(_))
            )
        }
        Credential::Certificate(_) => !session.ended.is_cancelled(),
    }
}

fn once(b: Bytes) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, StreamError>> + Send + 'static {
    futures_util::stream::once(async move { Ok(Frame::data(b)) })
}

fn stream_reply(
    stream: impl futures_util::Stream<Item = Result<Frame<Bytes>, StreamError>> + Send + 'static,
) -> Reply {
    let mut r = Response::new(http_body_util::StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_as_server_sent_events() {
        assert_eq!(&sse("added", Some(7), "{\"a\":1}")[..], b"event: added\nid: 7\ndata: {\"a\":1}\n\n");
        // A line break in the data cannot end the event early.
        assert_eq!(&sse("failed", None, "a\nb")[..], b"event: failed\ndata: a\ndata: b\n\n");
        assert_eq!(event_name(pb::EventType::Deleted as i32), "deleted");
        assert_eq!(event_name(99), "bookmark");
    }
}
