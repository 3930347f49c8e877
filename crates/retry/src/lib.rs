//! Whether and when to try again.
//!
//! - [`ErrorKind`]: what a failure means for trying again, decided where the error is made
//!   (every pgevents error type reports one), never guessed later from its text.
//! - [`Backoff`]: exponential delays with jitter, capped.
//! - [`Reconnect`]: the loop step every long-running pgevents service takes after losing a
//!   connection: log the error with the delay, wait (unless shutting down), and start from the
//!   shortest delay again once a connection has stayed healthy for a while.
//! - [`Supervisor`]: the whole reconnect loop around a session, with its [`Policy`]; the one
//!   every service uses.

mod backoff;
mod kind;
mod reconnect;
mod supervise;

pub use backoff::Backoff;
pub use kind::ErrorKind;
pub use reconnect::{Reconnect, Waited};
pub use supervise::{Policy, SessionEnd, Step, Supervisor};
