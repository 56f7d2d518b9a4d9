//! A `kube::Client` whose requests travel through the hub to a child cluster.
//!
//! The hub issues kubeconfigs (see
//! [`ManagementClient::issue_kubeconfig`](crate::ManagementClient::issue_kubeconfig))
//! whose server is `https://HUB/clusters/NAME`, pinned to the hub CA, with a
//! client certificate naming the caller. kube keeps the `/clusters/NAME`
//! prefix on every request, so `Api::<Pod>::all(client).list(..)` becomes
//! `GET https://HUB/clusters/NAME/api/v1/pods`, which the hub forwards to the
//! cluster's agent; the agent replays it with impersonation of the caller, so
//! the child cluster's RBAC applies.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ferry_client_sdk::{HubConfig, ManagementClient, kube_client};
//! use k8s_openapi::api::core::v1::Namespace;
//!
//! let hub = HubConfig::load("ferry-data/admin.kubeconfig")?;
//! let management = ManagementClient::connect(&hub).await?;
//! let kubeconfig = management.issue_kubeconfig("edge-1", None, &[]).await?;
//! let client = kube_client(kubeconfig.expose()).await?;
//! let namespaces = kube::Api::<Namespace>::all(client).list(&Default::default()).await?;
//! println!("{} namespaces", namespaces.items.len());
//! # Ok(())
//! # }
//! ```

use ::kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Why a client could not be built from a kubeconfig.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
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
