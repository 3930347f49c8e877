//! What survives from one session to the next.

use pgevents_decode::Catalog;
use pgevents_event::Lsn;

#[derive(Debug, Default)]
pub struct SessionState {
    /// The highest LSN confirmed so far; the next session resumes after it.
    pub confirmed: Lsn,
    /// Whether any session reached streaming (until then every error is fatal).
    pub streamed: bool,
    pub catalog: Catalog,
}
