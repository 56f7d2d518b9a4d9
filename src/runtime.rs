//! The tokio runtime of the hub and the agent.
//!
//! A proxied request crosses several tasks at each end (the caller's or the
//! apiserver's HTTP connection, the tunnel's HTTP/2 connection, the request
//! itself). On a multi-threaded runtime each hand-over between tasks on
//! different workers is a futex or eventfd wake-up, and idle workers park
//! and unpark around every request: `strace -c` counted four to six futex
//! calls per small request at each end, and `perf stat` six context
//! switches (docs/benchmarks.md, "Issue 12, second round"). On one thread
//! the agent made none. The agent serves one cluster and runs on one thread
//! by default ([`Threads::One`]); the hub, which may serve thousands of
//! clusters, uses every core it is given ([`Threads::PerCore`]) so that it
//! scales with its machine. [`WORKER_THREADS_ENV`] overrides either without
//! a rebuild. Work that would block the one thread (audit file writes,
//! store snapshots) runs on tokio's blocking pool.

/// Environment variable that sets the runtime: `0` for one thread, `N` for
/// a multi-threaded runtime with `N` workers.
pub const WORKER_THREADS_ENV: &str = "FERRY_WORKER_THREADS";

/// Largest worker count accepted from [`WORKER_THREADS_ENV`].
pub const MAX_WORKER_THREADS: usize = 256;

/// The runtime to build when [`WORKER_THREADS_ENV`] is unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// A current-thread runtime: all request work on the main thread.
    One,
    /// A multi-threaded runtime with one worker per available core (as
    /// the process's CPU affinity and cgroup quota allow).
    PerCore,
    /// A multi-threaded runtime with this many workers.
    Workers(usize),
}

/// Why the runtime could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// [`WORKER_THREADS_ENV`] is not a number up to [`MAX_WORKER_THREADS`].
    #[error(
        "{WORKER_THREADS_ENV}={0:?}: expected a number of worker threads from 0 (one thread) to {MAX_WORKER_THREADS}"
    )]
    Threads(String),
    /// tokio could not start it.
    #[error("cannot start the tokio runtime")]
    Start(#[source] std::io::Error),
}

/// Builds the runtime: [`WORKER_THREADS_ENV`] if set, else `default`.
pub fn build(default: Threads) -> Result<tokio::runtime::Runtime, RuntimeError> {
    let threads = match std::env::var(WORKER_THREADS_ENV) {
        Ok(v) => parse_threads(&v).ok_or(RuntimeError::Threads(v))?,
        Err(_) => default,
    };
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
        Threads::Workers(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build().map_err(RuntimeError::Start)
}

/// A value of [`WORKER_THREADS_ENV`].
fn parse_threads(v: &str) -> Option<Threads> {
    match v.trim().parse().ok()? {
        0 => Some(Threads::One),
        n if n <= MAX_WORKER_THREADS => Some(Threads::Workers(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Threads, parse_threads};

    #[test]
    fn worker_threads_are_bounded_numbers() {
        assert_eq!(parse_threads("0"), Some(Threads::One));
        assert_eq!(parse_threads(" 2 "), Some(Threads::Workers(2)));
        assert_eq!(parse_threads("-1"), None);
        assert_eq!(parse_threads("many"), None);
        assert_eq!(parse_threads("100000"), None);
    }
}
