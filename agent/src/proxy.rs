//! One request stream: replaying a request head against the apiserver and
//! streaming the answer back.
//!
//! Memory stays bounded whatever the sizes involved: the request body flows
//! through a bounded channel into the apiserver request, and the response
//! flows in chunks of at most [`MAX_BODY_CHUNK`](ferry::limits::MAX_BODY_CHUNK) into the bounded outbound
//! channel of the gRPC call. When the hub reads slowly that channel fills,
//! the agent stops reading from the apiserver, and TCP/HTTP/2 flow control
//! pushes back on the apiserver. When the hub ends the stream early, every
//! future touching the apiserver is dropped, which cancels the request there.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ferry::frame::{MAX_WHOLE_BODY, agent_error, decode_request_head, response_head};
use ferry::limits::FRAME_CHANNEL_CAPACITY;
use ferry::proto::v1::{self as pb, AgentFrame, ErrorCode, HubFrame, RequestHead, agent_frame, hub_frame};
use ferry::request_info::RequestInfo;
use ferry::status::KubeStatus;
use http::{Response, StatusCode};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{Instrument, debug, info_span, warn};

use crate::error::report;
use crate::impersonation;
use crate::metrics::{AgentMetrics, Answer, RequestCount};
use crate::pool::ParkSlot;
use crate::upgrade;
use crate::upstream::{Upstream, UpstreamBody, UpstreamError, empty_body};

/// How long the agent waits for the hub to close a stream it finished
/// (sent `End` or an error on), before dropping it.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sending an error frame may wait for room in the channel.
const ERROR_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A Proxy call: the agent's outbound frames and the hub's frames.
pub(crate) struct RequestStream {
    /// Frames to the hub (bounded: the call's backpressure).
    pub out: mpsc::Sender<AgentFrame>,
    /// Frames from the hub.
    pub inbound: Streaming<HubFrame>,
}

impl RequestStream {
    /// Opens the outbound side of a call: the channel and the stream tonic
    /// sends from.
    pub fn outbound() -> (mpsc::Sender<AgentFrame>, ReceiverStream<AgentFrame>) {
        let (tx, rx) = mpsc::channel(FRAME_CHANNEL_CAPACITY);
        (tx, ReceiverStream::new(rx))
    }

    /// Ends the agent's side and waits (bounded) for the hub to finish the
    /// call, so it ends cleanly instead of by reset.
    pub async fn finish(self) {
        self.close(DRAIN_TIMEOUT).await;
    }

    /// Like [`RequestStream::finish`] with a custom bound.
    pub async fn close(self, wait: Duration) {
        let RequestStream { out, mut inbound } = self;
        drop(out);
        let _ =
            tokio::time::timeout(wait, async { while let Ok(Some(_)) = inbound.message().await {} }).await;
    }
}

/// What the request runs with.
pub(crate) struct ProxyContext {
    /// The agent's metrics.
    pub metrics: Arc<AgentMetrics>,
    /// The apiserver.
    pub upstream: Arc<Upstream>,
    /// Cluster name, for logs.
    pub cluster: Arc<str>,
    /// System identities the agent may impersonate.
    pub system_identities: ferry::identity::SystemIdentityPolicy,
}

/// Why the hub's side of a stream ended before the agent finished.
#[derive(Debug)]
pub(crate) enum Gone {
    /// The hub ended the call.
    Closed,
    /// The call failed (reset, connection lost).
    Failed(tonic::Status),
    /// The hub sent an error frame (its caller went away).
    Cancelled(pb::Error),
    /// The hub broke the frame order.
    Protocol(&'static str),
}

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gone::Closed => f.write_str("the hub ended the stream"),
            Gone::Failed(status) => {
                write!(f, "the stream failed ({:?}: {})", status.code(), status.message())
            }
            Gone::Cancelled(e) => write!(f, "the hub cancelled ({:?}: {})", e.code(), e.message),
            Gone::Protocol(what) => write!(f, "the hub sent {what}"),
        }
    }
}

/// One step of the hub's side of a stream.
pub(crate) enum HubEvent {
    /// A body chunk (request body, or upgraded bytes).
    Body(Bytes),
    /// The hub's direction ended.
    End,
    /// The stream is over from the hub's side.
    Gone(Gone),
}

