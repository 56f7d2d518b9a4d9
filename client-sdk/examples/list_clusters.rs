//! Lists the clusters of a Ferry hub with their phase, version and nodes.
//!
//! ```sh
//! FERRY_KUBECONFIG=ferry-data/admin.kubeconfig cargo run -p ferry-client-sdk --example list_clusters
//! ```

use ferry_client_sdk::{Hub, HubConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hub = Hub::connect(&HubConfig::from_default_locations()?).await?;
    for cluster in hub.list_clusters().await? {
        let version = cluster.kubernetes_version.as_deref().unwrap_or("-");
        let nodes = cluster.nodes.map(|n| format!("{}/{}", n.ready, n.ready + n.not_ready));
        println!("{} {} {version} nodes={}", cluster.name, cluster.phase, nodes.as_deref().unwrap_or("-"));
    }
    Ok(())
}
