//! What a failure means for trying again.

/// The class of an error, decided once, where it is made, from what the failing side said (an
/// SQLSTATE, an AMQP reply code, an I/O error kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A connection was lost or refused, a server is restarting or short of resources: trying
    /// again later can succeed without anyone changing anything.
    Transient,
    /// A setting is wrong (credentials, permissions, names, server configuration): nothing will
    /// work until someone changes it.
    Config,
    /// This operation or this input can never succeed (a statement error, a message the broker
    /// refuses, a malformed reply): retrying it is pointless, though other work may go on.
    Permanent,
}

impl ErrorKind {
    pub fn is_transient(self) -> bool {
        self == ErrorKind::Transient
    }

    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Config => "config",
            ErrorKind::Permanent => "permanent",
        }
    }
}
