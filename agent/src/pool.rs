//! The pool of parked request streams.
//!
//! Only the agent can open HTTP/2 streams on its connection, so it keeps a
//! few `Proxy` calls open and idle at the hub; the hub's first frame on one
//! is a request head. The moment a parked stream receives its head a
//! replacement is opened, so the pool stays full and no request waits for a
//! round trip. Each parked stream is a task that serves its request once
//! claimed; the pool owns every such task.
//!
//! A stream whose request finished cleanly in both directions goes back to
//! the pool (the agent's `End` says so, and the hub parks it again) while
//! fewer than the pool size plus [`MAX_EXTRA_PARKED`] are parked: sequential
//! and concurrent traffic then reuses streams instead of opening a gRPC call
//! (and its HTTP/2 stream, headers, credential check and tasks) per
//! request. The hub closes surplus streams that stay idle (it alone may, as
//! only it knows whether a head is on its way).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry::proto::v1::{ErrorCode, HubFrame, RequestHead, hub_frame};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::error::report;
use crate::hub::{CallAuth, HubClient};
use crate::proxy::{self, ProxyContext, RequestStream};

/// Most parked streams the hub can ask for beyond the pool size (through
/// `OpenStreams`): a bound on what a confused hub can make the agent hold.
pub const MAX_EXTRA_PARKED: usize = 256;

/// Largest pool size accepted from the hub's welcome.
pub const MAX_POOL_SIZE: usize = 1024;

/// How long a parked stream being closed waits for the hub to end it (the
/// hub ends an unclaimed stream as soon as the agent's side ends).
pub const PARKED_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// On shutdown, how long requests in flight may run before they are cut.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What every stream of a session shares.
pub(crate) struct SessionShared {
    /// Tunnel client over the session's connection.
    pub client: HubClient,
    /// Credential and session metadata for Proxy calls.
    pub auth: CallAuth,
    /// What requests run with.
    pub proxy: ProxyContext,
}

/// State shared between the pool and its stream tasks.
struct Shared {
    session: Arc<SessionShared>,
    /// Streams being opened or parked (not yet claimed by a request).
    parked: AtomicUsize,
    /// Most streams parked at once (pool size + [`MAX_EXTRA_PARKED`]).
    limit: usize,
    /// Woken whenever a parked stream is claimed.
    claimed: Notify,
    /// Cancelled when the hub refuses Proxy calls for this session.
    rejected: CancellationToken,
    rejection: OnceLock<tonic::Status>,
    /// Stops parked streams (no new requests).
    stop_parking: CancellationToken,
    /// Stops requests in flight.
    abort: CancellationToken,
}

/// The parked streams and the requests they turned into.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    target: usize,
}

impl Pool {
    /// An empty pool that keeps `target` streams parked once filled.
    pub fn new(session: Arc<SessionShared>, target: usize) -> Self {
        let target = target.min(MAX_POOL_SIZE);
        let shared = Arc::new(Shared {
            session,
            parked: AtomicUsize::new(0),
            limit: target + MAX_EXTRA_PARKED,
            claimed: Notify::new(),
            rejected: CancellationToken::new(),
            rejection: OnceLock::new(),
            stop_parking: CancellationToken::new(),
            abort: CancellationToken::new(),
        });
        Self { shared, tasks: JoinSet::new(), target }
    }

    /// Opens streams until `target` are parked.
    pub fn top_up(&mut self) {
        while self.shared.parked.load(Ordering::Acquire) < self.target {
            self.spawn_parked();
        }
    }

    /// Opens `count` extra streams at the hub's request (bounded); they are
    /// not replaced once claimed.
    pub fn open_extra(&mut self, count: u32) {
        let limit = self.shared.limit;
        let room = limit.saturating_sub(self.shared.parked.load(Ordering::Acquire));
        let n = usize::try_from(count).unwrap_or(usize::MAX).min(room);
        debug!(requested = count, opening = n, "hub asked for more parked streams");
        for _ in 0..n {
            self.spawn_parked();
        }
    }

