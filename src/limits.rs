//! Named limits and sizes shared by hub and agent.
//!
//! Every bound on what a peer or caller can make us hold lives here, with the
//! reason for its value.

use std::time::Duration;

/// Largest body chunk put in one frame. Small enough that one frame never
/// monopolises the HTTP/2 connection, large enough that a 50 MiB LIST is a few
/// hundred frames.
pub const MAX_BODY_CHUNK: usize = 64 * 1024;

/// Largest gRPC message either side accepts (a chunk plus head overhead).
pub const MAX_FRAME_SIZE: usize = 4 * 1024 * 1024;

/// Frames buffered per request direction between a socket and its gRPC
/// stream. With [`MAX_BODY_CHUNK`] this caps a stalled reader's memory at
/// about 1 MiB per direction on top of the HTTP/2 window.
pub const FRAME_CHANNEL_CAPACITY: usize = 16;

/// Total size of request headers the hub accepts from a caller.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Number of headers accepted in one request or response head.
pub const MAX_HEADER_COUNT: usize = 128;

/// Default largest request body the hub forwards (the apiserver's own limit
/// is 3 MiB for most objects; we leave room for large CRs and patches).
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 * 1024 * 1024;

/// Default number of concurrent request streams per agent session.
pub const DEFAULT_MAX_STREAMS_PER_AGENT: u32 = 20_000;

/// Idle request streams an agent keeps parked at the hub.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// Heartbeat period on the control stream.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Missed heartbeats after which a session is considered dead.
pub const HEARTBEAT_MISSES: u32 = 3;

/// How long the hub waits for a parked stream before answering 503.
pub const STREAM_WAIT: Duration = Duration::from_secs(10);

/// Messages buffered on the control stream in each direction.
pub const CONTROL_CHANNEL_CAPACITY: usize = 32;

/// HTTP/2 receive window per stream on the tunnel connection (both ends):
/// what one stalled request can pin in flight per direction.
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;

/// HTTP/2 receive window per tunnel connection (both ends): large, so a
/// few stalled streams never starve the others on the agent's connection.
pub const H2_CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;

/// Largest HTTP/2 frame each end accepts on the tunnel connection: a whole
/// body chunk plus gRPC framing fits in one DATA frame, instead of five
/// frames at HTTP/2's 16 KiB default.
pub const H2_MAX_FRAME_SIZE: u32 = 128 * 1024;

/// Initial size of the encode and decode buffer of every gRPC stream (tonic's
/// default is 8 KiB). Tunnel streams mostly sit idle (parked, or carrying a
/// quiet watch) with a head or two of a few hundred bytes in them; large body
/// chunks need a fresh buffer of their own size whatever this is.
pub const CODEC_BUFFER_SIZE: usize = 1024;

/// Encoded bytes tonic batches before yielding them to HTTP/2 (its default).
pub const CODEC_YIELD_THRESHOLD: usize = 32 * 1024;
