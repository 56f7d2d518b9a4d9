//! The Ferry hub.
//!
//! Agents dial in and keep a control stream plus parked request streams
//! ([`tunnel`]); kubectl and other clients call the HTTPS gateway
//! ([`gateway`]); operators use the management API ([`management`]). One
//! address serves all three ([`server`]).

pub mod auth;
pub mod config;
pub mod files;
pub mod gateway;
pub mod kubeconfig;
pub mod management;
pub mod pki;
pub mod registry;
pub mod server;
pub mod state;
pub mod store;
pub mod tunnel;
mod upgraded;

pub use config::{HubConfig, Limits};
pub use server::Hub;