/// Reads the next hub frame (cancel-safe).
pub(crate) async fn next_event(inbound: &mut Streaming<HubFrame>) -> HubEvent {
    match inbound.message().await {
        Ok(Some(HubFrame { frame: Some(hub_frame::Frame::Body(chunk)) })) => HubEvent::Body(chunk),
        Ok(Some(HubFrame { frame: Some(hub_frame::Frame::End(_)) })) => HubEvent::End,
        Ok(Some(HubFrame { frame: Some(hub_frame::Frame::Error(e)) })) => HubEvent::Gone(Gone::Cancelled(e)),
        Ok(Some(HubFrame { frame: Some(hub_frame::Frame::Head(_)) })) => {
            HubEvent::Gone(Gone::Protocol("a second request head"))
        }
        Ok(Some(HubFrame { frame: None })) => HubEvent::Gone(Gone::Protocol("an empty frame")),
        Ok(None) => HubEvent::Gone(Gone::Closed),
        Err(status) => HubEvent::Gone(Gone::Failed(status)),
    }
}

/// Offers a stream whose request finished cleanly back to the pool:
/// `Some` when the pool keeps it for another request.
pub(crate) type Keep<'a> = &'a (dyn Fn() -> Option<ParkSlot> + Sync);

/// How one request ended.
pub(crate) enum Outcome {
    /// The response went out completely (`End` sent).
    Completed {
        /// Response status.
        status: StatusCode,
        /// Response body bytes sent.
        bytes: u64,
        /// The pool's slot when the `End` offered the stream for reuse.
        kept: Option<ParkSlot>,
    },
    /// The agent failed the request with an error frame (already logged).
    Failed,
    /// The hub ended the stream first.
    Cancelled(Gone),
    /// The outbound side closed: the hub reset the call.
    HubGone,
    /// The agent is shutting down.
    Aborted,
}

/// Serves one request whose head just arrived on a parked stream. Returns
/// the stream when it finished cleanly and `keep` took it back: the hub
/// parks it again and its next frame is another request's head.
pub(crate) async fn serve(
    stream: RequestStream,
    head: RequestHead,
    ctx: &ProxyContext,
    abort: &CancellationToken,
    keep: Keep<'_>,
) -> Option<(RequestStream, ParkSlot)> {
    let started = Instant::now();
    let request_id = head.request_id.clone();
    let mut proxied = match decode_request_head(head) {
        Ok(p) => p,
        Err(e) => {
            warn!(cluster = %ctx.cluster, %request_id, error = %e, "refused an invalid request head");
            send_error(&stream.out, ErrorCode::Protocol, e.to_string()).await;
            stream.finish().await;
            return None;
        }
    };
    let span = info_span!(
        "request",
        cluster = %ctx.cluster,
        request_id = %proxied.request_id,
        method = %proxied.method,
        path = %proxied.path_and_query.path(),
    );
    let _open = ctx.metrics.request_open();
    let pq = &proxied.path_and_query;
    let count = ctx.metrics.request(&RequestInfo::parse(&proxied.method, pq.path(), pq.query()).verb);
    async move {
        let mut stream = stream;
        let refused = ctx.system_identities.check(&proxied.identity).err().or_else(|| {
            proxied.impersonate.as_ref().and_then(|t| ctx.system_identities.check(t).err())
        });
        if let Some(e) = refused {
            warn!(error = %e, "refused to impersonate a system identity");
            respond_status(&stream.out, &KubeStatus::forbidden(e.to_string())).await;
            stream.finish().await;
            return None;
        }
        if let Some(target) = proxied.impersonate.take() {
            let checked = tokio::select! {
                r = impersonation::check(&ctx.upstream, &proxied.identity, &target) => r,
                () = abort.cancelled() => Err(impersonation::Refusal::Unchecked("agent shutting down".into())),
            };
            if let Err(refusal) = checked {
                debug!(error = %refusal, "impersonation refused");
                let status = match &refusal {
                    impersonation::Refusal::Forbidden(m) => KubeStatus::forbidden(m.clone()),
                    impersonation::Refusal::Unchecked(m) => KubeStatus::bad_gateway(m.clone()),
                };
                respond_status(&stream.out, &status).await;
                stream.finish().await;
                return None;
            }
            proxied.identity = target;
        }
        let upgrade = proxied.upgrade;
        let outcome = if upgrade {
            upgrade::serve(&mut stream, &proxied, &ctx.upstream, abort, &ctx.metrics, &count).await
        } else {
            serve_http(&mut stream, &proxied, &ctx.upstream, abort, keep, &ctx.metrics, &count).await
        };
        count.ended(match &outcome {
            Outcome::Completed { status, .. } => Answer::Status(status.as_u16()),
            Outcome::Failed => Answer::Error,
            Outcome::Cancelled(_) | Outcome::HubGone | Outcome::Aborted => Answer::Cancelled,
        });
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Outcome::Completed { status, bytes, kept } => {
                debug!(
                    status = status.as_u16(),
                    bytes,
                    elapsed_ms,
                    upgrade,
                    reused = kept.is_some(),
                    "request completed"
                );
                match kept {
                    Some(slot) => return Some((stream, slot)),
                    None => stream.finish().await,
                }
            }
            Outcome::Failed => stream.finish().await,
            Outcome::Cancelled(Gone::Protocol(what)) => {
                warn!(elapsed_ms, "the hub sent {what}; failing the request");
                send_error(&stream.out, ErrorCode::Protocol, format!("unexpected {what}")).await;
                stream.finish().await;
            }
            Outcome::Cancelled(gone) => {
                debug!(elapsed_ms, reason = %gone, "request cancelled by the hub");
                if matches!(gone, Gone::Cancelled(_)) {
                    // The hub is closing in order: close ours in order too,
                    // so neither side resets the HTTP/2 stream.
                    stream.finish().await;
                }
            }
            Outcome::HubGone => debug!(elapsed_ms, "the hub reset the request stream"),
            Outcome::Aborted => {
                let _ = stream.out.try_send(agent_error(ErrorCode::Cancelled, "agent shutting down"));
                debug!(elapsed_ms, "request aborted: agent shutting down");
            }
        }
        None
    }
    .instrument(span)
    .await
}

