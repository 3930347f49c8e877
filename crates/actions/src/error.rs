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
    /// Whether a service is down (or the process stopping), not this job at fault: the message
    /// waits without being counted toward the delivery limit.
    pub fn is_outage(&self) -> bool {
        match self {
            JobError::Database(e) => e.server_gone(),
            JobError::DeadLetter(e) => e.kind().is_transient(),
            JobError::Interrupted => true,
        }
    }

    /// How the message that brought this job is settled for now.
    pub fn outcome(&self) -> pgevents_consumer::Outcome {
        if self.is_outage() {
            pgevents_consumer::Outcome::Unavailable(self.to_string())
        } else {
            pgevents_consumer::Outcome::Retry(self.to_string())
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            JobError::Database(e) => e.kind(),
            JobError::DeadLetter(e) => e.kind(),
            JobError::Interrupted => ErrorKind::Transient,
        }
    }
}