    /// What the pool's tasks signal to the session.
    pub fn signals(&self) -> PoolSignals {
        PoolSignals { shared: self.shared.clone() }
    }

    /// Reaps one finished task (pending forever when there is none).
    pub async fn reap(&mut self) {
        match self.tasks.join_next().await {
            Some(result) => log_join(result),
            None => std::future::pending().await,
        }
    }

    /// Stops the pool. With `grace`, parked streams close first and requests
    /// in flight get [`SHUTDOWN_GRACE`] to finish; without, everything stops
    /// at once. Every task has ended when this returns.
    pub async fn shutdown(mut self, grace: bool) {
        self.shared.stop_parking.cancel();
        if grace {
            let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                while let Some(result) = self.tasks.join_next().await {
                    log_join(result);
                }
            })
            .await;
            if drained.is_err() {
                debug!(requests = self.tasks.len(), "cutting requests still in flight");
            }
        }
        self.shared.abort.cancel();
        let stopped = tokio::time::timeout(proxy::DRAIN_TIMEOUT, async {
            while let Some(result) = self.tasks.join_next().await {
                log_join(result);
            }
        })
        .await;
        if stopped.is_err() {
            self.tasks.shutdown().await;
        }
    }

    fn spawn_parked(&mut self) {
        self.shared.parked.fetch_add(1, Ordering::AcqRel);
        self.tasks.spawn(parked_stream(self.shared.clone()));
    }
}

/// Signals from the pool's tasks, watched by the session.
pub(crate) struct PoolSignals {
    shared: Arc<Shared>,
}

impl PoolSignals {
    /// Resolves when a parked stream was claimed (then call [`Pool::top_up`]).
    pub async fn claimed(&self) {
        self.shared.claimed.notified().await;
    }

    /// Resolves when the hub refused a Proxy call for this session.
    pub async fn rejected(&self) -> Option<tonic::Status> {
        self.shared.rejected.cancelled().await;
        self.shared.rejection.get().cloned()
    }
}

fn log_join(result: Result<(), JoinError>) {
    if let Err(e) = result
        && e.is_panic()
    {
        warn!(error = %e, "a request task panicked");
    }
}

/// Statuses on a Proxy call that mean the session itself is refused (bad
/// credential, unknown or expired session): retrying the call cannot help,
/// the session must be rebuilt.
fn rejects_session(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::FailedPrecondition
    )
}

/// A place in the pool reserved for a stream that finished its request.
/// Dropped without [`ParkSlot::keep`], the place is given back.
pub(crate) struct ParkSlot {
    shared: Arc<Shared>,
    kept: bool,
}

