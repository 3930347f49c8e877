//! Why a job could not be brought to an end now (the message goes back to the queue).

use pgevents_amqp::AmqpError;
use pgevents_pg::{ErrorKind, PgError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The database is unreachable or restarting: try the whole job again later.
    #[error(transparent)]
    Database(#[from] PgError),
    /// The dead-letter queue could not take the job.
    #[error("cannot put the job in the dead-letter queue: {0}")]
    DeadLetter(#[from] AmqpError),
    /// Shutting down while waiting between attempts.
    #[error("stopped while waiting to retry")]
    Interrupted,
}

impl JobError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::Database(e) => e.kind(),
            JobError::DeadLetter(e) => e.kind(),
            JobError::Interrupted => ErrorKind::Transient,
        }
    }
}