/// An ordinary (non-upgrade) request. The stream is offered back for reuse
/// only when the hub's `End` arrived before the response's end.
async fn serve_http(
    stream: &mut RequestStream,
    proxied: &ferry::frame::ProxiedRequest,
    upstream: &Upstream,
    abort: &CancellationToken,
    keep: Keep<'_>,
    metrics: &AgentMetrics,
    count: &RequestCount<'_>,
) -> Outcome {
    let RequestStream { out, inbound } = stream;
    // A head that ended the body, or an immediate End, means no body at
    // all, so a GET goes out without one (no chunked encoding); otherwise
    // the body streams as it arrives.
    let first = if proxied.body_ended {
        HubEvent::End
    } else {
        tokio::select! {
            ev = next_event(inbound) => ev,
            () = abort.cancelled() => return Outcome::Aborted,
        }
    };
    let (body, body_tx, ended) = match first {
        HubEvent::End => (empty_body(), None, true),
        HubEvent::Body(chunk) => {
            let (body, sender) = request_body(chunk);
            (body, Some(sender), false)
        }
        HubEvent::Gone(gone) => return Outcome::Cancelled(gone),
    };
    let request = match upstream.build_request(proxied, body) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot build the apiserver request");
            send_error(out, ErrorCode::Protocol, e.to_string()).await;
            return Outcome::Failed;
        }
    };
    let out = &*out;
    let hub_ended = AtomicBool::new(ended);
    let exchange = async {
        let sent = Instant::now();
        match upstream.send_on_lane(request).await {
            Ok((response, _slot)) => {
                metrics.apiserver_head(sent.elapsed());
                let offer = || if hub_ended.load(Ordering::Acquire) { keep() } else { None };
                forward_response(response, out, offer, count, proxied.whole_response).await
            }
            Err(e) => upstream_failed(e, out).await,
        }
    };
    tokio::select! {
        biased;
        () = abort.cancelled() => Outcome::Aborted,
        outcome = exchange => outcome,
        gone = watch_hub(inbound, body_tx, &hub_ended, out) => Outcome::Cancelled(gone),
    }
}

/// The sending side of a streamed request body.
///
/// Dropped before [`BodySender::finish`] (the hub went away mid-body, or the
/// agent is stopping), it makes the body fail, so the apiserver sees an
/// aborted request rather than a short body that looks complete.
pub(crate) struct BodySender {
    tx: mpsc::Sender<Bytes>,
    abort: CancellationToken,
    finished: bool,
}

impl BodySender {
    /// Queues a chunk, waiting while the apiserver reads slowly; `false`
    /// when the apiserver no longer reads the body.
    async fn send(&self, chunk: Bytes) -> bool {
        self.tx.send(chunk).await.is_ok()
    }

    /// Ends the body normally.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        // Runs before `tx` is dropped, so the body cannot end cleanly first.
        if !self.finished {
            self.abort.cancel();
        }
    }
}