impl ParkSlot {
    /// Counts the stream as parked for good.
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for ParkSlot {
    fn drop(&mut self) {
        if !self.kept {
            self.shared.parked.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Shared {
    /// Reserves a place for a finished stream, unless the pool is stopping
    /// or already holds [`Shared::limit`] streams.
    fn reserve(self: &Arc<Self>) -> Option<ParkSlot> {
        if self.stop_parking.is_cancelled() {
            return None;
        }
        let limit = self.limit;
        self.parked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()?;
        Some(ParkSlot { shared: self.clone(), kept: false })
    }

    /// A parked stream was claimed or lost: one fewer parked, and the
    /// session tops the pool up.
    fn unpark(&self) {
        self.parked.fetch_sub(1, Ordering::AcqRel);
        self.claimed.notify_one();
    }
}

/// One parked stream: opens the call (retrying with backoff), waits for the
/// request head, then serves that request, and more requests after it while
/// the pool keeps the stream.
async fn parked_stream(shared: Arc<Shared>) {
    let Some((mut stream, mut head)) = open_parked(&shared).await else { return };
    loop {
        // Claimed: ask for a replacement before serving, so the pool stays full.
        shared.unpark();
        let keep = || shared.reserve();
        let Some((kept, slot)) =
            proxy::serve(stream, head, &shared.session.proxy, &shared.abort, &keep).await
        else {
            return;
        };
        slot.keep();
        stream = kept;
        let next = tokio::select! {
            m = stream.inbound.message() => m,
            () = shared.stop_parking.cancelled() => {
                shared.unpark();
                stream.close(PARKED_CLOSE_TIMEOUT).await;
                return;
            }
        };
        head = match next {
            Ok(Some(HubFrame { frame: Some(hub_frame::Frame::Head(head)) })) => *head,
            other => {
                shared.unpark();
                match other {
                    // The hub's caller went away just as the response ended:
                    // the hub closes the stream in order; so does the agent.
                    Ok(Some(HubFrame { frame: Some(hub_frame::Frame::Error(e)) })) => {
                        debug!(message = %e.message, "the hub closed a reused stream with an error frame");
                        stream.finish().await;
                    }
                    Ok(Some(_)) => {
                        warn!("the hub sent a frame other than a request head on a reused stream");
                        proxy::send_error(&stream.out, ErrorCode::Protocol, "expected a request head").await;
                        stream.finish().await;
                    }
                    Ok(None) => debug!("the hub closed a reused stream"),
                    Err(status) if rejects_session(&status) => reject(&shared, status),
                    Err(status) => debug!(error = %report(&status), "reused stream failed"),
                }
                return;
            }
        };
    }
}

/// Opens a call and waits for its first request head, retrying with
/// backoff; `None` when the pool stops parking, the session is refused or
/// the hub closed the stream unclaimed.
async fn open_parked(shared: &Shared) -> Option<(RequestStream, RequestHead)> {
    let mut backoff = Backoff::reconnect();
    loop {
        let opened = tokio::select! {
            r = open(&shared.session) => r,
            () = shared.stop_parking.cancelled() => return None,
        };
        match opened {
            Ok(mut stream) => {
                let first = tokio::select! {
                    m = stream.inbound.message() => m,
                    () = shared.stop_parking.cancelled() => {
                        stream.close(PARKED_CLOSE_TIMEOUT).await;
                        return None;
                    }
                };
                match first {
                    Ok(Some(HubFrame { frame: Some(hub_frame::Frame::Head(head)) })) => {
                        return Some((stream, *head));
                    }
                    Ok(Some(_)) => {
                        warn!("the hub sent a frame other than a request head on a parked stream");
                        proxy::send_error(&stream.out, ErrorCode::Protocol, "expected a request head").await;
                        stream.finish().await;
                    }
                    Ok(None) => {
                        // The hub trimmed an idle surplus stream (or is
                        // dropping the session): not reopened unless the
                        // pool falls below its size.
                        debug!("the hub closed a parked stream");
                        shared.unpark();
                        return None;
                    }
                    Err(status) if rejects_session(&status) => {
                        reject(shared, status);
                        return None;
                    }
                    Err(status) => debug!(error = %report(&status), "parked stream failed"),
                }
            }
            Err(status) if rejects_session(&status) => {
                reject(shared, status);
                return None;
            }
            Err(status) => warn!(error = %report(&status), "cannot open a request stream"),
        }
        if !backoff.wait(&shared.stop_parking).await {
            return None;
        }
    }
}

/// Opens a Proxy call; resolves when the hub has answered with headers.
async fn open(session: &SessionShared) -> Result<RequestStream, tonic::Status> {
    let (out, outbound) = RequestStream::outbound();
    let mut request = tonic::Request::new(outbound);
    session.auth.apply(&mut request);
    let mut client = session.client.clone();
    let response = client.proxy(request).await?;
    Ok(RequestStream { out, inbound: response.into_inner() })
}

fn reject(shared: &Shared, status: tonic::Status) {
    warn!(code = ?status.code(), message = status.message(), "the hub refused a request stream for this session");
    let _ = shared.rejection.set(status);
    shared.rejected.cancel();
}
