//! The server side of one SPDY/3.1 connection: a reader task that accepts
//! the client's streams (replying to each at once, as the kubelet's
//! `spdystream` does) and routes their data, and a writer task that owns
//! the socket's write half and the header compressor.
//!
//! Flow control: this side grants the client receive window as the
//! application consumes data (per stream and for the connection), so a
//! client that honours SPDY/3.1 windows never sends more than
//! [`RECV_WINDOW`] per stream unread. Sending honours the client's windows
//! once the client shows it takes part in flow control (a WINDOW_UPDATE or
//! a SETTINGS_INITIAL_WINDOW_SIZE): Go's `spdystream`, which `kubectl` uses,
//! never sends either and ignores windows, relying on TCP backpressure, so
//! enforcing the 64 KiB default against it would stall every transfer. Memory
//! stays bounded either way: inbound data waits in a bounded queue per
//! stream and the reader stops reading the socket while it is full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::frame::{
    self, Frame, FrameError, HeaderDecoder, HeaderEncoder, Headers, SETTINGS_INITIAL_WINDOW_SIZE, StreamId,
    rst,
};

/// The SPDY/3.1 default window, per stream and for the connection.
pub(crate) const DEFAULT_WINDOW: i64 = 64 * 1024;
/// The receive window this side keeps open per stream (the default).
pub(crate) const RECV_WINDOW: usize = 64 * 1024;
/// Consumed bytes are granted back once this many have accumulated.
const WINDOW_UPDATE_THRESHOLD: usize = RECV_WINDOW / 4;
/// The largest DATA payload this side sends.
pub(crate) const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Inbound DATA payloads queued per stream before the reader waits.
const INBOUND_CHUNKS: usize = 16;
/// Frames queued for the writer before senders wait.
const OUTGOING_FRAMES: usize = 64;
/// New streams queued for the application before the reader waits.
const ACCEPT_QUEUE: usize = 16;
/// Read buffer of the socket's read half.
const READ_BUFFER: usize = 64 * 1024;

/// Why a stream operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamError {
    /// The peer reset the stream.
    #[error("the stream was reset")]
    Reset,
    /// The connection is closed (or closing).
    #[error("the connection is closed")]
    Closed,
}

/// Something for the writer task.
enum Outgoing {
    SynReply {
        id: StreamId,
    },
    Data {
        id: StreamId,
        fin: bool,
        data: Bytes,
    },
    Rst {
        id: StreamId,
        status: u32,
    },
    WindowUpdate {
        id: StreamId,
        delta: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: StreamId,
    },
    /// Flush, shut the write half down and stop.
    Shutdown,
}

#[derive(Debug)]
struct StreamState {
    inbound: Option<mpsc::Sender<Bytes>>,
    send_window: i64,
    /// This side sent FIN.
    local_done: bool,
    /// The peer sent FIN.
    remote_done: bool,
}

#[derive(Debug)]
struct ConnState {
    streams: HashMap<StreamId, StreamState>,
    /// Whether the peer takes part in flow control (see the module docs).
    flow_control: bool,
    initial_send_window: i64,
    session_send_window: i64,
    last_accepted: StreamId,
}

