//! Exponential backoff with jitter: the delay before trying again after `n` failures.

use std::time::Duration;

use rand::RngExt;

/// Delays that double from `min` up to `max`, each with ±20% jitter (so that many clients
/// failing together do not retry together).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), failures: 0 }
    }

    /// The delay after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Self::after_failures(self.min, self.max, self.failures)
    }

    /// Back to the shortest delay (after a connection that worked for a while).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay after `failures` failures in a row (1 for the first): `min` doubled
    /// `failures - 1` times, at most `max`, with ±20% jitter (never above `max`).
    pub fn after_failures(min: Duration, max: Duration, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let base = min.saturating_mul(1 << doublings).min(max.max(min));
        let jitter = rand::rng().random_range(0.8..1.2);
        base.mul_f64(jitter).min(max.max(min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(120));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[7] >= Duration::from_millis(800));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn the_delay_after_n_failures_doubles_with_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for (failures, base) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (1000, 60.0)] {
            let delay = Backoff::after_failures(min, max, failures).as_secs_f64();
            assert!(delay >= base * 0.8 - 1e-9 && delay <= (base * 1.2).min(60.0) + 1e-9, "{failures}: {delay}");
        }
        let spread: std::collections::HashSet<u128> =
            (0..20).map(|_| Backoff::after_failures(min, max, 3).as_micros()).collect();
        assert!(spread.len() > 1, "jittered");
    }
}
