//! Upgraded connections (exec, attach, port-forward): the request goes to the
//! apiserver over HTTP/1.1 with `Connection: Upgrade`; after a 101 the stream
//! carries raw bytes both ways.
//!
//! Frame mapping after the 101 head: `HubFrame.body` is written to the
//! apiserver socket, `HubFrame.end` shuts down its write half; bytes read from
//! the socket go out as `AgentFrame.body`, and its EOF as `AgentFrame.end`.
//! The two directions are pumped concurrently (a proxy that alternates
//! between them can deadlock when both peers write at once).

use std::sync::atomic::AtomicBool;

use bytes::BytesMut;
use ferry::frame::{ProxiedRequest, response_head};
use ferry::limits::MAX_BODY_CHUNK;
use ferry::proto::v1::{AgentFrame, ErrorCode, HubFrame, agent_frame};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::warn;

use crate::error::report;
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

    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // Refused (403, 400, ...): an ordinary response.
        let hub_ended = AtomicBool::new(!hub_open);
        return tokio::select! {
            biased;
            () = abort.cancelled() => Outcome::Aborted,
            outcome = forward_response(response, out, || None) => outcome,
            gone = watch_hub(inbound, None, &hub_ended, out) => Outcome::Cancelled(gone),
        };
    }

    let head =
        AgentFrame { frame: Some(agent_frame::Frame::Head(response_head(status, response.headers()))) };
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
    pump(io, inbound, out, hub_open, abort).await
}

/// Result of copying apiserver bytes to the hub.
enum ReadSide {
    /// EOF reached and `End` sent.
    Done(u64),
    /// The hub's outbound side closed.
    HubGone,
    /// Reading from the apiserver failed.
    Failed(std::io::Error),
}

/// Result of copying hub bytes to the apiserver (it only returns when that
/// direction cannot go on).
enum WriteSide {
    /// The hub's side of the stream is over.
    Gone(Gone),
    /// Writing to the apiserver failed.
    Failed(std::io::Error),
}

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
    let (rd, wr) = tokio::io::split(io);
    let reads = apiserver_to_hub(rd, out);
    let writes = hub_to_apiserver(wr, inbound, hub_open);
    tokio::pin!(reads, writes);
    let mut reading = true;
    let mut sent = 0u64;
    loop {
        tokio::select! {
            biased;
            () = abort.cancelled() => return Outcome::Aborted,
            r = &mut reads, if reading => match r {
                ReadSide::Done(bytes) => {
                    reading = false;
                    sent = bytes;
                }
                ReadSide::HubGone => return Outcome::HubGone,
                ReadSide::Failed(e) => {
                    warn!(error = %e, "reading from the upgraded apiserver connection failed");
                    send_error(out, ErrorCode::UpstreamBroken, format!("apiserver connection broke: {e}")).await;
                    return Outcome::Failed;
                }
            },
            w = &mut writes => return match w {
                // Both directions are done: the hub closing now is the normal end.
                WriteSide::Gone(Gone::Closed) if !reading => {
                    Outcome::Completed { status: StatusCode::SWITCHING_PROTOCOLS, bytes: sent, kept: None }
                }
                WriteSide::Gone(gone) => Outcome::Cancelled(gone),
                // The apiserver closed after its EOF; nothing left to deliver.
                WriteSide::Failed(_) if !reading => {
                    Outcome::Completed { status: StatusCode::SWITCHING_PROTOCOLS, bytes: sent, kept: None }
                }
                WriteSide::Failed(e) => {
                    warn!(error = %e, "writing to the upgraded apiserver connection failed");
                    send_error(out, ErrorCode::UpstreamBroken, format!("apiserver connection broke: {e}")).await;
                    Outcome::Failed
                }
            },
        }
    }
}

async fn apiserver_to_hub<R: AsyncRead>(rd: R, out: &mpsc::Sender<AgentFrame>) -> ReadSide {
    tokio::pin!(rd);
    let mut buf = BytesMut::with_capacity(MAX_BODY_CHUNK);
    let mut total = 0u64;
    loop {
        buf.reserve(MAX_BODY_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                return if out.send(end_frame(false)).await.is_ok() {
                    ReadSide::Done(total)
                } else {
                    ReadSide::HubGone
                };
            }
            Ok(n) => {
                total += n as u64;
                for chunk in ferry::frame::chunks(buf.split().freeze()) {
                    if out.send(body_frame(chunk)).await.is_err() {
                        return ReadSide::HubGone;
                    }
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
) -> WriteSide {
    tokio::pin!(wr);
    if !open {
        let _ = wr.shutdown().await;
    }
    loop {
        match next_event(inbound).await {
            HubEvent::Body(chunk) if open => {
                if let Err(e) = wr.write_all(&chunk).await {
                    return WriteSide::Failed(e);
                }
            }
            HubEvent::End if open => {
                open = false;
                // Half-close: the apiserver sees EOF, its direction goes on.
                if let Err(e) = wr.shutdown().await {
                    return WriteSide::Failed(e);
                }
            }
            HubEvent::Body(_) | HubEvent::End => return WriteSide::Gone(Gone::Protocol("a frame after end")),
            HubEvent::Gone(gone) => return WriteSide::Gone(gone),
        }
    }
}
