//! Exponential backoff with full jitter, for reconnects and retried calls.
//!
//! Full jitter (a uniform delay between zero and the current ceiling) keeps a
//! fleet of agents that lost the hub at the same moment from dialling back
//! in lockstep.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// First ceiling after a failure.
pub const RECONNECT_BASE: Duration = Duration::from_millis(500);

/// Largest ceiling: an agent retries at least this often.
pub const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// First ceiling after the hub refused the agent's token or credential.
pub const REFUSED_BASE: Duration = Duration::from_secs(2);

/// Largest ceiling after refusals: a refused agent asks again at least
/// this often (a person must act first, so there is no hurry).
pub const REFUSED_CAP: Duration = Duration::from_secs(600);

/// A session that stayed up this long counts as healthy: the next failure
/// starts again from [`RECONNECT_BASE`].
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Doublings after which the ceiling is pinned (2^16 times the base is far
/// beyond any sensible cap, and it keeps the arithmetic from overflowing).
const MAX_DOUBLINGS: u32 = 16;

/// Backoff state: the ceiling doubles per failure up to a cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, failures: 0 }
    }

    /// The policy for reconnects and retried hub calls (500 ms to 30 s).
    pub fn reconnect() -> Self {
        Self::new(RECONNECT_BASE, RECONNECT_CAP)
    }

    /// The policy after the hub refused the token or credential (2 s to
    /// 10 min): slow, so a refused fleet does not hammer the hub.
    pub fn refused() -> Self {
        Self::new(REFUSED_BASE, REFUSED_CAP)
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(MAX_DOUBLINGS);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay (uniform in `0..=ceiling`), raising the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let max_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=max_ms))
    }

    /// Back to the first ceiling (after a success or a healthy period).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleeps for the next delay; `false` when `cancel` fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            biased;
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut b = Backoff::reconnect();
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling());
            let d = b.next_delay();
            assert!(d <= *ceilings.last().expect("pushed"));
        }
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[2], Duration::from_secs(2));
        assert_eq!(ceilings[6], RECONNECT_CAP);
        assert_eq!(ceilings[9], RECONNECT_CAP);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), RECONNECT_CAP, "no overflow after many failures");
        b.reset();
        assert_eq!(b.ceiling(), RECONNECT_BASE);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_stay_within_bounds() {
        let cancel = CancellationToken::new();
        let mut b = Backoff::reconnect();
        for _ in 0..12 {
            let ceiling = b.ceiling();
            let start = Instant::now();
            assert!(b.wait(&cancel).await);
            let waited = start.elapsed();
            assert!(waited <= ceiling + Duration::from_millis(1), "{waited:?} > {ceiling:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_cuts_the_wait_short() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut b = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let start = Instant::now();
        assert!(!b.wait(&cancel).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