/// A streamed request body starting with `first`, and its sender.
fn request_body(first: Bytes) -> (UpstreamBody, BodySender) {
    let (tx, rx) = mpsc::channel(FRAME_CHANNEL_CAPACITY);
    // The channel is fresh: the first chunk always fits.
    let _ = tx.try_send(first);
    let abort = CancellationToken::new();
    let chunks = futures_util::stream::unfold(Some((rx, abort.clone())), |state| async move {
        let (mut rx, abort) = state?;
        tokio::select! {
            biased;
            () = abort.cancelled() => Some((Err(std::io::Error::other("request cancelled")), None)),
            chunk = rx.recv() => chunk.map(|c| (Ok(Frame::data(c)), Some((rx, abort)))),
        }
    });
    (BodyExt::boxed_unsync(StreamBody::new(chunks)), BodySender { tx, abort, finished: false })
}

/// Feeds the rest of the request body to the apiserver, then watches the
/// hub's side for cancellation; sets `ended` when the hub's `End` arrives.
/// Returns only when the hub's side is gone.
pub(crate) async fn watch_hub(
    inbound: &mut Streaming<HubFrame>,
    mut body_tx: Option<BodySender>,
    ended: &AtomicBool,
    out: &mpsc::Sender<AgentFrame>,
) -> Gone {
    loop {
        let event = tokio::select! {
            ev = next_event(inbound) => ev,
            () = out.closed() => return Gone::Closed,
        };
        match event {
            HubEvent::Body(_) | HubEvent::End if ended.load(Ordering::Acquire) => {
                return Gone::Protocol("a frame after the body ended");
            }
            HubEvent::Body(chunk) => {
                if let Some(tx) = &body_tx {
                    // Waits while the apiserver reads slowly: the hub's
                    // stream stalls in turn (backpressure).
                    let sent = tokio::select! {
                        sent = tx.send(chunk) => sent,
                        () = out.closed() => return Gone::Closed,
                    };
                    if !sent {
                        // The apiserver answered without reading it all;
                        // the rest is discarded.
                        body_tx = None;
                    }
                }
            }
            HubEvent::End => {
                ended.store(true, Ordering::Release);
                if let Some(tx) = body_tx.take() {
                    tx.finish();
                }
            }
            HubEvent::Gone(gone) => return gone,
        }
    }
}

/// Sends the response head, the body in chunks as it arrives, then `End`,
/// offering the stream for reuse when `keep` (asked only then) takes it.
/// With `whole` (the hub asked for it), a response whose length is known
/// and at most [`MAX_WHOLE_BODY`] goes as one message instead: the head
/// carrying the body and the `End`.
pub(crate) async fn forward_response(
    response: Response<Incoming>,
    out: &mpsc::Sender<AgentFrame>,
    keep: impl FnOnce() -> Option<ParkSlot>,
    count: &RequestCount<'_>,
    whole: bool,
) -> Outcome {
    let status = response.status();
    let mut head = response_head(status, response.headers());
    count.answered(status.as_u16());
    let mut body = response.into_body();
    let small = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= MAX_WHOLE_BODY as u64);
    if whole && small {
        let data = match read_whole(&mut body).await {
            Ok(data) => data,
            Err(e) => {
                warn!(status = status.as_u16(), error = %e, "apiserver response broke off");
                send_error(out, ErrorCode::UpstreamBroken, format!("apiserver response broke off: {e}"))
                    .await;
                return Outcome::Failed;
            }
        };
        let bytes = data.len() as u64;
        let kept = keep();
        head.body = data;
        head.end = Some(pb::End { reuse: kept.is_some() });
        // A failed send drops the slot, which returns it to the pool.
        if out.send(AgentFrame { frame: Some(agent_frame::Frame::Head(head)) }).await.is_err() {
            return Outcome::HubGone;
        }
        return Outcome::Completed { status, bytes, kept };
    }
    if out.send(AgentFrame { frame: Some(agent_frame::Frame::Head(head)) }).await.is_err() {
        return Outcome::HubGone;
    }
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                warn!(status = status.as_u16(), bytes, error = %report(&e), "apiserver response broke off");
                send_error(out, ErrorCode::UpstreamBroken, format!("apiserver response broke off: {e}"))
                    .await;
                return Outcome::Failed;
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        bytes += data.len() as u64;
        for chunk in ferry::frame::chunks(data) {
            if out.send(body_frame(chunk)).await.is_err() {
                return Outcome::HubGone;
            }
        }
    }
    let kept = keep();
    // A failed send drops the slot, which returns it to the pool.
    if out.send(end_frame(kept.is_some())).await.is_err() {
        return Outcome::HubGone;
    }
    Outcome::Completed { status, bytes, kept }
}

