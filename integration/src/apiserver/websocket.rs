//! Streaming over WebSocket, as kube-apiserver serves it to kubectl 1.29+:
//!
//! - `exec`/`attach` with the channel protocols (`v5.channel.k8s.io` ...
//!   `channel.k8s.io`, and the `base64` variants): every message starts
//!   with its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize); in
//!   v5, `[255, channel]` closes a channel (how stdin EOF arrives).
//! - `port-forward` with `SPDY/3.1+portforward.k8s.io`: SPDY frames
//!   tunnelled in binary messages, as one byte stream.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::commands::{self, Container, Program};
use super::remotecommand::{Ending, Options, Version, exit_message};
use super::stdio::{Input, Output, Stdio, TermSize};

/// The exec/attach subprotocols: `(name, version, base64)`, in the order
/// this server prefers them.
pub(crate) const CHANNEL_PROTOCOLS: [(&str, Version, bool); 7] = [
    ("v5.channel.k8s.io", Version::V5, false),
    ("v4.channel.k8s.io", Version::V4, false),
    ("v3.channel.k8s.io", Version::V3, false),
    ("v2.channel.k8s.io", Version::V2, false),
    ("channel.k8s.io", Version::V1, false),
    ("v4.base64.channel.k8s.io", Version::V4, true),
    ("base64.channel.k8s.io", Version::V1, true),
];

