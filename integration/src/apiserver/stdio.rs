//! A command's standard streams, whatever carries them (SPDY streams or
//! WebSocket channels): input that ends at EOF, outputs with backpressure,
//! and terminal resize events. Input and outputs count their bytes, so a
//! session can log what it received and sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::{Mutex, mpsc};

use super::podfs::PodFs;
use super::spdy::{RecvHalf, SendHalf};

/// The largest resize message buffered while waiting for its end.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// A terminal size, as clients send it on the resize stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct TermSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// A command's stdin.
pub(crate) struct Input {
    source: Source,
    received: Arc<AtomicU64>,
}

enum Source {
    /// A SPDY stream (consumed data is granted back to the client).
    Spdy(RecvHalf),
    /// Chunks demultiplexed from another transport; closed at EOF.
    Channel(mpsc::Receiver<Bytes>),
}

impl Input {
    /// Input from a SPDY stream.
    pub fn spdy(recv: RecvHalf) -> Self {
        Self { source: Source::Spdy(recv), received: Arc::default() }
    }

    /// Input demultiplexed from another transport.
    pub fn channel(rx: mpsc::Receiver<Bytes>) -> Self {
        Self { source: Source::Channel(rx), received: Arc::default() }
    }

    /// Counts the bytes the command has read so far.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.received)
    }

    /// The next chunk, or `None` at EOF.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let chunk = match &mut self.source {
            Source::Spdy(r) => r.recv().await,
            Source::Channel(rx) => rx.recv().await,
        }?;
        self.received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Some(chunk)
    }
}

/// Terminal resize events.
pub(crate) enum Resizes {
    /// JSON objects, back to back, on a SPDY stream.
    Spdy { recv: RecvHalf, buf: BytesMut },
    /// Sizes decoded by another transport.
    Channel(mpsc::Receiver<TermSize>),
}

impl Resizes {
    /// Resize events from a SPDY stream.
    pub fn spdy(recv: RecvHalf) -> Self {
        Self::Spdy { recv, buf: BytesMut::new() }
    }

    /// The next size; `None` when the client closed the stream. Malformed
    /// events are skipped, as the kubelet does.
    pub async fn next(&mut self) -> Option<TermSize> {
        match self {
            Self::Channel(rx) => rx.recv().await,
            Self::Spdy { recv, buf } => loop {
                let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<TermSize>();
                match stream.next() {
                    Some(Ok(size)) => {
                        let used = stream.byte_offset();
                        let _ = buf.split_to(used);
                        return Some(size);
                    }
                    Some(Err(e)) if e.is_eof() => {}
                    Some(Err(_)) => buf.clear(),
                    None => buf.clear(),
                }
                if buf.len() > MAX_RESIZE_MESSAGE {
                    buf.clear();
                }
                buf.extend_from_slice(&recv.recv().await?);
            },
        }
    }
}

/// Where an output goes.
enum Sink {
    Spdy(SendHalf),
    Channel(mpsc::Sender<Bytes>),
    /// Appended to a file (a shell redirection).
    File(PodFs, String),
    Discard,
    #[cfg(test)]
    Buffer(Vec<u8>),
}

/// Nobody reads this output any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the output is closed")]
pub(crate) struct Closed;

/// A command's stdout or stderr; clones write to the same place.
#[derive(Clone)]
pub(crate) struct Output {
    sink: Arc<Mutex<Sink>>,
    /// Turn `\n` into `\r\n`, as a terminal's line discipline does.
    crlf: bool,
    /// Bytes written (after any `\r\n` conversion), shared by clones.
    written: Arc<AtomicU64>,
}

impl Output {
    fn new(sink: Sink) -> Self {
        Self { sink: Arc::new(Mutex::new(sink)), crlf: false, written: Arc::default() }
    }

