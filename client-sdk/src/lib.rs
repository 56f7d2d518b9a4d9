//! Ferry client SDK: reach a Ferry hub, and the Kubernetes clusters behind
//! it, from Rust.
//!
//! ```no_run
//! use ferry_client_sdk::{ClusterPhase, Hub, HubConfig};
//! use k8s_openapi::api::core::v1::Pod;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::connect(&HubConfig::from_default_locations()?).await?;
//! for cluster in hub.list_clusters().await?.into_iter().filter(|c| c.phase == ClusterPhase::Ready) {
//!     let pods = kube::Api::<Pod>::all(hub.kube_client(&cluster.name).await?);
//!     println!("{}: {} pods", cluster.name, pods.list(&Default::default()).await?.items.len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! - [`HubConfig`] ([`kubeconfig`]): where the hub is and who we are, from a
//!   kubeconfig (such as the hub's `DATA_DIR/admin.kubeconfig`, or one from
//!   `ferryctl token create -o kubeconfig`), the default locations
//!   (`$FERRY_KUBECONFIG`, `./ferry-data/admin.kubeconfig`), or a URL, CA
//!   and credential.
//! - [`Hub`] ([`management`]): every call of the hub's management API
//!   (clusters: register, get, list, watch, wait, approve, deny, delete,
//!   labels; access: who am I, kubeconfigs, tokens, grants), with errors in
//!   [`ManagementError`] ([`error`]) that say what to do next.
//! - [`Hub::watch_clusters`] ([`watch`]): cluster changes as a `Stream` that
//!   reconnects and resumes by itself.
//! - [`Hub::kube_client`] and [`kube_client`] ([`kube`]): a `kube::Client`
//!   whose requests travel through the hub to a child cluster.
//! - [`Hub::proxy`] and [`Hub::proxy_upgrade`] ([`proxy`]): raw HTTP
//!   requests and upgraded connections over the hub's gRPC `Proxy` call.
//! - [`Hub::audit_events`] ([`audit`]): the hub's audit log (admins).
//! - [`duration`] and [`output`]: what the `ferryctl` binary needs to parse
//!   its arguments and print results; public so other tools print the same.

#![deny(missing_docs)]

pub mod audit;
mod diagnose;
pub mod duration;
pub mod error;
pub mod kube;
pub mod kubeconfig;
pub mod management;
pub mod output;
pub mod proxy;
pub mod watch;

pub use self::audit::{AuditEvent, AuditQuery};
pub use self::kube::{KubeClientError, kube_client};
pub use error::ManagementError;
pub use kubeconfig::{HubConfig, HubConfigError, HubCredential, InvalidKubeconfig};
pub use management::{
    AgentReplica, ApprovalMode, Cluster, ClusterPage, ClusterPhase, CredentialKind, Grant, GrantSubject,
    HealthCheck, HealthState, Hub, IssuedKubeconfig, KubeconfigRequest, ListOptions, ManagementClient,
    NewToken, NodeCounts, PhaseTransition, RegisterOptions, Registration, Resources, TokenInfo, WhoAmI,
};
pub use proxy::{ProxiedResponse, ProxiedUpgrade, Upgraded};
pub use watch::{ClusterEvent, WatchOptions};
