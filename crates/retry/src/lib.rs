//! Reconnecting with backoff: [`Backoff`] (exponential, with jitter, capped) and [`Reconnect`],
//! the loop step every long-running pgevents service takes after losing a connection: log the
//! error with the delay, wait (unless shutting down), and start from the shortest delay again
//! once a connection has stayed healthy for a while.

mod backoff;
mod reconnect;

pub use backoff::Backoff;
pub use reconnect::{Reconnect, Waited};
