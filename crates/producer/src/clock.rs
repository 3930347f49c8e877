//! Time: the wall clock as PostgreSQL's commit times are given (Unix microseconds), and a
//! [`Watchdog`] that notices silence without reading the clock at every event.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Now, in Unix microseconds.
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Checks of a watchdog's timer in one period of silence.
const CHECKS: u32 = 4;

/// Fires once nothing was [`noted`](Watchdog::note) for a period (between it and a quarter more):
/// a note only sets a flag, and the clock is read when the timer fires, a few times a period.
/// (A timeout around each wait reads the clock and arms a timer per event: at a hundred
/// thousand events a second, a measurable part of the producer's CPU.)
pub struct Watchdog {
    check: Duration,
    sleep: Pin<Box<Sleep>>,
    noted: bool,
    silent_checks: u32,
}

impl Watchdog {
    pub fn new(period: Duration) -> Watchdog {
        let check = period / CHECKS;
        Watchdog { check, sleep: Box::pin(tokio::time::sleep(check)), noted: false, silent_checks: 0 }
    }

    /// Something happened: the silence starts again.
    pub fn note(&mut self) {
        self.noted = true;
    }

    /// Starts a period from now (after a pause in which silence was expected).
    pub fn restart(&mut self) {
        self.noted = false;
        self.silent_checks = 0;
        self.sleep.as_mut().reset(Instant::now() + self.check);
    }

    /// Resolves when a whole period passed without a note. Cancel-safe.
    pub async fn expired(&mut self) {
        loop {
            (&mut self.sleep).await;
            if std::mem::take(&mut self.noted) {
                self.silent_checks = 0;
            } else {
                self.silent_checks += 1;
            }
            self.sleep.as_mut().reset(Instant::now() + self.check);
            if self.silent_checks >= CHECKS {
                self.silent_checks = 0;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_after_a_silent_period_and_not_while_noted() {
        let period = Duration::from_secs(8);
        let mut watchdog = Watchdog::new(period);
        let started = Instant::now();
        for _ in 0..20 {
            tokio::select! {
                _ = watchdog.expired() => panic!("noted every second"),
                _ = tokio::time::sleep(Duration::from_secs(1)) => watchdog.note(),
            }
        }
        let silent_from = Instant::now();
        watchdog.expired().await;
        let silence = silent_from.elapsed();
        assert!(silence >= period && silence <= period + period / CHECKS, "{silence:?}");
        assert!(started.elapsed() >= Duration::from_secs(28));
    }
}
