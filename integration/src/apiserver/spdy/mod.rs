//! A small server-side SPDY/3.1 implementation: what `kubectl` (through
//! client-go's `spdystream`) needs for `exec`, `attach` and `port-forward`.
//!
//! Supported frames: SYN_STREAM (client streams only; this side opens none),
//! SYN_REPLY, DATA with FIN, RST_STREAM, SETTINGS (initial window),
//! PING (echoed), GOAWAY, HEADERS (read and ignored) and WINDOW_UPDATE (per
//! stream and, SPDY/3.1, for the connection). Header blocks are zlib
//! streams primed with the SPDY/3 dictionary.

mod conn;
mod frame;

pub(crate) use conn::{RecvHalf, SendHalf, SpdyConn, SpdyStream};
