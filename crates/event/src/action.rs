//! The kind of change an event reports, with its one-letter wire code.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What happened to the row (or table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `I`: a row was inserted.
    Insert,
    /// `U`: a row was updated.
    Update,
    /// `D`: a row was deleted.
    Delete,
    /// `T`: the table was truncated (one event per table).
    Truncate,
    /// `R`: a row read by an initial snapshot.
    Read,
}

impl Action {
    /// Every action, in wire-code order.
    pub const ALL: [Action; 5] = [Action::Insert, Action::Update, Action::Delete, Action::Truncate, Action::Read];

    /// The one-letter code used in event bodies and headers.
    pub fn code(self) -> &'static str {
        match self {
            Action::Insert => "I",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Truncate => "T",
            Action::Read => "R",
        }
    }

    /// The lower-case word used where a name reads better than a letter (SSE event names).
    pub fn word(self) -> &'static str {
        match self {
            Action::Insert => "insert",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Truncate => "truncate",
            Action::Read => "read",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The text names no action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}: expected one of I, U, D, T, R (or insert, update, delete, truncate, read)")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        Action::ALL
            .into_iter()
            .find(|a| a.code().eq_ignore_ascii_case(trimmed) || a.word().eq_ignore_ascii_case(trimmed))
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_words_round_trip() {
        for a in Action::ALL {
            assert_eq!(a.code().parse::<Action>(), Ok(a));
            assert_eq!(a.word().parse::<Action>(), Ok(a));
            assert_eq!(a.word().to_uppercase().parse::<Action>(), Ok(a));
        }
        assert!("X".parse::<Action>().is_err());
    }

    #[test]
    fn serialises_as_code() {
        assert_eq!(serde_json::to_string(&Action::Update).unwrap(), "\"U\"");
        assert_eq!(serde_json::from_str::<Action>("\"T\"").unwrap(), Action::Truncate);
    }
}
