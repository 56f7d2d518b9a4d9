//! `test-apiserver`: the in-memory Kubernetes apiserver test double, as a
//! process. Writes a kubeconfig, prints one ready line, serves until
//! SIGTERM or ctrl-c.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ferry_integration::apiserver::{RbacRule, TestApiserver};

/// In-memory Kubernetes apiserver for tests (not a real cluster).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write the kubeconfig (server URL, CA, admin token).
    #[arg(long)]
    kubeconfig_out: PathBuf,
    /// Also write a kubeconfig that authenticates with a client certificate
    /// (user kubernetes-admin, group system:masters), as kind does.
    #[arg(long)]
    cert_kubeconfig_out: Option<PathBuf>,
    /// RBAC rules for impersonated users and ServiceAccounts (JSON or YAML
    /// array); without it (or --strict-rbac) every resource request of an
    /// impersonated user is allowed (demo mode).
    #[arg(long)]
    rbac_file: Option<PathBuf>,
    /// No demo mode: impersonated users get only what the RBAC rules and the
    /// RBAC objects (ClusterRoles, RoleBindings, ...) allow.
    #[arg(long)]
    strict_rbac: bool,
}

async fn terminated() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for ctrl-c")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut builder = TestApiserver::builder().listen(args.listen);
    if args.strict_rbac {
        builder = builder.strict_rbac();
    }
    if let Some(path) = &args.rbac_file {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let rules: Vec<RbacRule> = serde_yaml::from_slice(&text)
            .with_context(|| format!("parsing RBAC rules in {}", path.display()))?;
        builder = builder.rbac(rules);
    }
    let api = builder.start().await.context("starting the test apiserver")?;
    std::fs::write(&args.kubeconfig_out, api.kubeconfig_yaml())
        .with_context(|| format!("writing {}", args.kubeconfig_out.display()))?;
    if let Some(path) = &args.cert_kubeconfig_out {
        std::fs::write(path, api.client_cert_kubeconfig_yaml())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "test-apiserver ready: {}", api.url()).context("printing the ready line")?;
    out.flush().context("flushing stdout")?;
    drop(out);
    terminated().await?;
    tracing::info!("shutting down");
    api.shutdown().await;
    Ok(())
}