struct Shared {
    state: Mutex<ConnState>,
    /// Woken on every window change, reset and close.
    changed: Notify,
    /// Cancelled when the reader ends: the peer closed or broke the
    /// connection (or sent garbage).
    peer_gone: CancellationToken,
    /// Cancelled when the writer can no longer write.
    write_closed: CancellationToken,
    /// Consumed bytes not yet granted back at the connection level.
    session_unacked: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A server-side SPDY connection. Dropping it stops its tasks.
pub(crate) struct SpdyConn {
    accept: mpsc::Receiver<SpdyStream>,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl SpdyConn {
    /// Starts serving SPDY on a connection's two halves.
    pub fn start<R, W>(read: R, write: W) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(ConnState {
                streams: HashMap::new(),
                flow_control: false,
                initial_send_window: DEFAULT_WINDOW,
                session_send_window: DEFAULT_WINDOW,
                last_accepted: StreamId(0),
            }),
            changed: Notify::new(),
            peer_gone: CancellationToken::new(),
            write_closed: CancellationToken::new(),
            session_unacked: AtomicUsize::new(0),
        });
        let (out, out_rx) = mpsc::channel(OUTGOING_FRAMES);
        let (accept_tx, accept) = mpsc::channel(ACCEPT_QUEUE);
        let mut tasks = JoinSet::new();
        tasks.spawn(writer(write, out_rx, Arc::clone(&shared)));
        tasks.spawn(reader(read, accept_tx, out.clone(), Arc::clone(&shared)));
        Self { accept, out, shared, tasks }
    }

    /// The next stream the client opened; `None` once the peer is gone.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.accept.recv().await
    }

    /// Resolves when the peer closed (or broke) the connection.
    pub fn peer_gone(&self) -> CancellationToken {
        self.shared.peer_gone.clone()
    }

    /// Sends GOAWAY, shuts the write half down, and waits up to `linger`
    /// for the peer to close its side.
    pub async fn close(mut self, linger: Duration) {
        let last_good = self.shared.lock().last_accepted;
        // The writer may already be gone (broken connection): nothing to do.
        let _ = self.out.send(Outgoing::GoAway { last_good }).await;
        let _ = self.out.send(Outgoing::Shutdown).await;
        let peer_gone = self.shared.peer_gone.clone();
        let drain = async {
            // Keep accepting (and dropping) late streams until the peer goes.
            while self.accept.recv().await.is_some() {}
            peer_gone.cancelled().await;
        };
        if tokio::time::timeout(linger, drain).await.is_err() {
            tracing::debug!("SPDY peer did not close the connection in time");
        }
        self.tasks.shutdown().await;
    }
}

/// One stream the client opened.
pub(crate) struct SpdyStream {
    id: StreamId,
    headers: Headers,
    /// Receiving half.
    pub recv: RecvHalf,
    /// Sending half.
    pub send: SendHalf,
}

impl SpdyStream {
    /// The stream id.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// A header's first value (name lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Splits the stream into its halves.
    pub fn split(self) -> (RecvHalf, SendHalf) {
        (self.recv, self.send)
    }
}

/// Data from the client on one stream.
pub(crate) struct RecvHalf {
    id: StreamId,
    rx: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    unacked: usize,
}

impl RecvHalf {
    /// The next chunk; `None` at the client's FIN, a reset, or the end of
    /// the connection. Consumed bytes are granted back to the client.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let chunk = self.rx.recv().await?;
        self.consumed(chunk.len()).await;
        Some(chunk)
    }

    async fn consumed(&mut self, n: usize) {
        self.unacked += n;
        if self.unacked >= WINDOW_UPDATE_THRESHOLD {
            let delta = u32::try_from(std::mem::take(&mut self.unacked)).unwrap_or(u32::MAX);
            // A closed writer means the connection is ending: nothing to grant.
            let _ = self.out.send(Outgoing::WindowUpdate { id: self.id, delta }).await;
        }
        grant_session(&self.shared, &self.out, n).await;
    }
}

async fn grant_session(shared: &Shared, out: &mpsc::Sender<Outgoing>, n: usize) {
    let total = shared.session_unacked.fetch_add(n, Ordering::AcqRel) + n;
    if total >= WINDOW_UPDATE_THRESHOLD {
        let taken = shared.session_unacked.swap(0, Ordering::AcqRel);
        if taken > 0 {
            let delta = u32::try_from(taken).unwrap_or(u32::MAX);
            let _ = out.send(Outgoing::WindowUpdate { id: StreamId(0), delta }).await;
        }
    }
}

/// Data to the client on one stream.
pub(crate) struct SendHalf {
    id: StreamId,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    fin_sent: bool,
}

