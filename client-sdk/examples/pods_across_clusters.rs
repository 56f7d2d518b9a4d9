//! Lists the pods of every Ready cluster, all clusters at once, through the
//! hub: one `kube::Client` per cluster, the requests concurrent.
//!
//! ```sh
//! FERRY_KUBECONFIG=ferry-data/admin.kubeconfig cargo run -p ferry-client-sdk --example pods_across_clusters
//! ```

use ferry_client_sdk::{ClusterPhase, Hub, HubConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hub = Hub::connect(&HubConfig::from_default_locations()?).await?;
    let ready = hub.list_clusters().await?.into_iter().filter(|c| c.phase == ClusterPhase::Ready);
    let lists = ready.map(|cluster| {
        let hub = hub.clone();
        async move {
            let pods = Api::<Pod>::all(hub.kube_client(&cluster.name).await?);
            let list = pods.list(&ListParams::default()).await?;
            anyhow::Ok((cluster.name, list.items))
        }
    });
    for result in futures_util::future::join_all(lists).await {
        let (cluster, pods) = result?;
        for pod in pods {
            let namespace = pod.metadata.namespace.unwrap_or_default();
            println!("{cluster} {namespace}/{}", pod.metadata.name.unwrap_or_default());
        }
    }
    Ok(())
}
