//! Upgraded connections (exec, attach, port-forward): after the agent's
//! `101`, bytes flow both ways between the caller's connection and its
//! request stream until both directions have ended.
//!
//! Every byte the agent sends reaches the caller. Whatever ends the agent's
//! direction (its `End`, an error frame, the stream breaking), the hub first
//! writes what it already has, then flushes and shuts its write half down
//! (TLS `close_notify`, then FIN), and then reads the caller's side to its
//! end before the socket is dropped. Dropping a socket whose input was not
//! read to the end makes the kernel answer with a reset, and a reset throws
//! away everything still queued for the caller: with a slow reader that is
//! megabytes (issue 14: `kubectl exec -i` output cut short when the apiserver
//! closed its side while kubectl was still reading).
//!
//! Each session ends with one log line, in the request's span, giving the
//! bytes moved each way and how each direction ended, so a truncated
//! session can be told from a complete one.
//!
//! Memory: one read buffer of [`MAX_BODY_CHUNK`] towards the agent, the
//! stream's frame channel, and a fixed scratch buffer while draining.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry::frame;
use ferry::limits::MAX_BODY_CHUNK;
use ferry::proto::v1::{AgentFrame, End, HubFrame, agent_frame, hub_frame};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::info;

use crate::gateway::{BoxError, close_stream};
use crate::idle::IdleTimer;
use crate::observe::{Meter, Relayed};
use crate::registry::Parked;

/// How long the hub keeps reading a caller that has not closed its side
/// after the agent's side ended without it (the agent failed, or closed its
/// stream while the caller was still sending). The caller's write half has
/// been shut down by then, so a well-behaved caller closes as soon as it
/// has read the rest; the bound keeps one that never does from holding the
/// connection.
const CALLER_LINGER: Duration = Duration::from_secs(60);

/// Scratch space for bytes read (and discarded) while draining a caller.
const DRAIN_CHUNK: usize = 16 * 1024;

/// Bytes moved, per direction, for the session's log line.
#[derive(Default)]
struct Traffic {
    /// Forwarded from the caller to the agent.
    caller_to_agent: AtomicU64,
    /// Written to the caller from the agent.
    agent_to_caller: AtomicU64,
    /// Read from the caller after the agent's side had ended (not forwarded).
    caller_discarded: AtomicU64,
}

impl Traffic {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How the caller's direction ended, when it ended without failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallerSide {
    /// The caller half-closed; `End` went to the agent.
    Eof,
    /// The request stream closed first: the caller's later bytes have
    /// nowhere to go.
    TunnelClosed,
}

/// Why a session did not end cleanly in both directions.
enum Failure {
    /// Reading from or writing to the caller failed: it went away.
    Caller(BoxError),
    /// The agent ended its direction with an error, or the stream broke.
    Tunnel(BoxError),
    /// Nothing moved either way for this long (`--upgrade-idle-timeout`).
    Idle(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Caller(e) => write!(f, "the caller's connection failed: {e}"),
            Failure::Tunnel(e) => write!(f, "the agent's side failed: {e}"),
            Failure::Idle(t) => write!(f, "closed after {t:?} without traffic (--upgrade-idle-timeout)"),
        }
    }
}

/// Where the pumps left the session.
struct Ended {
    /// The caller half-closed, so all it sent reached the agent.
    caller_eof: bool,
    /// The agent ended its side in order before anything failed.
    cluster_ended: bool,
    failure: Option<Failure>,
}

impl Ended {
    /// The caller may still be sending while its write half is shut down:
    /// read it to its end before dropping the socket.
    fn must_drain(&self) -> bool {
        !self.caller_eof && !matches!(self.failure, Some(Failure::Caller(_) | Failure::Idle(_)))
    }
}

