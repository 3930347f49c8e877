//! Message ids: unique per change and stable across redelivery.
//!
//! A change is identified by the commit LSN of its transaction and its position (`seq`) among the
//! transaction's published events, so a change re-read after a crash gets the same id again and
//! consumers can drop duplicates by id.

use std::fmt;
use std::str::FromStr;

use crate::Lsn;

/// The identity of one change: `commit_lsn:seq`, e.g. `0/16B3748:0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// Commit LSN of the change's transaction.
    pub commit_lsn: Lsn,
    /// Position of the change among its transaction's events, from 0.
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.seq)
    }
}

/// The text is not a message id of the form `lsn:seq`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message id {0:?}: expected <commit lsn>:<seq>, e.g. 0/16B3748:0")]
pub struct ParseMessageIdError(pub String);

impl FromStr for MessageId {
    type Err = ParseMessageIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ParseMessageIdError(s.to_owned());
        let (lsn, seq) = s.rsplit_once(':').ok_or_else(invalid)?;
        Ok(MessageId { commit_lsn: lsn.parse().map_err(|_| invalid())?, seq: seq.parse().map_err(|_| invalid())? })
    }
}

/// The message id of the change at position `seq` of the transaction committed at `commit_lsn`.
pub fn message_id(commit_lsn: Lsn, seq: u64) -> String {
    MessageId { commit_lsn, seq }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = MessageId { commit_lsn: Lsn(0x16B3748), seq: 17 };
        assert_eq!(id.to_string(), "0/16B3748:17");
        assert_eq!("0/16B3748:17".parse::<MessageId>(), Ok(id));
        assert!("0/16B3748".parse::<MessageId>().is_err());
        assert!("zz:1".parse::<MessageId>().is_err());
    }

    #[test]
    fn orders_by_lsn_then_seq() {
        let a = MessageId { commit_lsn: Lsn(1), seq: 9 };
        let b = MessageId { commit_lsn: Lsn(2), seq: 0 };
        assert!(a < b);
    }
}
