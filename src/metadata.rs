//! gRPC metadata keys used on tunnel calls.

/// Carries `Bearer <credential>` on Control and Proxy calls.
pub const AUTHORIZATION: &str = "authorization";

/// Carries the session id from the hub's welcome on Proxy calls.
pub const SESSION: &str = "ferry-session";
