//! One module per subcommand.

pub mod consumer_debug;
pub mod producer;
pub mod telemetry;
