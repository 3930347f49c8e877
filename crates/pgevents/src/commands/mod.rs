//! One module per subcommand.

pub mod check;
pub mod consumer_debug;
pub mod producer;
pub mod rules;
pub mod serve;
pub mod snapshot;
pub mod telemetry;
pub mod worker;
