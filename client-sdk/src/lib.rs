//! Ferry client SDK: talk to a Ferry hub from Rust.
//!
//! - [`HubConfig`] ([`kubeconfig`]): where the hub is and who we are, read
//!   from a kubeconfig such as the hub's `DATA_DIR/admin.kubeconfig`.
//! - [`ManagementClient`] ([`management`]): the hub's management API
//!   (register, approve, deny, delete, list and wait for clusters; issue
//!   kubeconfigs; bearer tokens; grants), with errors in
//!   [`ManagementError`] ([`error`]).
//! - [`kube_client`] ([`kube`]): a `kube::Client` whose requests travel
//!   through the hub to a child cluster.
//! - [`duration`] and [`output`]: what the `ferryctl` binary needs to parse
//!   its arguments and print results; public so other tools print the same.

mod diagnose;
pub mod duration;
pub mod error;
pub mod kube;
pub mod kubeconfig;
pub mod management;
pub mod output;

pub use self::kube::{KubeClientError, kube_client};
pub use error::ManagementError;
pub use kubeconfig::{HubConfig, HubConfigError, HubCredential, InvalidKubeconfig};
pub use management::{
    ApprovalMode, Cluster, ClusterPhase, CredentialKind, Grant, GrantSubject, IssuedKubeconfig,
    KubeconfigRequest, ManagementClient, NewToken, RegisterOptions, Registration, TokenInfo, WhoAmI,
};