impl SendHalf {
    /// Sends data, in chunks the windows allow; waits while they are shut.
    pub async fn send(&mut self, mut data: Bytes) -> Result<(), StreamError> {
        if self.fin_sent {
            return Err(StreamError::Closed);
        }
        while !data.is_empty() {
            let n = self.reserve(data.len().min(MAX_DATA_CHUNK)).await?;
            let chunk = data.split_to(n);
            self.out
                .send(Outgoing::Data { id: self.id, fin: false, data: chunk })
                .await
                .map_err(|_| StreamError::Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        if std::mem::replace(&mut self.fin_sent, true) {
            return Ok(());
        }
        {
            let mut state = self.shared.lock();
            match state.streams.get_mut(&self.id) {
                Some(s) if s.remote_done => {
                    state.streams.remove(&self.id);
                }
                Some(s) => s.local_done = true,
                // Reset by the peer: a FIN would be meaningless.
                None => return Err(StreamError::Reset),
            }
        }
        self.out
            .send(Outgoing::Data { id: self.id, fin: true, data: Bytes::new() })
            .await
            .map_err(|_| StreamError::Closed)
    }

    /// Resets the stream.
    pub async fn reset(&mut self) {
        self.fin_sent = true;
        let _ = self.out.send(Outgoing::Rst { id: self.id, status: rst::CANCEL }).await;
    }

    /// Waits for send window and takes up to `want` bytes of it.
    async fn reserve(&self, want: usize) -> Result<usize, StreamError> {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                if self.shared.write_closed.is_cancelled() {
                    return Err(StreamError::Closed);
                }
                let mut state = self.shared.lock();
                let state = &mut *state;
                let enforce = state.flow_control;
                let Some(stream) = state.streams.get_mut(&self.id) else {
                    // Reset by the peer (a finished stream never sends).
                    return Err(StreamError::Reset);
                };
                let want_i = i64::try_from(want).unwrap_or(i64::MAX);
                let n = if enforce {
                    want_i.min(stream.send_window).min(state.session_send_window)
                } else {
                    want_i
                };
                if n > 0 {
                    stream.send_window -= n;
                    state.session_send_window -= n;
                    return Ok(usize::try_from(n).unwrap_or(0));
                }
            }
            notified.await;
        }
    }
}

async fn writer<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Outgoing>, shared: Arc<Shared>) {
    let mut encoder = HeaderEncoder::new();
    let mut buf = BytesMut::with_capacity(MAX_DATA_CHUNK + 64);
    let result: Result<(), String> = async {
        'outer: while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            // Batch what is already queued into one write.
            while let Some(item) = next.take() {
                match item {
                    Outgoing::Shutdown => {
                        write_out(&mut w, &mut buf).await?;
                        w.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
                        break 'outer;
                    }
                    other => encode(other, &mut buf, &mut encoder).map_err(|e| e.to_string())?,
                }
                if buf.len() < 4 * MAX_DATA_CHUNK {
                    next = rx.try_recv().ok();
                }
            }
            write_out(&mut w, &mut buf).await?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "SPDY writer stopped");
    }
    shared.write_closed.cancel();
    shared.changed.notify_waiters();
}

async fn write_out<W: AsyncWrite + Unpin>(w: &mut W, buf: &mut BytesMut) -> Result<(), String> {
    if !buf.is_empty() {
        w.write_all(buf).await.map_err(|e| format!("write: {e}"))?;
        buf.clear();
    }
    w.flush().await.map_err(|e| format!("flush: {e}"))
}

fn encode(item: Outgoing, buf: &mut BytesMut, encoder: &mut HeaderEncoder) -> Result<(), FrameError> {
    match item {
        Outgoing::SynReply { id } => {
            let block = encoder.encode(&[])?;
            frame::put_syn_reply(buf, id, false, &block);
        }
        Outgoing::Data { id, fin, data } => {
            frame::put_data_head(buf, id, fin, data.len());
            buf.extend_from_slice(&data);
        }
        Outgoing::Rst { id, status } => frame::put_rst_stream(buf, id, status),
        Outgoing::WindowUpdate { id, delta } => frame::put_window_update(buf, id, delta),
        Outgoing::Ping { id } => frame::put_ping(buf, id),
        Outgoing::GoAway { last_good } => frame::put_goaway(buf, last_good, 0),
        Outgoing::Shutdown => {}
    }
    Ok(())
}

