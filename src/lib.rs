//! Ferry's shared protocol crate.
//!
//! Everything both ends of the tunnel need lives here once: the generated
//! gRPC types, the protocol version, ids, caller identity, the header policy
//! (what is stripped, what is forwarded), which paths may be forwarded,
//! frame conversion, named limits,
//! secrets, the Kubernetes `Status` error body, the TLS crypto provider and
//! the startup tuning of large memory copies.

pub mod codec;
pub mod copy_tuning;
pub mod frame;
pub mod headers;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod logging;
pub mod metadata;
pub mod path;
pub mod proto;
pub mod request_info;
pub mod runtime;
pub mod secret;
pub mod status;
pub mod tls;

/// Version of the tunnel protocol spoken by this build; sent in the agent's
/// hello and the hub's welcome. Bumped on incompatible changes only.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the Ferry software (all crates share it).
pub const FERRY_VERSION: &str = env!("CARGO_PKG_VERSION");
