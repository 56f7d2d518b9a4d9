//! `ferry-agent`: parses the command line, sets up logging, runs the agent.

use anyhow::Context;
use clap::Parser;
use ferry_agent::config::LogFormat;
use ferry_agent::{Agent, Args, shutdown_signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: a proxy allocates and frees
/// small objects for every request and frame (h2 streams, frames, headers,
/// tasks); glibc's malloc spent 10-17% of the hub's and the agent's
/// instructions there and returned large buffers to the kernel only to
/// fault them back in (docs/benchmarks.md, "Data-plane efficiency").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs
            .fmt_fields(plain_fields())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
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

/// Span and event fields as `name=value`, like tracing-subscriber's default
/// but without its per-field styling calls: every request opens a span with
/// several fields, and the default formatter spent ~6k instructions per
/// request on them (docs/benchmarks.md, "Data-plane efficiency").
fn plain_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| match field.name() {
        "message" => write!(w, "{value:?}"),
        name => write!(w, "{name}={value:?}"),
    })
    .delimited(" ")
}
