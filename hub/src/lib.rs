//! The Ferry hub.
//!
//! Agents dial in and keep a control stream plus parked request streams
//! ([`tunnel`]); kubectl and other clients call the HTTPS gateway
//! ([`gateway`]); operators use the management API ([`api`]). One address
//! serves all three ([`server`]).
//!
//! - [`auth`]: who is calling (certificates, bearer tokens); [`access`]:
//!   grants and impersonation; [`pki`]: the hub CA and what it signs.
//! - [`store`]: durable state (embedded, or [`etcd`] for several
//!   replicas); [`registry`]: live sessions and streams;
//!   [`status`]: phases, and recording them as they change.
//! - [`manifest`]: `agent.yaml`; [`kubeconfig`]: issued kubeconfigs.
//! - [`metrics`]: Prometheus metrics; [`audit`]: the audit log;
//!   [`observe`]: one request as both see it; [`health`]: `/readyz`.
//! - [`migrate`]: `ferry-hub migrate`, the embedded store into etcd;
//!   [`peer`]: forwarding between hub replicas.
//! - [`console`]: the web console under `/ui/`, on the management API.

pub mod access;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod etcd;
pub mod files;
pub mod gateway;
pub mod health;
mod idle;
pub mod kubeconfig;
pub mod manifest;
pub mod metered_store;
pub mod metrics;
pub mod migrate;
pub mod observe;
pub mod peer;
pub mod pki;
pub mod registry;
mod request_body;
pub mod server;
pub mod state;
pub mod status;
pub mod store;
pub mod tunnel;
mod upgraded;

pub use config::{HubConfig, Limits};
pub use server::Hub;
