//! A kube-runtime reflector on one cluster, through the hub: keeps a local
//! cache of the cluster's ConfigMaps up to date from a watch, and prints
//! their names each time they change.
//!
//! ```sh
//! FERRY_KUBECONFIG=ferry-data/admin.kubeconfig cargo run -p ferry-client-sdk --example reflector -- edge-1
//! ```

use ferry_client_sdk::{Hub, HubConfig};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube_runtime::{WatchStreamExt, reflector, watcher};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = std::env::args().nth(1).ok_or_else(|| anyhow::anyhow!("usage: reflector CLUSTER"))?;
    let hub = Hub::connect(&HubConfig::from_default_locations()?).await?;
    let configmaps = Api::<ConfigMap>::all(hub.kube_client(&cluster).await?);
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(configmaps, watcher::Config::default())).applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(changed) = stream.next().await {
        changed?;
        let mut names: Vec<String> = store.state().iter().filter_map(|c| c.metadata.name.clone()).collect();
        names.sort();
        println!("{cluster} configmaps: {}", names.join(","));
    }
    Ok(())
}