/// Relays an upgraded connection until both directions have ended (or one
/// fails), then closes the request stream in order and logs the session.
pub(crate) async fn relay(
    on_upgrade: OnUpgrade,
    parked: Parked,
    idle_timeout: Option<Duration>,
    meter: &Meter,
) -> Relayed {
    let started = Instant::now();
    let Parked { tx, mut rx, .. } = parked;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            info!(error = %e, "upgraded connection never started: the caller's upgrade failed");
            close_stream(tx, rx, true).await;
            return Relayed {
                failure: Some(format!("the caller's upgrade failed: {e}")),
                ..Default::default()
            };
        }
    };
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
    let traffic = Traffic::default();
    let timer = IdleTimer::new();
    let touch = || timer.touch();
    let idle = timer.expired(idle_timeout);
    // Caller to agent: ends at the caller's EOF (sent on as `End`).
    let up = async {
        // Read straight into the frame's buffer: no copy per chunk.
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(MAX_BODY_CHUNK);
            let n = tokio::select! {
                n = rd.read_buf(&mut buf) => n.map_err(|e| Failure::Caller(e.into()))?,
                () = tx.closed() => return Ok(CallerSide::TunnelClosed),
            };
            touch();
            if n == 0 {
                let _ = tx.send(Ok(HubFrame { frame: Some(hub_frame::Frame::End(End::default())) })).await;
                return Ok(CallerSide::Eof);
            }
            for chunk in frame::chunks(buf.split().freeze()) {
                let len = chunk.len();
                let body = Ok(HubFrame { frame: Some(hub_frame::Frame::Body(chunk)) });
                if meter.flow.send(&tx, body).await.is_err() {
                    return Ok(CallerSide::TunnelClosed);
                }
                Traffic::add(&traffic.caller_to_agent, len);
                meter.to_cluster.inc_by(len as u64);
            }
        }
    };
    // Agent to caller: ends at the agent's `End` or failure; either way the
    // caller gets every byte that came before, then the FIN.
    let down = async {
        let agent_end: Result<(), BoxError> = loop {
            let frame = match rx.message().await {
                Ok(Some(AgentFrame { frame: Some(f) })) => f,
                Ok(Some(AgentFrame { frame: None })) => break Err("the agent sent an empty frame".into()),
                Ok(None) => break Err("the agent closed the stream without ending it".into()),
                Err(status) => break Err(format!("the request stream failed: {}", status.message()).into()),
            };
            match frame {
                agent_frame::Frame::Body(b) => {
                    touch();
                    wr.write_all(&b).await.map_err(|e| Failure::Caller(e.into()))?;
                    Traffic::add(&traffic.agent_to_caller, b.len());
                    meter.to_caller.inc_by(b.len() as u64);
                }
                agent_frame::Frame::End(_) => break Ok(()),
                agent_frame::Frame::Error(e) => {
                    break Err(format!(
                        "agent: {}",
                        crate::tunnel::clean(&e.message, crate::gateway::MAX_AGENT_MESSAGE)
                    )
                    .into());
                }
                agent_frame::Frame::Head(_) => {
                    break Err("the agent broke the protocol on an upgraded stream".into());
                }
            }
        };
        wr.shutdown().await.map_err(|e| Failure::Caller(e.into()))?;
        agent_end.map_err(Failure::Tunnel)
    };
    // A direction that ends cleanly is a half-close: wait for the other. A
    // failure ends both at once (the agent then cancels its apiserver
    // connection), after the caller's write half was shut down in order.
    let both = async {
        tokio::pin!(up, down);
        tokio::select! {
            u = &mut up => match u {
                Ok(side) => {
                    let down = down.await;
                    Ended { caller_eof: side == CallerSide::Eof, cluster_ended: down.is_ok(), failure: down.err() }
                }
                Err(f) => Ended { caller_eof: false, cluster_ended: false, failure: Some(f) },
            },
            d = &mut down => match d {
                Ok(()) => match up.await {
                    Ok(side) => Ended { caller_eof: side == CallerSide::Eof, cluster_ended: true, failure: None },
                    Err(f) => Ended { caller_eof: false, cluster_ended: true, failure: Some(f) },
                },
                Err(f) => Ended { caller_eof: false, cluster_ended: false, failure: Some(f) },
            },
        }
    };
    let ended = tokio::select! {
        e = both => e,
        limit = idle => Ended { caller_eof: false, cluster_ended: false, failure: Some(Failure::Idle(limit)) },
    };

    let cancelled = ended.failure.is_some();
    let caller_closed = if ended.must_drain() {
        let ((), closed) = tokio::join!(close_stream(tx, rx, cancelled), drain(&mut rd, &traffic));
        closed
    } else {
        close_stream(tx, rx, cancelled).await;
        ended.caller_eof
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (up_bytes, down_bytes) = (load(&traffic.caller_to_agent), load(&traffic.agent_to_caller));
    let discarded = load(&traffic.caller_discarded);
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match &ended.failure {
        None => info!(
            caller_to_agent = up_bytes,
            agent_to_caller = down_bytes,
            caller_discarded = discarded,
            caller_closed,
            elapsed_ms,
            "upgraded connection closed: both directions ended"
        ),
        Some(failure) => info!(
            caller_to_agent = up_bytes,
            agent_to_caller = down_bytes,
            caller_discarded = discarded,
            caller_closed,
            elapsed_ms,
            error = %failure,
            "upgraded connection closed early"
        ),
    }
    // For the audit log, a session the cluster ended in order is complete
    // even if the caller then reset its connection rather than closing it
    // (kubectl's SPDY client does): the caller had every byte.
    let failure = match ended.failure {
        Some(Failure::Caller(_)) if ended.cluster_ended => None,
        f => f.map(|f| f.to_string()),
    };
    Relayed { to_cluster: up_bytes, to_caller: down_bytes, failure }
}

/// Reads and discards what the caller still sends until it closes (or
/// [`CALLER_LINGER`] passes); `true` when it closed. Dropping the socket
/// after that is a FIN, not a reset that would discard what the caller has
/// not read yet.
async fn drain<R: AsyncRead + Unpin>(rd: &mut R, traffic: &Traffic) -> bool {
    let mut scratch = vec![0u8; DRAIN_CHUNK];
    let to_end = async {
        loop {
            match rd.read(&mut scratch).await {
                Ok(0) => return true,
                Ok(n) => Traffic::add(&traffic.caller_discarded, n),
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(CALLER_LINGER, to_end).await.unwrap_or(false)
}
