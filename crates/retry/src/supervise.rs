//! The reconnect supervisor every long-running pgevents service runs: a session ends, the
//! service says what its end means ([`SessionEnd`]: stop, try again with backoff, or try again
//! after a fixed pause), and the [`Supervisor`] waits as the [`Policy`] says unless shutting
//! down.
//!
//! Where there are several nodes (a RabbitMQ cluster), each new session connects to the first
//! node that answers, from the node in use on (`pgevents_amqp::Brokers`), so a failover needs no
//! more than the next session.

use std::fmt::Display;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Reconnect, Waited};

/// How long to wait between sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The first delay after a failure; it doubles (with jitter) up to `max`.
    pub min: Duration,
    pub max: Duration,
    /// A session that lasted this long resets the delay to `min`.
    pub healthy_after: Duration,
}

impl Default for Policy {
    /// 500 ms doubling to 30 s; a minute of health resets it.
    fn default() -> Policy {
        Policy { min: Duration::from_millis(500), max: Duration::from_secs(30), healthy_after: Duration::from_secs(60) }
    }
}

/// What the end of a session means.
pub enum SessionEnd<T> {
    /// Stop supervising, with this result.
    Stop(T),
    /// A failure: log it, wait the backoff delay, start again.
    Retry(Box<dyn Display + Send + Sync>),
    /// Not a failure of ours (a resource held elsewhere for a while): start again after this
    /// pause, without growing the backoff.
    Pause(Duration),
}

impl<T> SessionEnd<T> {
    /// [`SessionEnd::Retry`] with `error` as the logged reason.
    pub fn retry(error: impl Display + Send + Sync + 'static) -> SessionEnd<T> {
        SessionEnd::Retry(Box::new(error))
    }
}

/// What to do after [`Supervisor::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Start the next session.
    Again,
    /// Stop, with the result the session gave.
    Stop(T),
    /// Shutdown was requested while waiting: stop.
    Cancelled,
}

/// The loop around a service's sessions:
///
/// ```
/// # use pgevents_retry::{Policy, Step, Supervisor, SessionEnd};
/// # async fn session() -> Result<(), String> { Ok(()) }
/// # async fn run(shutdown: tokio_util::sync::CancellationToken) -> Result<(), String> {
/// let mut supervisor = Supervisor::new("my service", Policy::default());
/// loop {
///     let end = match session().await {
///         Ok(()) => SessionEnd::Stop(Ok(())),
///         Err(e) => SessionEnd::retry(e),
///     };
///     match supervisor.next(end, &shutdown).await {
///         Step::Again => {}
///         Step::Stop(result) => return result,
///         Step::Cancelled => return Ok(()),
///     }
/// }
/// # }
/// ```
///
/// (A closure-taking `supervise(session)` would read shorter, but the future of an async
/// closure that borrows the service's state is not `Send` for every lifetime, and services are
/// spawned.)
#[derive(Debug)]
pub struct Supervisor {
    reconnect: Reconnect,
}

impl Supervisor {
    /// `what` names the service in the log. The first session starts now.
    pub fn new(what: &'static str, policy: Policy) -> Supervisor {
        let mut reconnect = Reconnect::new(what, policy.min, policy.max).healthy_after(policy.healthy_after);
        reconnect.attempt();
        Supervisor { reconnect }
    }

    /// After a session ended as `end` says: waits as it says (unless `shutdown` fires), and
    /// says whether to start the next session.
    pub async fn next<T>(&mut self, end: SessionEnd<T>, shutdown: &CancellationToken) -> Step<T> {
        match end {
            SessionEnd::Stop(result) => return Step::Stop(result),
            SessionEnd::Retry(error) => {
                if self.reconnect.wait(&*error, shutdown).await == Waited::Cancelled {
                    return Step::Cancelled;
                }
            }
            SessionEnd::Pause(pause) => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return Step::Cancelled,
                }
            }
        }
        self.reconnect.attempt();
        Step::Again
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_pauses_without_and_stops_when_told() {
        let shutdown = CancellationToken::new();
        let policy = Policy { min: Duration::from_millis(100), max: Duration::from_secs(1), ..Policy::default() };
        let began = tokio::time::Instant::now();
        let mut sessions = Vec::new();
        let mut supervisor = Supervisor::new("test", policy);
        let result = loop {
            sessions.push(began.elapsed());
            let end = match sessions.len() {
                1 | 2 => SessionEnd::retry("refused"),
                3 => SessionEnd::Pause(Duration::from_secs(5)),
                _ => SessionEnd::Stop("done"),
            };
            match supervisor.next(end, &shutdown).await {
                Step::Again => {}
                other => break other,
            }
        };
        assert_eq!(result, Step::Stop("done"));
        assert_eq!(sessions.len(), 4);
        let gaps: Vec<Duration> = sessions.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= Duration::from_millis(80) && gaps[0] <= Duration::from_millis(120), "{gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(160), "the delay grows: {gaps:?}");
        assert_eq!(gaps[2], Duration::from_secs(5), "a pause is exact");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new("test", Policy::default());
        shutdown.cancel();
        assert_eq!(supervisor.next(SessionEnd::<()>::retry("lost"), &shutdown).await, Step::Cancelled);
        assert_eq!(supervisor.next(SessionEnd::<()>::Pause(Duration::from_secs(1)), &shutdown).await, Step::Cancelled);
    }
}
