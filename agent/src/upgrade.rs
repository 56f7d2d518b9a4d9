//! Upgraded connections (exec, attach, port-forward): the request goes to the
//! apiserver over HTTP/1.1 with `Connection: Upgrade`; after a 101 the stream
//! carries raw bytes both ways.
//!
//! Frame mapping after the 101 head: `HubFrame.body` is written to the
//! apiserver socket, `HubFrame.end` shuts down its write half; bytes read from
//! the socket go out as `AgentFrame.body`, and its EOF as `AgentFrame.end`.
//! The two directions are pumped concurrently (a proxy that alternates
//! between them can deadlock when both peers write at once). Each session
//! ends with one log line giving the bytes moved each way and how it ended.
//! An apiserver that closes without TLS `close_notify` (or resets) ends its
//! direction with an error frame instead of `End`, after every byte read
//! before it: the hub still delivers those, then closes the caller's side.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::BytesMut;
use ferry::frame::{ProxiedRequest, response_head};
use ferry::limits::MAX_BODY_CHUNK;
use ferry::proto::v1::{AgentFrame, ErrorCode, HubFrame, agent_frame};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{info, warn};

use crate::error::report;
use crate::metrics::{AgentMetrics, RequestCount};
use crate::proxy::{
    Gone, HubEvent, Outcome, RequestStream, body_frame, end_frame, forward_response, next_event, send_error,
    upstream_failed, watch_hub,
};
use crate::upstream::{Upstream, empty_body};

/// Serves an upgrade request.
pub(crate) async fn serve(
    stream: &mut RequestStream,
    proxied: &ProxiedRequest,
    upstream: &Upstream,
    abort: &CancellationToken,
    metrics: &AgentMetrics,
    count: &RequestCount<'_>,
) -> Outcome {
    let RequestStream { out, inbound } = stream;
    let out = &*out;
    let request = match upstream.build_request(proxied, empty_body()) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot build the apiserver request");
            send_error(out, ErrorCode::Protocol, e.to_string()).await;
            return Outcome::Failed;
        }
    };

    // Until the apiserver answers, the hub may only cancel or half-close.
    let mut hub_open = true;
    let started = Instant::now();
    let sent = upstream.send(request, true);
    tokio::pin!(sent);
    let response = loop {
        tokio::select! {
            biased;
            () = abort.cancelled() => return Outcome::Aborted,
            r = &mut sent => break r,
            ev = next_event(inbound) => match ev {
                HubEvent::End if hub_open => hub_open = false,
                HubEvent::End | HubEvent::Body(_) => {
                    return Outcome::Cancelled(Gone::Protocol("data before the upgrade completed"));
                }
                HubEvent::Gone(gone) => return Outcome::Cancelled(gone),
            },
        }
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => return upstream_failed(e, out).await,
    };
    metrics.apiserver_head(started.elapsed());

    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // Refused (403, 400, ...): an ordinary response.
        let hub_ended = AtomicBool::new(!hub_open);
        return tokio::select! {
            biased;
            () = abort.cancelled() => Outcome::Aborted,
            outcome = forward_response(response, out, || None, count, false) => outcome,
            gone = watch_hub(inbound, None, &hub_ended, out) => Outcome::Cancelled(gone),
        };
    }

    let head =
        AgentFrame { frame: Some(agent_frame::Frame::Head(response_head(status, response.headers()))) };
    count.answered(status.as_u16());
    if out.send(head).await.is_err() {
        return Outcome::HubGone;
    }
    let upgraded = tokio::select! {
        biased;
        () = abort.cancelled() => return Outcome::Aborted,
        r = hyper::upgrade::on(response) => r,
    };
    let io = match upgraded {
        Ok(u) => TokioIo::new(u),
        Err(e) => {
            warn!(error = %report(&e), "apiserver upgrade failed");
            send_error(out, ErrorCode::UpstreamBroken, format!("upgrade failed: {e}")).await;
            return Outcome::Failed;
        }
    };
    let _session = metrics.upgraded_open();
    pump(io, inbound, out, hub_open, abort).await
}

/// Bytes moved, per direction, for the session's log line.
#[derive(Default)]
struct Traffic {
    /// Written to the apiserver from the hub.
    hub_to_apiserver: AtomicU64,
    /// Read from the apiserver and sent to the hub.
    apiserver_to_hub: AtomicU64,
    /// From the hub, dropped because writing to the apiserver had failed.
    hub_discarded: AtomicU64,
}

