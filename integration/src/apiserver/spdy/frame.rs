//! SPDY/3.1 frames: the wire format, and the zlib-compressed name/value
//! header blocks (one compression context per direction for the whole
//! connection, primed with the SPDY/3 dictionary).

use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version carried in every control frame.
pub(crate) const VERSION: u16 = 3;
/// The largest decompressed header block accepted (a bound against
/// compression bombs; Kubernetes' headers are a few hundred bytes).
pub(crate) const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// `FLAG_FIN` on DATA, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub(crate) const FLAG_FIN: u8 = 0x01;

/// `SETTINGS_INITIAL_WINDOW_SIZE`.
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes used here.
pub(crate) mod rst {
    /// PROTOCOL_ERROR.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM.
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 3;
    /// CANCEL.
    pub const CANCEL: u32 = 5;
}

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// A SPDY stream id (31 bits; odd ids are opened by the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StreamId(pub u32);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Name/value pairs of a header block: names lower-case, a value with NULs
/// split into several pairs.
pub(crate) type Headers = Vec<(String, String)>;

/// One frame as read from the peer (header blocks already decompressed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A new stream from the peer.
    SynStream { id: StreamId, flags: u8, headers: Headers },
    /// The answer to a stream this side opened (the server opens none).
    SynReply { id: StreamId, flags: u8 },
    /// The stream is torn down.
    RstStream { id: StreamId, status: u32 },
    /// Connection settings: `(id, value)` pairs.
    Settings { entries: Vec<(u32, u32)> },
    /// A ping (to answer when the peer sent it: odd ids from a client).
    Ping { id: u32 },
    /// The peer is going away.
    GoAway { last_good: StreamId, status: u32 },
    /// More headers for a stream.
    Headers { id: StreamId, flags: u8 },
    /// More send window for a stream (or, for stream 0, the connection).
    WindowUpdate { id: StreamId, delta: u32 },
    /// Stream data.
    Data { id: StreamId, flags: u8, data: Bytes },
    /// A control frame type this implementation ignores (as the spec asks).
    Unknown { kind: u16 },
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The connection failed mid-frame.
    #[error("reading a SPDY frame failed: {0}")]
    Io(#[from] std::io::Error),
    /// A control frame of a version other than 3.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame that does not follow the format.
    #[error("malformed SPDY frame: {0}")]
    Malformed(&'static str),
    /// A header block that does not decompress.
    #[error("bad SPDY header block: {0}")]
    Compression(String),
}

/// The SPDY/3 header compression dictionary (spec section 2.6.10.1): the
/// listed words, each with a 32-bit big-endian length prefix, then a run of
/// common status texts and values.
pub(crate) fn dictionary() -> &'static [u8] {
    static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
        const WORDS: [&str; 65] = [
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: [&str; 15] = [
            "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
            "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
            "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        ];
        let mut d = Vec::with_capacity(1424);
        for w in WORDS {
            d.put_u32(u32::try_from(w.len()).unwrap_or(0));
            d.put_slice(w.as_bytes());
        }
        for t in TAIL {
            d.put_slice(t.as_bytes());
        }
        d
    });
    &DICTIONARY
}

/// Inflates the peer's header blocks (one zlib stream for the connection).
pub(crate) struct HeaderDecoder {
    inflate: Decompress,
}

impl HeaderDecoder {
    pub fn new() -> Self {
        Self { inflate: Decompress::new(true) }
    }

    /// Decompresses one header block and parses its name/value pairs.
    pub fn decode(&mut self, compressed: &[u8]) -> Result<Headers, FrameError> {
        let block = self.inflate_block(compressed)?;
        parse_block(&block)
    }

    fn inflate_block(&mut self, mut input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(1024);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(FrameError::Compression("header block too large".into()));
                }
                out.reserve(out.len().max(1024));
            }
            let before = self.inflate.total_in();
            let result = self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            match result {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) if input.is_empty() && out.len() < out.capacity() => return Ok(out),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| FrameError::Compression(format!("dictionary: {e}")))?;
                }
                Err(e) => return Err(FrameError::Compression(e.to_string())),
            }
        }
    }
}

