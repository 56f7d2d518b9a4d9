//! `ferryctl`: register clusters with a Ferry hub, issue kubeconfigs, list
//! and wait for clusters. Results go to stdout, logs (`RUST_LOG`) and
//! errors to stderr; any failure exits 1 with `error: <message>`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;
use clap::{Parser, Subcommand, ValueEnum};
use ferry_client_sdk::duration::parse_duration;
use ferry_client_sdk::{HubConfig, HubConfigError, ManagementClient, output};
use tracing_subscriber::EnvFilter;

/// Command-line client for a Ferry hub: register clusters, issue kubeconfigs,
/// list clusters and wait for their agents.
#[derive(Parser)]
#[command(name = "ferryctl", version)]
struct Cli {
    /// Kubeconfig with the hub URL, the hub CA and your client certificate
    /// (the hub writes one for admins at DATA_DIR/admin.kubeconfig).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FERRY_KUBECONFIG",
        default_value = "./ferry-data/admin.kubeconfig"
    )]
    kubeconfig: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register a cluster (if new) and print a fresh bootstrap token for its agent.
    Register {
        /// Cluster name.
        name: String,
        /// What to print.
        #[arg(short, long, value_enum, default_value_t = RegisterOutput::Token)]
        output: RegisterOutput,
        /// How long the token stays usable, e.g. 30m, 24h (default: the hub's, 24h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        token_ttl: Option<Duration>,
    },
    /// Print a kubeconfig for a cluster, for you or (admins) another user.
    Kubeconfig {
        /// Cluster name.
        name: String,
        /// User to issue it for (admins only; default: yourself).
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Group for that user; repeat for several.
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
    },
    /// List registered clusters.
    Clusters {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ClustersOutput::Table)]
        output: ClustersOutput,
    },
    /// Wait until a cluster's agent is connected or disconnected.
    Wait {
        /// Cluster name.
        name: String,
        /// The state to wait for.
        #[arg(long = "for", value_enum, value_name = "STATE")]
        state: WaitFor,
        /// Give up after this long, e.g. 30s, 5m.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// `register` output formats (more, e.g. `manifest`, may follow).
#[derive(Clone, Copy, ValueEnum)]
enum RegisterOutput {
    /// Only the bootstrap token and a newline.
    Token,
}

/// `clusters` output formats.
#[derive(Clone, Copy, ValueEnum)]
enum ClustersOutput {
    /// Aligned columns: NAME STATUS AGENTS VERSION AGE.
    Table,
    /// A JSON array of clusters.
    Json,
}

/// States `wait` can wait for.
#[derive(Clone, Copy, ValueEnum)]
enum WaitFor {
    /// An agent is connected.
    Connected,
    /// No agent is connected.
    Disconnected,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let hub = HubConfig::load(&cli.kubeconfig).map_err(|e| match e {
        HubConfigError::Read { .. } => {
            anyhow!("{:#}; pass --kubeconfig FILE or set FERRY_KUBECONFIG", anyhow::Error::from(e))
        }
        e => e.into(),
    })?;
    let client = ManagementClient::connect(&hub).await?;
    match cli.command {
        Command::Register { name, output: RegisterOutput::Token, token_ttl } => {
            let registration = client.register_cluster(&name, token_ttl).await?;
            emit(&format!("{}\n", registration.bootstrap_token.expose()))
        }
        Command::Kubeconfig { name, user, groups } => {
            let kubeconfig = client.issue_kubeconfig(&name, user.as_deref(), &groups).await?;
            let mut text = kubeconfig.expose().to_owned();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            emit(&text)
        }
        Command::Clusters { output } => {
            let clusters = client.list_clusters().await?;
            match output {
                ClustersOutput::Table if clusters.is_empty() => {
                    eprintln!("No clusters registered.");
                    Ok(())
                }
                ClustersOutput::Table => emit(&output::clusters_table(&clusters, SystemTime::now())),
                ClustersOutput::Json => emit(&output::clusters_json(&clusters)),
            }
        }
        Command::Wait { name, state, timeout } => {
            let connected = matches!(state, WaitFor::Connected);
            let cluster = client.wait_cluster(&name, connected, timeout).await?;
            emit(&format!("cluster/{} {}\n", cluster.name, cluster.status.as_str().to_lowercase()))
        }
    }
}

/// Writes results to stdout; a closed pipe (`ferryctl clusters | head -1`)
/// is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