/// The port-forward subprotocol: SPDY tunnelled in WebSocket.
pub(crate) const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` half-closes a channel.
const CLOSE: u8 = 255;

/// Chunks of stdin queued for the command.
const STDIN_QUEUE: usize = 16;
/// Outgoing messages queued for the socket.
const OUTGOING_QUEUE: usize = 16;
/// Chunks one output (stdout or stderr) queues before its writer waits.
const OUTPUT_QUEUE: usize = 1;
/// The tunnel's in-memory pipe between WebSocket and SPDY.
const TUNNEL_BUFFER: usize = 256 * 1024;
/// Largest chunk of tunnelled bytes per message.
const TUNNEL_CHUNK: usize = 32 * 1024;
/// Scratch space for what a client still sends while its socket closes.
const DRAIN_CHUNK: usize = 16 * 1024;
/// How long a socket whose client already sent its close frame is read
/// for its end (its TCP close, or a tunnel's TLS `close_notify`) before it
/// is dropped: a client may also wait for the server to close first.
const CLOSED_DRAIN: Duration = Duration::from_secs(1);
/// The payload of the ping an exec session sends before anything else.
///
/// kubectl 1.30 to 1.33 starts its WebSocket reader before it has created
/// its streams, and drops a message for a stream it has not created yet
/// ("Unknown stream id 1, discarding message"; client-go issue 131189,
/// fixed in 1.34). With a command that writes at once (`cat FILE`, the
/// `tar cf -` of `kubectl cp`) a loaded machine loses output that way, with
/// or without a tunnel in between. So a session sends nothing until the
/// client has shown its streams exist: its first message (stdin, the
/// stdin close, a resize), which kubectl only sends once it has created
/// them; or, for a client that sends nothing (stdout only), the pong to
/// this ping (its reader is running) and then [`STREAM_CREATION_GRACE`].
pub(crate) const READY_PING: &[u8] = b"test-apiserver: streams ready?";
/// After the pong, how long a v5 session that has heard nothing else from
/// the client waits before its first message. kubectl creates its streams
/// in microseconds once it runs, but on a loaded machine that goroutine can
/// wait several scheduler slices; this covers those waits, as a kubelet's
/// process start would.
const STREAM_CREATION_GRACE: Duration = Duration::from_millis(50);
/// How long a session waits for any of that before sending anyway (a
/// client that neither sends nor answers pings).
const PONG_WAIT: Duration = Duration::from_secs(2);

/// The first protocol the client offers (in its order) that `supported`
/// has, the way kube-apiserver's WebSocket handshake picks one.
pub(crate) fn negotiate<T: Copy>(
    offered: &[&str],
    supported: &[(&'static str, T)],
) -> Option<(&'static str, T)> {
    offered.iter().find_map(|o| supported.iter().find(|(name, _)| name == o).copied())
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
}

fn encode(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::Text(text.into())
    } else {
        let mut b = BytesMut::with_capacity(1 + data.len());
        b.extend_from_slice(&[channel]);
        b.extend_from_slice(data);
        Message::Binary(b.freeze())
    }
}

/// A client message as `(channel, payload)`; `None` for what carries no
/// channel data.
fn decode(msg: Message, base64: bool) -> Option<(u8, Bytes)> {
    match msg {
        Message::Binary(b) if !base64 && !b.is_empty() => Some((b[0], b.slice(1..))),
        Message::Text(t) if base64 && !t.is_empty() => {
            let bytes = t.as_bytes();
            if bytes[0] == CLOSE {
                return Some((CLOSE, Bytes::copy_from_slice(&bytes[1..])));
            }
            let channel = bytes[0].wrapping_sub(b'0');
            let data = base64::engine::general_purpose::STANDARD.decode(&bytes[1..]).ok()?;
            Some((channel, Bytes::from(data)))
        }
        _ => None,
    }
}

/// How an exec or attach WebSocket session talks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Session {
    /// The channel protocol version.
    pub version: Version,
    /// Text messages with base64 payloads instead of binary ones.
    pub base64: bool,
    /// The streams the client asked for.
    pub opts: Options,
    /// How long to wait for the client's close frame at the end.
    pub linger: Duration,
}

/// Runs an exec or attach session on an upgraded WebSocket connection.
///
/// Ordering, as the kubelet keeps it and kubectl relies on: the exit status
/// goes out after all of the command's output; then a close frame (code
/// 1000). The server then waits (up to the session's linger) for the
/// client's close frame, which comes once the client has read everything,
/// and only then closes the socket in order (TLS `close_notify`, FIN, and
/// reading to EOF), so neither the TLS layer nor TCP can cut the end off.
///
/// Nothing is sent before the client has shown that its streams exist (see
/// [`READY_PING`]).
pub(crate) async fn serve_exec<S>(
    ws: WebSocketStream<S>,
    session: Session,
    program: Program,
    argv: &[String],
    container: &Container,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Session { version, base64, opts, linger } = session;
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(OUTGOING_QUEUE);
    let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
    let (resize_tx, resize_rx) = mpsc::channel::<TermSize>(STDIN_QUEUE);
    let (pong_tx, pong_rx) = oneshot::channel::<()>();
    let (spoke_tx, spoke_rx) = oneshot::channel::<()>();
    // Per-channel outputs funnel into the one writer.
    let output = |channel: u8| {
        let (tx, mut rx) = mpsc::channel::<Bytes>(OUTPUT_QUEUE);
        let out_tx = out_tx.clone();
        let forward = async move {
            while let Some(b) = rx.recv().await {
                if out_tx.send((channel, b)).await.is_err() {
                    break;
                }
            }
        };
        (Output::channel(tx), forward)
    };
    let (stdout, fwd_out) = if opts.stdout {
        let (o, f) = output(STDOUT);
        (o, Some(f))
    } else {
        (Output::discard(), None)
    };
    let (stderr, fwd_err) = if opts.tty {
        (stdout.clone(), None)
    } else if opts.stderr {
        let (o, f) = output(STDERR);
        (o, Some(f))
    } else {
        (Output::discard(), None)
    };
    // Each forwarder ends once its output's last clone is dropped.
    let forward = async {
        tokio::join!(
            async {
                if let Some(f) = fwd_out {
                    f.await;
                }
            },
            async {
                if let Some(f) = fwd_err {
                    f.await;
                }
            }
        )
    };
    let stdin = opts.stdin.then(|| Input::channel(stdin_rx));
    let stdin_bytes = stdin.as_ref().map(Input::counter).unwrap_or_default();
    let (stdout_bytes, stderr_bytes) =
        (stdout.counter(), if opts.tty { Arc::default() } else { stderr.counter() });
    let stdio = Stdio {
        stdin,
        stdout,
        stderr,
        resize: opts.tty.then(|| super::stdio::Resizes::Channel(resize_rx)),
        tty: opts.tty,
    };
    // As the kubelet does: an empty message on the first writable channel
    // tells the client the streams are ready.
    let ready = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let status_tx = out_tx.clone();
    drop(out_tx);
    // As the kubelet does, the status follows the last output: clients such
    // as kube-rs stop reading at the status.
    let run = async {
        // The status only once the forwarders have passed every byte of
        // output on (they end when the command has dropped its outputs).
        let (code, _) = tokio::join!(commands::run(program, stdio, container), forward);
        if let Some(msg) = exit_message(version, code, argv) {
            let _ = status_tx.send((ERROR, msg)).await;
        }
        drop(status_tx);
        code
    };
    let grace = if version >= Version::V5 { STREAM_CREATION_GRACE } else { Duration::ZERO };
    let streams_ready = async {
        let pong_then_grace = async {
            if pong_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let spoke = async {
            if spoke_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = spoke => {}
            () = pong_then_grace => {}
        }
    };
    let write = async {
        sink.send(Message::Ping(Bytes::from_static(READY_PING))).await.ok()?;
        // A client that neither sends nor answers pings: go on regardless.
        let _ = tokio::time::timeout(PONG_WAIT, streams_ready).await;
        sink.send(encode(ready, &[], base64)).await.ok()?;
        while let Some((channel, data)) = out_rx.recv().await {
            sink.send(encode(channel, &data, base64)).await.ok()?;
        }
        sink.send(normal_close()).await.ok()
    };
    // Reads until the client closes or goes away; `true` for a close frame.
    let read = async {
        let mut stdin_tx = Some(stdin_tx);
        let mut pong_tx = Some(pong_tx);
        let mut spoke_tx = Some(spoke_tx);
        while let Some(msg) = source.next().await {
            let msg = match msg {
                Ok(Message::Close(_)) => return true,
                Ok(Message::Pong(p)) if p.as_ref() == READY_PING => {
                    if let Some(tx) = pong_tx.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "WebSocket read failed");
                    return false;
                }
            };
            let Some((channel, data)) = decode(msg, base64) else { continue };
            if let Some(tx) = spoke_tx.take() {
                let _ = tx.send(());
            }
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(data).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    if let Ok(size) = serde_json::from_slice::<TermSize>(&data) {
                        let _ = resize_tx.send(size).await;
                    }
                }
                CLOSE if version >= Version::V5 && data.first() == Some(&STDIN) => stdin_tx = None,
                _ => {}
            }
        }
        false
    };
    let (code, client_closed) = {
        tokio::pin!(read);
        let work = async { tokio::join!(run, write) };
        let code = tokio::select! {
            biased;
            (code, _) = work => code,
            _ = &mut read => return Ending::ClientGone,
        };
        // The client's close frame comes once it has read everything.
        (code, tokio::time::timeout(linger, &mut read).await.unwrap_or(false))
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    tracing::info!(
        protocol = ?version,
        stdin = load(&stdin_bytes),
        stdout = load(&stdout_bytes),
        stderr = load(&stderr_bytes),
        exit_code = code,
        client_closed,
        "WebSocket exec session ended"
    );
    if let Ok(ws) = sink.reunite(source) {
        // A client that has not closed yet may still send (pings): read it
        // to its end. One that has closed sends nothing more and may wait
        // for the server to close first.
        close_socket(ws, linger, if client_closed { CLOSED_DRAIN } else { linger }).await;
    }
    Ending::Exited(code)
}

/// Ends a WebSocket connection whose close handshake is over (or timed
/// out): shuts the write half down (TLS `close_notify`, then FIN; within
/// `linger`) and reads to EOF (within `drain`) before dropping it.
/// Dropping a socket with unread input makes the kernel reset the
/// connection, which discards whatever is still queued towards the client.
async fn close_socket<S>(mut ws: WebSocketStream<S>, linger: Duration, drain: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = ws.get_mut();
    if !matches!(tokio::time::timeout(linger, io.shutdown()).await, Ok(Ok(()))) {
        return;
    }
    let mut scratch = vec![0u8; DRAIN_CHUNK];
    let to_end = async { while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(drain, to_end).await;
}

/// Tunnels a byte stream through a WebSocket (one binary message per
/// chunk): returns this side's end of the pipe and the pump that must run
/// alongside whatever uses the pipe. The pump ends when both directions
/// have ended, after closing the socket in order (within `linger`).
pub(crate) fn tunnel<S>(ws: WebSocketStream<S>, linger: Duration) -> (DuplexStream, impl Future<Output = ()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (ours, theirs) = tokio::io::duplex(TUNNEL_BUFFER);
    let pump = async move {
        let (mut rd, mut wr) = tokio::io::split(ours);
        let (mut sink, mut source) = ws.split();
        let inbound = async {
            while let Some(msg) = source.next().await {
                match msg {
                    Ok(Message::Binary(b)) => {
                        if wr.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    Ok(Message::Close(_)) | Ok(Message::Text(_)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "tunnel WebSocket read failed");
                        break;
                    }
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; TUNNEL_CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink.send(normal_close()).await;
        };
        tokio::join!(inbound, outbound);
        if let Ok(ws) = sink.reunite(source) {
            // The client has closed (or gone): little more to read.
            close_socket(ws, linger, CLOSED_DRAIN).await;
        }
    };
    (theirs, pump)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_channel() {
        assert_eq!(decode(encode(STDOUT, b"hi", false), false), Some((STDOUT, Bytes::from_static(b"hi"))));
        let b64 = encode(STDERR, b"hi", true);
        assert_eq!(b64, Message::Text("2aGk=".into()));
        assert_eq!(decode(b64, true), Some((STDERR, Bytes::from_static(b"hi"))));
        assert_eq!(
            decode(Message::Binary(Bytes::from_static(&[CLOSE, STDIN])), false),
            Some((CLOSE, Bytes::from_static(&[STDIN])))
        );
        assert_eq!(decode(Message::Ping(Bytes::new()), false), None);
    }

    #[test]
    fn the_client_order_wins() {
        let offered = ["v4.channel.k8s.io", "v5.channel.k8s.io"];
        let supported = CHANNEL_PROTOCOLS.map(|(n, v, _)| (n, v));
        assert_eq!(negotiate(&offered, &supported), Some(("v4.channel.k8s.io", Version::V4)));
        assert_eq!(negotiate(&["x"], &supported), None);
    }
}
