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
    build_runtime()?.block_on(serve())
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

// The tokio runtime. A proxied request crosses several tasks at each end
// (the caller's or the apiserver's HTTP connection, the tunnel's HTTP/2
// connection, the request itself). On a multi-threaded runtime each
// hand-over between tasks on different workers is a futex or eventfd
// wake-up, and idle workers park and unpark around every request: `strace
// -c` counted four to six futex calls per small request at each end, and
// `perf stat` six context switches (docs/benchmarks.md, "Issue 12, second
// round"). On one thread the agent made none and the hub kept only its
// audit writer's. `DEFAULT_WORKER_THREADS` is what measured best there;
// `FERRY_WORKER_THREADS` overrides it without a rebuild (more workers for a
// hub serving many busy clusters on many cores). Work that would block the
// one thread (audit file writes, store snapshots) already runs on tokio's
// blocking pool.

/// Worker threads of the runtime when [`WORKER_THREADS_ENV`] is unset: `0`
/// means a current-thread runtime (everything on the main thread, blocking
/// work on tokio's blocking pool), `N` a multi-threaded one with `N`
/// workers.
const DEFAULT_WORKER_THREADS: usize = 0;

/// Environment variable that sets the worker threads (see
/// [`DEFAULT_WORKER_THREADS`] for what the number means).
const WORKER_THREADS_ENV: &str = "FERRY_WORKER_THREADS";

/// Largest worker count accepted from [`WORKER_THREADS_ENV`].
const MAX_WORKER_THREADS: usize = 256;

/// Why the runtime could not be built.
#[derive(Debug, thiserror::Error)]
enum RuntimeError {
    /// [`WORKER_THREADS_ENV`] is not a number up to [`MAX_WORKER_THREADS`].
    #[error(
        "{WORKER_THREADS_ENV}={0:?}: expected a number of worker threads from 0 (one thread) to {MAX_WORKER_THREADS}"
    )]
    Threads(String),
    /// tokio could not start it.
    #[error("cannot start the tokio runtime")]
    Start(#[source] std::io::Error),
}

/// Builds the runtime: [`WORKER_THREADS_ENV`] if set, else
/// [`DEFAULT_WORKER_THREADS`].
fn build_runtime() -> Result<tokio::runtime::Runtime, RuntimeError> {
    let threads = match std::env::var(WORKER_THREADS_ENV) {
        Ok(v) => parse_threads(&v).ok_or(RuntimeError::Threads(v))?,
        Err(_) => DEFAULT_WORKER_THREADS,
    };
    let mut builder = match threads {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build().map_err(RuntimeError::Start)
}

fn parse_threads(v: &str) -> Option<usize> {
    v.trim().parse().ok().filter(|n| *n <= MAX_WORKER_THREADS)
}

#[cfg(test)]
mod tests {
    use super::parse_threads;

    #[test]
    fn worker_threads_are_bounded_numbers() {
        assert_eq!(parse_threads("0"), Some(0));
        assert_eq!(parse_threads(" 2 "), Some(2));
        assert_eq!(parse_threads("-1"), None);
        assert_eq!(parse_threads("many"), None);
        assert_eq!(parse_threads("100000"), None);
    }
}