async fn reader<R: AsyncRead + Unpin>(
    read: R,
    accept: mpsc::Sender<SpdyStream>,
    out: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut r = BufReader::with_capacity(READ_BUFFER, read);
    let mut decoder = HeaderDecoder::new();
    let mut accepting = true;
    loop {
        let frame = match frame::read_frame(&mut r, &mut decoder).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "SPDY connection read failed");
                break;
            }
        };
        match frame {
            Frame::SynStream { id, flags, headers } => {
                if !accepting || id.0 % 2 == 0 {
                    let _ = out.send(Outgoing::Rst { id, status: rst::REFUSED_STREAM }).await;
                    continue;
                }
                let (tx, rx) = mpsc::channel(INBOUND_CHUNKS);
                let fin = flags & frame::FLAG_FIN != 0;
                let fresh = {
                    let mut state = shared.lock();
                    let send_window = state.initial_send_window;
                    let fresh = !state.streams.contains_key(&id) && id > state.last_accepted;
                    if fresh {
                        state.last_accepted = id;
                        let inbound = (!fin).then_some(tx);
                        let s = StreamState { inbound, send_window, local_done: false, remote_done: fin };
                        state.streams.insert(id, s);
                    }
                    fresh
                };
                if !fresh {
                    let _ = out.send(Outgoing::Rst { id, status: rst::PROTOCOL_ERROR }).await;
                    continue;
                }
                if out.send(Outgoing::SynReply { id }).await.is_err() {
                    break;
                }
                let stream = SpdyStream {
                    id,
                    headers,
                    recv: RecvHalf { id, rx, out: out.clone(), shared: Arc::clone(&shared), unacked: 0 },
                    send: SendHalf { id, out: out.clone(), shared: Arc::clone(&shared), fin_sent: false },
                };
                if accept.send(stream).await.is_err() {
                    // Nobody accepts any more: refuse further streams.
                    accepting = false;
                }
            }
            Frame::Data { id, flags, data } => {
                let len = data.len();
                let inbound = {
                    let mut state = shared.lock();
                    let fin = flags & frame::FLAG_FIN != 0;
                    let (inbound, done) = match state.streams.get_mut(&id) {
                        Some(s) if fin => {
                            s.remote_done = true;
                            (s.inbound.take(), s.local_done)
                        }
                        Some(s) => (s.inbound.clone(), false),
                        None => (None, false),
                    };
                    if done {
                        state.streams.remove(&id);
                    }
                    inbound
                };
                let delivered = match inbound {
                    Some(tx) if !data.is_empty() => tx.send(data).await.is_ok(),
                    _ => false,
                };
                if !delivered && len > 0 {
                    // Nobody will consume it: give the connection window back.
                    grant_session(&shared, &out, len).await;
                }
            }
            Frame::RstStream { id, .. } => {
                // Senders blocked on this stream see it gone and fail.
                shared.lock().streams.remove(&id);
                shared.changed.notify_waiters();
            }
            Frame::Settings { entries } => {
                let mut state = shared.lock();
                for (key, value) in entries {
                    if key == SETTINGS_INITIAL_WINDOW_SIZE {
                        let new = i64::from(value);
                        let diff = new - state.initial_send_window;
                        state.initial_send_window = new;
                        state.flow_control = true;
                        for s in state.streams.values_mut() {
                            s.send_window += diff;
                        }
                    }
                }
                drop(state);
                shared.changed.notify_waiters();
            }
            Frame::WindowUpdate { id, delta } => {
                let mut state = shared.lock();
                state.flow_control = true;
                if id.0 == 0 {
                    state.session_send_window += i64::from(delta);
                } else if let Some(s) = state.streams.get_mut(&id) {
                    s.send_window += i64::from(delta);
                }
                drop(state);
                shared.changed.notify_waiters();
            }
            Frame::Ping { id } => {
                // Odd ids come from the client: echo them. Even ones would be
                // answers to pings this side never sends.
                if id % 2 == 1 && out.send(Outgoing::Ping { id }).await.is_err() {
                    break;
                }
            }
            Frame::GoAway { .. } => accepting = false,
            Frame::SynReply { id, .. } | Frame::Headers { id, .. } => {
                if !shared.lock().streams.contains_key(&id) {
                    let _ = out.send(Outgoing::Rst { id, status: rst::INVALID_STREAM }).await;
                }
            }
            Frame::Unknown { kind } => tracing::debug!(kind, "ignoring unknown SPDY control frame"),
        }
    }
    // Mark the peer gone before ending the streams' input, so whoever sees
    // an input end can tell a lost connection from a FIN.
    shared.peer_gone.cancel();
    {
        let mut state = shared.lock();
        for s in state.streams.values_mut() {
            s.inbound = None;
        }
    }
    shared.changed.notify_waiters();
    drop(accept);
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::apiserver::spdy::frame::{
        HeaderDecoder, HeaderEncoder, put_data_head, put_syn_stream, read_frame,
    };

    struct Client {
        io: DuplexStream,
        enc: HeaderEncoder,
        dec: HeaderDecoder,
    }

    impl Client {
        async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
            let mut buf = BytesMut::new();
            let block = self.enc.encode(headers).expect("encode");
            put_syn_stream(&mut buf, StreamId(id), false, &block);
            self.io.write_all(&buf).await.expect("write");
        }

        async fn data(&mut self, id: u32, fin: bool, data: &[u8]) {
            let mut buf = BytesMut::new();
            put_data_head(&mut buf, StreamId(id), fin, data.len());
            buf.put_slice(data);
            self.io.write_all(&buf).await.expect("write");
        }

        async fn frame(&mut self) -> Option<Frame> {
            read_frame(&mut self.io, &mut self.dec).await.expect("frame")
        }
    }

    fn pair() -> (SpdyConn, Client) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(a);
        (SpdyConn::start(r, w), Client { io: b, enc: HeaderEncoder::new(), dec: HeaderDecoder::new() })
    }

    #[tokio::test]
    async fn streams_are_replied_to_and_carry_data_both_ways() {
        let (mut conn, mut client) = pair();
        client.open(1, &[("streamtype", "stdin")]).await;
        let stream = conn.accept().await.expect("stream");
        assert_eq!(stream.header("streamtype"), Some("stdin"));
        assert_eq!(client.frame().await, Some(Frame::SynReply { id: StreamId(1), flags: 0 }));
        client.data(1, false, b"hello").await;
        client.data(1, true, b" world").await;
        let (mut recv, mut send) = stream.split();
        assert_eq!(recv.recv().await.as_deref(), Some(&b"hello"[..]));
        assert_eq!(recv.recv().await.as_deref(), Some(&b" world"[..]));
        assert_eq!(recv.recv().await, None);
        send.send(Bytes::from_static(b"back")).await.expect("send");
        send.finish().await.expect("fin");
        assert_eq!(
            client.frame().await,
            Some(Frame::Data { id: StreamId(1), flags: 0, data: Bytes::from_static(b"back") })
        );
        assert_eq!(client.frame().await, Some(Frame::Data { id: StreamId(1), flags: 1, data: Bytes::new() }));
        let mut ping = BytesMut::new();
        frame::put_ping(&mut ping, 5);
        client.io.write_all(&ping).await.expect("ping");
        assert_eq!(client.frame().await, Some(Frame::Ping { id: 5 }));
        drop(client);
        conn.peer_gone().cancelled().await;
    }

    #[tokio::test]
    async fn windows_are_granted_back_and_honoured_once_the_peer_uses_them() {
        let (mut conn, mut client) = pair();
        // The client opts in to flow control with a zero initial window.
        let mut buf = BytesMut::new();
        frame::put_settings(&mut buf, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
        client.io.write_all(&buf).await.expect("settings");
        client.open(1, &[]).await;
        let stream = conn.accept().await.expect("stream");
        let (mut recv, mut send) = stream.split();
        assert!(matches!(client.frame().await, Some(Frame::SynReply { .. })));
        client.data(1, false, &[7u8; 20_000]).await;
        assert_eq!(recv.recv().await.map(|b| b.len()), Some(20_000));
        // 20,000 bytes consumed: above the threshold, so both windows grow.
        let mut grants = Vec::new();
        while grants.len() < 2 {
            match client.frame().await {
                Some(Frame::WindowUpdate { id, delta }) => grants.push((id.0, delta)),
                other => panic!("expected a window update, got {other:?}"),
            }
        }
        grants.sort_unstable();
        assert_eq!(grants, [(0, 20_000), (1, 20_000)]);
        let sending = tokio::spawn(async move {
            send.send(Bytes::from(vec![1u8; 10])).await.expect("send");
            send
        });
        let mut buf = BytesMut::new();
        frame::put_window_update(&mut buf, StreamId(1), 4);
        client.io.write_all(&buf).await.expect("update");
        assert_eq!(
            client.frame().await,
            Some(Frame::Data { id: StreamId(1), flags: 0, data: Bytes::from(vec![1u8; 4]) })
        );
        let mut buf = BytesMut::new();
        frame::put_window_update(&mut buf, StreamId(1), 100);
        client.io.write_all(&buf).await.expect("update");
        assert_eq!(
            client.frame().await,
            Some(Frame::Data { id: StreamId(1), flags: 0, data: Bytes::from(vec![1u8; 6]) })
        );
        sending.await.expect("join");
        let mut rest = Vec::new();
        drop(conn);
        client.io.read_to_end(&mut rest).await.expect("eof");
    }
}
