//! `ferry-agent`: parses the command line, sets up logging, runs the agent.

use anyhow::Context;
use clap::Parser;
use ferry_agent::config::LogFormat;
use ferry_agent::{Agent, Args, shutdown_signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => {
            logs.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
    }
    let config = args.into_config().context("invalid configuration")?;

    let agent = Agent::new(config);
    let shutdown = CancellationToken::new();
    let run = agent.run(shutdown.clone());
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => result?,
        () = shutdown_signal() => {
            tracing::info!("shutdown requested; a second signal forces the exit");
            shutdown.cancel();
            tokio::select! {
                result = &mut run => result?,
                () = shutdown_signal() => anyhow::bail!("forced exit before a clean shutdown"),
            }
        }
    }
    Ok(())
}
