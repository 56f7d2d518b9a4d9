//! A `kube::Client` whose requests travel through the hub to a child cluster.
//!
//! [`Hub::kube_client`] builds one from the hub connection's own
//! credential; [`kube_client`] from any kubeconfig, such as those the hub
//! issues ([`Hub::issue_kubeconfig`]). Either way the server is
//! `https://HUB/clusters/NAME`, pinned to the hub CA. kube keeps the
//! `/clusters/NAME` prefix on every request, so
//! `Api::<Pod>::all(client).list(..)` becomes `GET
//! https://HUB/clusters/NAME/api/v1/pods`, which the hub forwards to the
//! cluster's agent; the agent replays it with impersonation of the caller,
//! so the child cluster's RBAC applies. Watches, kube-runtime watchers and
//! reflectors, logs and exec (WebSocket) work unchanged.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_client_sdk::{Hub, HubConfig};
//! use k8s_openapi::api::core::v1::Namespace;
//!
//! let hub = Hub::connect(&HubConfig::load("ferry-data/admin.kubeconfig")?).await?;
//! let client = hub.kube_client("edge-1").await?;
//! let namespaces = kube::Api::<Namespace>::all(client).list(&Default::default()).await?;
//! println!("{} namespaces", namespaces.items.len());
//! # Ok(())
//! # }
//! ```

use ::kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use crate::management::Hub;

/// Why a client could not be built from a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    /// The hub was connected without a configuration to build one from
    /// ([`Hub::from_channel`]).
    #[error("this hub connection has no configuration to build a kube client from")]
    NoConfig,
    /// The text is not a kubeconfig.
    #[error("cannot parse the kubeconfig")]
    Parse(#[source] KubeconfigError),
    /// The kubeconfig lacks or garbles something a client needs.
    #[error("the kubeconfig cannot be used")]
    Config(#[source] KubeconfigError),
    /// kube could not build the client (e.g. TLS material rejected).
    #[error("cannot build a Kubernetes client")]
    Build(#[source] ::kube::Error),
}

/// Builds a [`kube::Config`] from kubeconfig YAML (current
/// context), for callers who want to adjust timeouts or headers before
/// building a client themselves.
pub async fn kube_config(kubeconfig_yaml: &str) -> Result<::kube::Config, KubeClientError> {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig_yaml).map_err(KubeClientError::Parse)?;
    ::kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(KubeClientError::Config)
}

/// Builds a [`kube::Client`] from a kubeconfig the hub
/// issued (or any kubeconfig), so a Rust program reaches a child cluster
/// through the hub. Call it within a Tokio runtime: the client spawns its
/// request buffer there.
pub async fn kube_client(kubeconfig_yaml: &str) -> Result<::kube::Client, KubeClientError> {
    ensure_crypto_provider();
    let config = kube_config(kubeconfig_yaml).await?;
    ::kube::Client::try_from(config).map_err(KubeClientError::Build)
}

impl Hub {
    /// A [`kube::Client`](::kube::Client) for child cluster `cluster`,
    /// through the hub, with this connection's CA and credential (the hub
    /// checks the caller's grant for the cluster on every request). Call it
    /// within a Tokio runtime.
    pub async fn kube_client(&self, cluster: &str) -> Result<::kube::Client, KubeClientError> {
        let config = self.kube_config(cluster).await?;
        ::kube::Client::try_from(config).map_err(KubeClientError::Build)
    }

    /// The [`kube::Config`](::kube::Config) behind [`Hub::kube_client`], to
    /// adjust (timeouts, headers) before building a client.
    pub async fn kube_config(&self, cluster: &str) -> Result<::kube::Config, KubeClientError> {
        ensure_crypto_provider();
        let hub = self.config().ok_or(KubeClientError::NoConfig)?;
        ::kube::Config::from_custom_kubeconfig(hub.kubeconfig_for(cluster), &KubeConfigOptions::default())
            .await
            .map_err(KubeClientError::Config)
    }
}

/// kube builds its rustls config from the process-wide provider. It picks
/// one itself when exactly one is compiled in; feature unification in a
/// larger program can bring in a second, so we name ours (ring, as tonic
/// uses) unless the program already chose.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_cluster_path_prefix() {
        let yaml = "apiVersion: v1
kind: Config
current-context: edge-1
clusters:
- name: edge-1
  cluster: {server: 'https://127.0.0.1:8443/clusters/edge-1'}
contexts:
- name: edge-1
  context: {cluster: edge-1, user: alice, namespace: apps}
users:
- name: alice
  user: {}
";
        let config = kube_config(yaml).await.expect("config");
        assert_eq!(config.cluster_url.path(), "/clusters/edge-1");
        assert_eq!(config.default_namespace, "apps");
        let client = kube_client(yaml).await.expect("client");
        assert_eq!(client.default_namespace(), "apps");
    }

    #[tokio::test]
    async fn explains_bad_input() {
        let e = kube_client(": not yaml [").await.err();
        assert!(matches!(e, Some(KubeClientError::Parse(_))), "{e:?}");
        let e = kube_client("apiVersion: v1\nkind: Config\n").await.err();
        assert!(matches!(e, Some(KubeClientError::Config(_))), "{e:?}");
    }
}
