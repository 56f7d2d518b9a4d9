//! Prints each cluster's phase as it changes, until interrupted. The
//! stream reconnects and resumes by itself if the hub restarts.
//!
//! ```sh
//! FERRY_KUBECONFIG=ferry-data/admin.kubeconfig cargo run -p ferry-client-sdk --example watch_phases
//! ```

use ferry_client_sdk::{ClusterEvent, Hub, HubConfig, WatchOptions};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hub = Hub::connect(&HubConfig::from_default_locations()?).await?;
    let mut events = std::pin::pin!(hub.watch_clusters(WatchOptions::default()));
    while let Some(event) = events.next().await {
        match event? {
            ClusterEvent::Added { cluster, .. } | ClusterEvent::Modified { cluster, .. } => {
                println!("{} {} {}", cluster.name, cluster.phase, cluster.reason);
            }
            ClusterEvent::Deleted { cluster, .. } => println!("{} deleted", cluster.name),
            ClusterEvent::Relisted { clusters, .. } => {
                clusters.iter().for_each(|c| println!("{} {} {}", c.name, c.phase, c.reason));
            }
            _ => {}
        }
    }
    Ok(())
}
