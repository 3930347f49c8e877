//! Whether and when to try again.
//!
//! - [`ErrorKind`]: what a failure means for trying again, decided where the error is made
//!   (every pgevents error type reports one), never guessed later from its text.
//! - [`Backoff`]: exponential delays with jitter, capped.
//! - [`Supervisor`]: the reconnect loop every long-running pgevents service runs around its
//!   sessions, with its [`Policy`]: log the error with the delay, wait (unless shutting down),
//!   and start from the shortest delay again once a session has stayed healthy for a while.

mod backoff;
mod kind;
mod reconnect;
mod supervise;

pub use backoff::Backoff;
pub use kind::ErrorKind;
use reconnect::{Reconnect, Waited};
pub use supervise::{Policy, SessionEnd, Step, Supervisor};
