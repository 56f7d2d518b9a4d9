//! The hub's idle limit for upgraded connections
//! (`--upgrade-idle-timeout`), shared by the gateway's relay and the
//! `Proxy` call's.
//!
//! Both directions of a connection touch one timer as bytes move; a single
//! future sleeps until the limit has passed since the last touch. Touching
//! is one relaxed atomic store, so the per-chunk cost stays negligible, and
//! no timer is re-armed per chunk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When traffic last moved on one connection.
pub(crate) struct IdleTimer {
    started: Instant,
    /// Milliseconds after `started` of the last touch.
    last_ms: AtomicU64,
}

impl IdleTimer {
    /// A timer whose quiet period starts now.
    pub(crate) fn new() -> Self {
        IdleTimer { started: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    /// Traffic moved: the quiet period starts again.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes with `limit` once nothing has moved for that long; never
    /// completes without a limit.
    pub(crate) async fn expired(&self, limit: Option<Duration>) -> Duration {
        let Some(limit) = limit else { return std::future::pending().await };
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            if quiet >= limit {
                return limit;
            }
            tokio::time::sleep(limit - quiet).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_limit_of_quiet() {
        let timer = IdleTimer::new();
        let started = Instant::now();
        assert_eq!(timer.expired(Some(LIMIT)).await, LIMIT);
        assert_eq!(started.elapsed(), LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_restarts_the_quiet_period() {
        let timer = IdleTimer::new();
        let started = Instant::now();
        let traffic = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                timer.touch();
            }
        };
        let ((), fired) = tokio::join!(traffic, timer.expired(Some(LIMIT)));
        assert_eq!(fired, LIMIT);
        // The last touch was at 18 s.
        assert_eq!(started.elapsed(), Duration::from_secs(28));
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_never_fires() {
        let timer = IdleTimer::new();
        let outcome = tokio::time::timeout(Duration::from_secs(3600), timer.expired(None)).await;
        assert!(outcome.is_err());
    }
}