impl Traffic {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Result of copying apiserver bytes to the hub.
enum ReadSide {
    /// EOF reached and `End` sent.
    Done,
    /// The hub's outbound side closed.
    HubGone,
    /// Reading from the apiserver failed.
    Failed(std::io::Error),
}

/// How the hub's direction ended: it only ends when the hub's side does.
/// A failed write to the apiserver does not end it (the apiserver may have
/// closed after its last byte, which can still be waiting to be read): the
/// hub's later bytes are dropped, and the failure is reported.
struct WriteSide {
    gone: Gone,
    failed: Option<std::io::Error>,
}

/// Pumps both directions, then logs the session: bytes each way and how it
/// ended, so a truncated session can be told from a complete one.
async fn pump<IO>(
    io: IO,
    inbound: &mut Streaming<HubFrame>,
    out: &mpsc::Sender<AgentFrame>,
    hub_open: bool,
    abort: &CancellationToken,
) -> Outcome
where
    IO: AsyncRead + AsyncWrite,
{
    let started = Instant::now();
    let traffic = Traffic::default();
    let (outcome, ended) = relay(io, inbound, out, hub_open, abort, &traffic).await;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (up, down) = (load(&traffic.hub_to_apiserver), load(&traffic.apiserver_to_hub));
    let discarded = load(&traffic.hub_discarded);
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &outcome {
        Outcome::Failed => warn!(
            hub_to_apiserver = up,
            apiserver_to_hub = down,
            hub_discarded = discarded,
            elapsed_ms,
            "upgraded connection closed early: {ended}"
        ),
        _ => info!(
            hub_to_apiserver = up,
            apiserver_to_hub = down,
            hub_discarded = discarded,
            elapsed_ms,
            "upgraded connection closed: {ended}"
        ),
    }
    outcome
}

/// Copies both ways until both directions have ended or one fails; returns
/// the outcome and how the session ended, in words.
async fn relay<IO>(
    io: IO,
    inbound: &mut Streaming<HubFrame>,
    out: &mpsc::Sender<AgentFrame>,
    hub_open: bool,
    abort: &CancellationToken,
    traffic: &Traffic,
) -> (Outcome, String)
where
    IO: AsyncRead + AsyncWrite,
{
    let (rd, wr) = tokio::io::split(io);
    let reads = apiserver_to_hub(rd, out, &traffic.apiserver_to_hub);
    let writes = hub_to_apiserver(wr, inbound, hub_open, traffic);
    tokio::pin!(reads, writes);
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            () = abort.cancelled() => return (Outcome::Aborted, "the agent is shutting down".into()),
            r = &mut reads, if reading => match r {
                ReadSide::Done => reading = false,
                ReadSide::HubGone => return (Outcome::HubGone, "the hub reset the stream".into()),
                ReadSide::Failed(e) => {
                    let why = format!("reading from the apiserver failed: {e}");
                    send_error(out, ErrorCode::UpstreamBroken, format!("apiserver connection broke: {e}")).await;
                    return (Outcome::Failed, why);
                }
            },
            w = &mut writes => {
                let write_failure = w.failed.map(|e| format!(" (writing to the apiserver failed: {e})"));
                let write_failure = write_failure.unwrap_or_default();
                return match w.gone {
                    // Both directions are done: the hub closing now is the normal end.
                    Gone::Closed if !reading => {
                        let completed = Outcome::Completed {
                            status: StatusCode::SWITCHING_PROTOCOLS,
                            bytes: traffic.apiserver_to_hub.load(Ordering::Relaxed),
                            kept: None,
                        };
                        (completed, format!("both directions ended{write_failure}"))
                    }
                    gone => {
                        let why = format!("{gone} while the apiserver was still sending{write_failure}");
                        (Outcome::Cancelled(gone), why)
                    }
                };
            }
        }
    }
}

async fn apiserver_to_hub<R: AsyncRead>(rd: R, out: &mpsc::Sender<AgentFrame>, sent: &AtomicU64) -> ReadSide {
    tokio::pin!(rd);
    let mut buf = BytesMut::with_capacity(MAX_BODY_CHUNK);
    loop {
        buf.reserve(MAX_BODY_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                return if out.send(end_frame(false)).await.is_ok() {
                    ReadSide::Done
                } else {
                    ReadSide::HubGone
                };
            }
            Ok(_) => {
                for chunk in ferry::frame::chunks(buf.split().freeze()) {
                    let len = chunk.len();
                    if out.send(body_frame(chunk)).await.is_err() {
                        return ReadSide::HubGone;
                    }
                    Traffic::add(sent, len);
                }
            }
            Err(e) => return ReadSide::Failed(e),
        }
    }
}

async fn hub_to_apiserver<W: AsyncWrite>(
    wr: W,
    inbound: &mut Streaming<HubFrame>,
    mut open: bool,
    traffic: &Traffic,
) -> WriteSide {
    tokio::pin!(wr);
    let mut failed = None;
    if !open {
        let _ = wr.shutdown().await;
    }
    loop {
        match next_event(inbound).await {
            HubEvent::Body(chunk) if open && failed.is_some() => {
                Traffic::add(&traffic.hub_discarded, chunk.len());
            }
            HubEvent::Body(chunk) if open => match wr.write_all(&chunk).await {
                Ok(()) => Traffic::add(&traffic.hub_to_apiserver, chunk.len()),
                Err(e) => {
                    Traffic::add(&traffic.hub_discarded, chunk.len());
                    failed = Some(e);
                }
            },
            HubEvent::End if open => {
                open = false;
                // Half-close: the apiserver sees EOF, its direction goes on.
                if failed.is_none()
                    && let Err(e) = wr.shutdown().await
                {
                    failed = Some(e);
                }
            }
            HubEvent::Body(_) | HubEvent::End => {
                return WriteSide { gone: Gone::Protocol("a frame after end"), failed };
            }
            HubEvent::Gone(gone) => return WriteSide { gone, failed },
        }
    }
}
