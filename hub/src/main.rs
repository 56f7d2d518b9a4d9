//! `ferry-hub`: runs the hub.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_hub::config::{DEFAULT_DATA_DIR, DEFAULT_LISTEN};
use ferry_hub::{Hub, HubConfig};

#[derive(Parser)]
#[command(name = "ferry-hub", version, about = "Ferry hub: reach clusters behind NAT through one endpoint")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (gRPC for agents and management, HTTPS for kubectl).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory for the CA, the embedded store and admin.kubeconfig.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "FERRY_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Base URL agents and kubectl use (default: https:// + bound address).
    #[arg(long, env = "FERRY_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Largest request body forwarded to a cluster, in bytes.
    #[arg(long, default_value_t = ferry::limits::DEFAULT_MAX_REQUEST_BODY)]
    max_request_body: u64,
    /// Concurrent proxied requests per cluster.
    #[arg(long, default_value_t = ferry::limits::DEFAULT_MAX_STREAMS_PER_AGENT)]
    max_streams_per_cluster: u32,
    /// Largest total size of a request's headers, in bytes (at most 65536).
    #[arg(long, default_value_t = ferry::limits::MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Close exec/attach/port-forward connections idle this long (e.g. 30m);
    /// off by default.
    #[arg(long, value_parser = humantime::parse_duration)]
    upgrade_idle_timeout: Option<std::time::Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Command::Serve(args) = Cli::parse().command;
    let mut config = HubConfig::new(args.data_dir.clone(), args.listen);
    config.advertise_url = args.advertise_url;
    config.limits.max_request_body = args.max_request_body;
    config.limits.max_streams_per_cluster = args.max_streams_per_cluster;
    config.limits.max_header_bytes = args.max_header_bytes;
    config.limits.upgrade_idle_timeout = args.upgrade_idle_timeout;
    let hub = Hub::bind(config).await.context("starting the hub")?;
    println!(
        "ferry-hub ready at {} (listening on {}, admin kubeconfig {})",
        hub.url(),
        hub.local_addr(),
        hub.admin_kubeconfig().display()
    );
    hub.serve(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
