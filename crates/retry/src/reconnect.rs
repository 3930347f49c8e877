//! One step of a reconnect loop: after a failed attempt, log it and wait with backoff, unless the
//! service is shutting down.

use std::fmt::Display;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::Backoff;

/// What happened while waiting to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The delay passed: try again.
    Retry,
    /// Shutdown was requested: stop trying.
    Cancelled,
}

/// Backoff state of one reconnecting service.
#[derive(Debug, Clone)]
pub struct Reconnect {
    what: &'static str,
    backoff: Backoff,
    /// A connection that lasted this long resets the backoff to its shortest delay.
    healthy_after: Duration,
    attempt_began: Instant,
    attempts: u64,
}

impl Reconnect {
    /// `what` names the connection in the log (`"history stream"`).
    pub fn new(what: &'static str, min: Duration, max: Duration) -> Reconnect {
        Reconnect {
            what,
            backoff: Backoff::new(min, max),
            healthy_after: Duration::from_secs(60),
            attempt_began: Instant::now(),
            attempts: 0,
        }
    }

    /// Sets how long a connection must last to count as healthy (and reset the backoff).
    pub fn healthy_after(mut self, duration: Duration) -> Reconnect {
        self.healthy_after = duration;
        self
    }

    /// Call when an attempt starts (a connection is being made).
    pub fn attempt(&mut self) {
        self.attempt_began = Instant::now();
    }

    /// Failed attempts since the last healthy connection.
    #[cfg(test)]
    pub fn failures(&self) -> u64 {
        self.attempts
    }

    /// After a failed attempt: logs `error` with the delay, then waits it out, or returns
    /// [`Waited::Cancelled`] at once when `shutdown` fires.
    pub async fn wait(&mut self, error: &(dyn Display + Sync), shutdown: &CancellationToken) -> Waited {
        if self.attempt_began.elapsed() >= self.healthy_after {
            self.backoff.reset();
            self.attempts = 0;
        }
        self.attempts += 1;
        let delay = self.backoff.next_delay();
        tracing::warn!(
            connection = self.what,
            error = %error,
            attempt = self.attempts,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "connection failed; reconnecting"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => Waited::Retry,
            _ = shutdown.cancelled() => Waited::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_longer_each_time_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut reconnect = Reconnect::new("test", Duration::from_millis(100), Duration::from_secs(1));
        let mut waited = Vec::new();
        for _ in 0..5 {
            reconnect.attempt();
            let began = tokio::time::Instant::now();
            assert_eq!(reconnect.wait(&"refused", &shutdown).await, Waited::Retry);
            waited.push(began.elapsed());
        }
        assert!(waited[0] <= Duration::from_millis(120), "{waited:?}");
        assert!(waited[4] >= Duration::from_millis(800), "{waited:?}");
        assert_eq!(reconnect.failures(), 5);
        shutdown.cancel();
        assert_eq!(reconnect.wait(&"refused", &shutdown).await, Waited::Cancelled);
    }

    #[tokio::test]
    async fn a_healthy_connection_resets_the_delay() {
        let shutdown = CancellationToken::new();
        let mut reconnect = Reconnect::new("test", Duration::from_millis(1), Duration::from_millis(50))
            .healthy_after(Duration::from_millis(20));
        for _ in 0..6 {
            reconnect.attempt();
            reconnect.wait(&"refused", &shutdown).await;
        }
        assert_eq!(reconnect.failures(), 6);
        reconnect.attempt();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let began = Instant::now();
        reconnect.wait(&"lost", &shutdown).await;
        assert_eq!(reconnect.failures(), 1, "the count starts again after a healthy connection");
        assert!(began.elapsed() < Duration::from_millis(20));
    }
}