/// Why a whole small response could not be read.
#[derive(Debug, thiserror::Error)]
enum WholeError {
    /// The apiserver's connection failed mid-body.
    #[error(transparent)]
    Body(#[from] hyper::Error),
    /// More bytes than its length said (hyper checks, this is a backstop).
    #[error("body longer than {MAX_WHOLE_BODY} bytes")]
    TooLong,
}

/// Reads a response body known to be at most [`MAX_WHOLE_BODY`] bytes; a
/// body in one data frame (the usual case) is not copied.
async fn read_whole(body: &mut Incoming) -> Result<Bytes, WholeError> {
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        let held = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if held + data.len() > MAX_WHOLE_BODY {
            return Err(WholeError::TooLong);
        }
        match &first {
            None => first = Some(data),
            Some(_) => rest.extend_from_slice(&data),
        }
    }
    Ok(match first {
        None => Bytes::new(),
        Some(first) if rest.is_empty() => first,
        Some(first) => {
            let mut all = bytes::BytesMut::with_capacity(first.len() + rest.len());
            all.extend_from_slice(&first);
            all.extend_from_slice(&rest);
            all.freeze()
        }
    })
}

/// Answers a request with a Kubernetes `Status` (head, body, end) without
/// reaching the apiserver.
pub(crate) async fn respond_status(out: &mpsc::Sender<AgentFrame>, status: &KubeStatus) {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let head = AgentFrame { frame: Some(agent_frame::Frame::Head(response_head(status.code, &headers))) };
    for frame in [head, body_frame(Bytes::from(status.to_json())), end_frame(false)] {
        if tokio::time::timeout(ERROR_SEND_TIMEOUT, out.send(frame)).await.map_or(true, |r| r.is_err()) {
            return;
        }
    }
}

/// Reports a failed apiserver call to the hub.
pub(crate) async fn upstream_failed(e: UpstreamError, out: &mpsc::Sender<AgentFrame>) -> Outcome {
    let code = if e.is_unreachable() { ErrorCode::UpstreamUnreachable } else { ErrorCode::UpstreamBroken };
    warn!(error = %report(&e), "apiserver request failed");
    send_error(out, code, e.to_string()).await;
    Outcome::Failed
}

/// Sends an error frame, waiting a bounded time for room.
pub(crate) async fn send_error(out: &mpsc::Sender<AgentFrame>, code: ErrorCode, message: impl Into<String>) {
    let _ = tokio::time::timeout(ERROR_SEND_TIMEOUT, out.send(agent_error(code, message))).await;
}

/// A body frame (callers split data with `ferry::frame::chunks`, so a
/// chunk never exceeds [`MAX_BODY_CHUNK`](ferry::limits::MAX_BODY_CHUNK)).
pub(crate) fn body_frame(chunk: Bytes) -> AgentFrame {
    AgentFrame { frame: Some(agent_frame::Frame::Body(chunk)) }
}

/// An end frame; `reuse` offers the stream for another request.
pub(crate) fn end_frame(reuse: bool) -> AgentFrame {
    AgentFrame { frame: Some(agent_frame::Frame::End(pb::End { reuse })) }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(mut body: UpstreamBody) -> (Vec<u8>, Option<std::io::Error>) {
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => data.extend_from_slice(&f.into_data().unwrap_or_default()),
                Err(e) => return (data, Some(e)),
            }
        }
        (data, None)
    }

    #[tokio::test]
    async fn a_finished_body_ends_cleanly() {
        let (body, tx) = request_body(Bytes::from_static(b"a"));
        assert!(tx.send(Bytes::from_static(b"b")).await);
        tx.finish();
        let (data, error) = drain(body).await;
        assert_eq!(data, b"ab");
        assert!(error.is_none());
    }

    #[tokio::test]
    async fn an_abandoned_body_fails_instead_of_ending_short() {
        let (body, tx) = request_body(Bytes::from_static(b"a"));
        drop(tx);
        let (data, error) = drain(body).await;
        assert!(data.is_empty(), "buffered chunks are not delivered after an abort");
        assert!(error.is_some());
    }
}