fn parse_block(mut b: &[u8]) -> Result<Headers, FrameError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], FrameError> {
        if b.len() < n {
            return Err(FrameError::Malformed("truncated header block"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn take_u32(b: &mut &[u8]) -> Result<usize, FrameError> {
        let raw = take(b, 4)?;
        usize::try_from(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
            .map_err(|_| FrameError::Malformed("length"))
    }
    let count = take_u32(&mut b)?;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = take_u32(&mut b)?;
        let name = String::from_utf8_lossy(take(&mut b, len)?).to_ascii_lowercase();
        let len = take_u32(&mut b)?;
        let value = String::from_utf8_lossy(take(&mut b, len)?).into_owned();
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

/// Deflates this side's header blocks (one zlib stream for the connection).
pub(crate) struct HeaderEncoder {
    deflate: Compress,
    primed: bool,
}

impl HeaderEncoder {
    pub fn new() -> Self {
        Self { deflate: Compress::new(Compression::default(), true), primed: false }
    }

    /// Encodes and compresses a header block (sync-flushed, so the peer can
    /// inflate it on its own).
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>, FrameError> {
        if !self.primed {
            self.deflate
                .set_dictionary(dictionary())
                .map_err(|e| FrameError::Compression(format!("dictionary: {e}")))?;
            self.primed = true;
        }
        let mut plain = Vec::new();
        let len = |n: usize| u32::try_from(n).map_err(|_| FrameError::Malformed("header too large"));
        plain.put_u32(len(headers.len())?);
        for (name, value) in headers {
            plain.put_u32(len(name.len())?);
            plain.put_slice(name.to_ascii_lowercase().as_bytes());
            plain.put_u32(len(value.len())?);
            plain.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = plain.as_slice();
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            let used = usize::try_from(self.deflate.total_in() - before).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            // A sync flush is complete once all input is taken and the
            // output buffer was not filled to the brim.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream between frames.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    decoder: &mut HeaderDecoder,
) -> Result<Option<Frame>, FrameError> {
    let mut head = [0u8; 8];
    let n = r.read(&mut head[..1]).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut head[1..]).await?;
    let flags = head[4];
    let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
    let mut payload = BytesMut::zeroed(len);
    r.read_exact(&mut payload).await?;
    let mut p = payload.freeze();
    if head[0] & 0x80 == 0 {
        let id = StreamId(u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff);
        if id.0 == 0 {
            return Err(FrameError::Malformed("DATA on stream 0"));
        }
        return Ok(Some(Frame::Data { id, flags, data: p }));
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let need = |p: &Bytes, n: usize| {
        if p.len() < n { Err(FrameError::Malformed("control frame too short")) } else { Ok(()) }
    };
    let frame = match kind {
        TYPE_SYN_STREAM => {
            need(&p, 10)?;
            let id = StreamId(p.get_u32() & 0x7fff_ffff);
            let _associated = p.get_u32();
            let _priority_and_slot = p.get_u16();
            if id.0 == 0 {
                return Err(FrameError::Malformed("SYN_STREAM for stream 0"));
            }
            Frame::SynStream { id, flags, headers: decoder.decode(&p)? }
        }
        TYPE_SYN_REPLY | TYPE_HEADERS => {
            need(&p, 4)?;
            let id = StreamId(p.get_u32() & 0x7fff_ffff);
            // Inflate to keep the shared zlib stream in step.
            decoder.decode(&p)?;
            if kind == TYPE_SYN_REPLY { Frame::SynReply { id, flags } } else { Frame::Headers { id, flags } }
        }
        TYPE_RST_STREAM => {
            need(&p, 8)?;
            Frame::RstStream { id: StreamId(p.get_u32() & 0x7fff_ffff), status: p.get_u32() }
        }
        TYPE_SETTINGS => {
            need(&p, 4)?;
            let count = usize::try_from(p.get_u32()).unwrap_or(usize::MAX);
            if p.len() / 8 < count {
                return Err(FrameError::Malformed("SETTINGS shorter than its count"));
            }
            let entries = (0..count).map(|_| (p.get_u32() & 0x00ff_ffff, p.get_u32())).collect();
            Frame::Settings { entries }
        }
        TYPE_PING => {
            need(&p, 4)?;
            Frame::Ping { id: p.get_u32() }
        }
        TYPE_GOAWAY => {
            need(&p, 4)?;
            let last_good = StreamId(p.get_u32() & 0x7fff_ffff);
            let status = if p.len() >= 4 { p.get_u32() } else { 0 };
            Frame::GoAway { last_good, status }
        }
        TYPE_WINDOW_UPDATE => {
            need(&p, 8)?;
            Frame::WindowUpdate { id: StreamId(p.get_u32() & 0x7fff_ffff), delta: p.get_u32() & 0x7fff_ffff }
        }
        other => Frame::Unknown { kind: other },
    };
    Ok(Some(frame))
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, payload_len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    out.put_uint(u64::try_from(payload_len).unwrap_or(0), 3);
}

/// Appends a SYN_REPLY with an already compressed header block.
pub(crate) fn put_syn_reply(out: &mut BytesMut, id: StreamId, fin: bool, block: &[u8]) {
    control(out, TYPE_SYN_REPLY, if fin { FLAG_FIN } else { 0 }, 4 + block.len());
    out.put_u32(id.0);
    out.put_slice(block);
}

/// Appends a DATA frame header; the caller appends the `len` payload bytes.
pub(crate) fn put_data_head(out: &mut BytesMut, id: StreamId, fin: bool, len: usize) {
    out.put_u32(id.0 & 0x7fff_ffff);
    out.put_u8(if fin { FLAG_FIN } else { 0 });
    out.put_uint(u64::try_from(len).unwrap_or(0), 3);
}

/// Appends a RST_STREAM.
pub(crate) fn put_rst_stream(out: &mut BytesMut, id: StreamId, status: u32) {
    control(out, TYPE_RST_STREAM, 0, 8);
    out.put_u32(id.0);
    out.put_u32(status);
}

/// Appends a PING.
pub(crate) fn put_ping(out: &mut BytesMut, id: u32) {
    control(out, TYPE_PING, 0, 4);
    out.put_u32(id);
}

/// Appends a GOAWAY.
pub(crate) fn put_goaway(out: &mut BytesMut, last_good: StreamId, status: u32) {
    control(out, TYPE_GOAWAY, 0, 8);
    out.put_u32(last_good.0);
    out.put_u32(status);
}

/// Appends a WINDOW_UPDATE.
pub(crate) fn put_window_update(out: &mut BytesMut, id: StreamId, delta: u32) {
    control(out, TYPE_WINDOW_UPDATE, 0, 8);
    out.put_u32(id.0);
    out.put_u32(delta & 0x7fff_ffff);
}

/// Appends a SETTINGS frame (used by tests acting as a client).
#[cfg(test)]
pub(crate) fn put_settings(out: &mut BytesMut, entries: &[(u32, u32)]) {
    control(out, TYPE_SETTINGS, 0, 4 + 8 * entries.len());
    out.put_u32(u32::try_from(entries.len()).unwrap_or(0));
    for (id, value) in entries {
        out.put_u32(id & 0x00ff_ffff);
        out.put_u32(*value);
    }
}

/// Appends a SYN_STREAM (used by tests acting as a client).
#[cfg(test)]
pub(crate) fn put_syn_stream(out: &mut BytesMut, id: StreamId, fin: bool, block: &[u8]) {
    control(out, TYPE_SYN_STREAM, if fin { FLAG_FIN } else { 0 }, 10 + block.len());
    out.put_u32(id.0);
    out.put_u32(0);
    out.put_u16(0);
    out.put_slice(block);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_has_the_spec_length() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    #[tokio::test]
    async fn header_blocks_round_trip_across_frames() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        let mut wire = BytesMut::new();
        for (i, port) in ["8080", "9090"].iter().enumerate() {
            let block = enc.encode(&[("streamtype", "data"), ("port", port)]).expect("encode");
            put_syn_stream(&mut wire, StreamId(1 + 2 * u32::try_from(i).expect("small")), false, &block);
        }
        put_data_head(&mut wire, StreamId(1), true, 3);
        wire.put_slice(b"abc");
        put_ping(&mut wire, 7);
        let mut r = wire.freeze();
        let mut reader = &r.split_to(r.len())[..];
        let frames = [
            read_frame(&mut reader, &mut dec).await.expect("frame"),
            read_frame(&mut reader, &mut dec).await.expect("frame"),
            read_frame(&mut reader, &mut dec).await.expect("frame"),
            read_frame(&mut reader, &mut dec).await.expect("frame"),
            read_frame(&mut reader, &mut dec).await.expect("eof"),
        ];
        assert_eq!(
            frames[0],
            Some(Frame::SynStream {
                id: StreamId(1),
                flags: 0,
                headers: vec![("streamtype".into(), "data".into()), ("port".into(), "8080".into())],
            })
        );
        assert!(
            matches!(&frames[1], Some(Frame::SynStream { id: StreamId(3), headers, .. }) if headers[1].1 == "9090")
        );
        assert_eq!(
            frames[2],
            Some(Frame::Data { id: StreamId(1), flags: FLAG_FIN, data: Bytes::from_static(b"abc") })
        );
        assert_eq!(frames[3], Some(Frame::Ping { id: 7 }));
        assert_eq!(frames[4], None);
    }

    #[test]
    fn multi_valued_headers_split_on_nul() {
        let mut plain = Vec::new();
        plain.put_u32(1);
        plain.put_u32(1);
        plain.put_slice(b"A");
        plain.put_u32(3);
        plain.put_slice(b"x\0y");
        let parsed = parse_block(&plain).expect("parse");
        assert_eq!(parsed, vec![("a".to_string(), "x".to_string()), ("a".to_string(), "y".to_string())]);
        assert!(parse_block(&plain[..6]).is_err());
    }
}
