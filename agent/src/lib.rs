//! The Ferry agent: runs inside a child cluster, dials the hub, and replays
//! the requests it receives against the local apiserver, impersonating each
//! caller so the cluster's own RBAC decides.
//!
//! - [`config`]: command line and validated configuration.
//! - [`agent`]: lifecycle: enroll, then keep a session up (reconnects).
//! - [`credential`]: the credential (certificate and key) and where it is
//!   kept: the state directory or a Secret.
//! - `enroll`: bootstrap token and key for a certificate.
//! - `health`: `/healthz` and `/readyz` for probes; [`metrics`]: Prometheus
//!   metrics (`--metrics-listen`).
//! - `impersonation`: checking a caller's `--as` with the child cluster.
//! - `permissions`: whether the agent itself may do what it needs.
//! - [`hub`]: the TLS/HTTP/2 channel to the hub and call metadata.
//! - `session`: one session: control stream, heartbeats, the pool.
//! - `status`: the cluster's status for the hub (version, health, nodes);
//!   `quantity`: Kubernetes quantities as numbers.
//! - `pool`: parked request streams, topped up as they are claimed.
//! - `proxy`: one request stream replayed against the apiserver.
//! - `upgrade`: upgraded (101) connections: raw bytes both ways.
//! - [`upstream`]: the apiserver client and request building.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`signal`]: shutdown signals.
//! - [`error`]: fatal errors and log reports.

pub mod agent;
pub mod backoff;
pub mod config;
mod connections;
pub mod credential;
mod enroll;
pub mod error;
mod health;
pub mod hub;
mod impersonation;
pub mod metrics;
mod permissions;
mod pool;
mod proxy;
mod quantity;
mod session;
pub mod signal;
mod status;
mod upgrade;
pub mod upstream;

pub use agent::{Agent, AgentState};
pub use config::{AgentConfig, Args};
pub use error::AgentError;
pub use session::SessionError;
pub use signal::shutdown_signal;
