//! `ferry-agent`: parses the command line, sets up logging, runs the agent.

use anyhow::Context;
use clap::Parser;
use ferry_agent::{Agent, Args, shutdown_signal};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: a proxy allocates and frees
/// small objects for every request and frame (h2 streams, frames, headers,
/// tasks); glibc's malloc spent 10-17% of the hub's and the agent's
/// instructions there and returned large buffers to the kernel only to
/// fault them back in (docs/benchmarks.md, "Data-plane efficiency").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Before anything else (no other thread exists yet): may restart this
    // process (see ferry::copy_tuning).
    ferry::copy_tuning::reexec_if_useful();
    ferry::runtime::build(ferry::runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse();
    let logging = ferry::logging::init(args.log_format, &args.export, "ferry-agent")?;
    let result = run(args).await;
    // Flushing spans blocks on the exporter, which runs on this runtime.
    tokio::task::spawn_blocking(move || logging.shutdown()).await?;
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
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