    /// Counts the bytes written so far (without keeping the output open).
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.written)
    }

    /// Output on a SPDY stream.
    pub fn spdy(send: SendHalf) -> Self {
        Self::new(Sink::Spdy(send))
    }

    /// Output into a channel (another transport sends it on).
    pub fn channel(tx: mpsc::Sender<Bytes>) -> Self {
        Self::new(Sink::Channel(tx))
    }

    /// Output appended to a file in the pod.
    pub fn file(fs: PodFs, path: String) -> Self {
        Self::new(Sink::File(fs, path))
    }

    /// Output nobody asked for.
    pub fn discard() -> Self {
        Self::new(Sink::Discard)
    }

    /// The same output seen through a terminal (`\n` becomes `\r\n`).
    pub fn with_crlf(&self) -> Self {
        Self { sink: Arc::clone(&self.sink), crlf: true, written: Arc::clone(&self.written) }
    }

    /// Output collected in memory (tests).
    #[cfg(test)]
    pub fn buffer() -> Self {
        Self::new(Sink::Buffer(Vec::new()))
    }

    /// What a buffer output collected (tests).
    #[cfg(test)]
    pub async fn contents(&self) -> Vec<u8> {
        match &*self.sink.lock().await {
            Sink::Buffer(b) => b.clone(),
            _ => Vec::new(),
        }
    }

    /// Writes (waits while the client does not keep up).
    pub async fn write(&self, data: impl Into<Bytes>) -> Result<(), Closed> {
        let mut data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        if self.crlf && data.contains(&b'\n') {
            let mut v = Vec::with_capacity(data.len() + 16);
            for &b in data.iter() {
                if b == b'\n' {
                    v.push(b'\r');
                }
                v.push(b);
            }
            data = Bytes::from(v);
        }
        let len = data.len() as u64;
        match &mut *self.sink.lock().await {
            Sink::Spdy(s) => s.send(data).await.map_err(|_| Closed)?,
            Sink::Channel(tx) => tx.send(data).await.map_err(|_| Closed)?,
            Sink::File(fs, path) => fs.lock().append(path, &data).map_err(|_| Closed)?,
            Sink::Discard => return Ok(()),
            #[cfg(test)]
            Sink::Buffer(b) => b.extend_from_slice(&data),
        }
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Ends the output (FIN on SPDY; on a channel, the sender is dropped).
    pub async fn finish(&self) {
        let mut sink = self.sink.lock().await;
        match &mut *sink {
            Sink::Spdy(s) => {
                // The stream may already be reset or the connection gone.
                let _ = s.finish().await;
            }
            Sink::Channel(_) => *sink = Sink::Discard,
            Sink::File(..) | Sink::Discard => {}
            #[cfg(test)]
            Sink::Buffer(_) => {}
        }
    }
}

/// What a command gets to talk to the client.
pub(crate) struct Stdio {
    /// stdin, when the client sends one.
    pub stdin: Option<Input>,
    /// stdout (discarded when not requested).
    pub stdout: Output,
    /// stderr (the same as stdout under a tty, as with a real terminal).
    pub stderr: Output,
    /// Resize events, with a tty.
    pub resize: Option<Resizes>,
    /// Whether the client asked for a tty.
    pub tty: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channel_outputs_deliver_and_finish() {
        let (tx, mut rx) = mpsc::channel(4);
        let out = Output::channel(tx);
        let copy = out.clone();
        copy.write(Bytes::from_static(b"a")).await.expect("write");
        out.finish().await;
        assert_eq!(rx.recv().await.as_deref(), Some(&b"a"[..]));
        assert_eq!(rx.recv().await, None);
        assert_eq!(out.write(Bytes::from_static(b"b")).await, Ok(()), "a finished channel output discards");
    }

    #[tokio::test]
    async fn resize_channel_passes_sizes() {
        let (tx, rx) = mpsc::channel(2);
        let mut r = Resizes::Channel(rx);
        tx.send(TermSize { width: 80, height: 24 }).await.expect("send");
        drop(tx);
        assert_eq!(r.next().await, Some(TermSize { width: 80, height: 24 }));
        assert_eq!(r.next().await, None);
    }
}
