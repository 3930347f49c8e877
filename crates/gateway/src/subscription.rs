//! What one subscriber receives: what it selected (a filter on `/events`, or a session's
//! subscriptions), within what its token grants and what `--subscriber-column` addresses to it.

use std::sync::Arc;

use bytes::Bytes;

use crate::addressing::Addressing;
use crate::auth::Grant;
use crate::filter::Filter;
use crate::frame::Frame;
use crate::session_events;
use crate::sessions::{Reader, Session};

/// How a subscriber chose its events.
#[derive(Debug)]
pub enum Selector {
    /// `/events?table=...`: a filter of its own.
    Query(Filter),
    /// `/sessions/{id}/events`: the session's subscriptions as they are at each event (the
    /// reader keeps the session alive while the stream lasts).
    Session { session: Arc<Session>, _reader: Reader },
}

#[derive(Debug)]
pub struct Subscription {
    /// The token's `sub`, `?consumer_id=` or `X-Consumer-Id`; the session id for a session.
    pub consumer_id: String,
    /// How logs name the subscriber: escaped, and never a session's id (the key to read it).
    pub label: String,
    pub selector: Selector,
    /// `None` when the gateway runs without authentication.
    pub grant: Option<Grant>,
    pub addressing: Arc<Addressing>,
}

impl Subscription {
    /// The SSE bytes of `frame` for this subscriber; `None` when it is not for it.
    pub fn render(&self, frame: &Frame) -> Option<Bytes> {
        let event = frame.event()?;
        let granted = |grant: &Grant| match self.selector {
            Selector::Query(_) => grant.allows(event),
            // A session's subscriptions were checked against its owner's privileges; its token
            // narrows them further: to its tables if it grants any, to its rows always.
            Selector::Session { .. } => {
                (!grant.grants_tables() || grant.allows_table(event)) && grant.allows_rows(event)
            }
        };
        if self.grant.as_ref().is_some_and(|grant| !granted(grant)) {
            return None;
        }
        if !self.addressing.allows(&event.event, &self.consumer_id) {
            return None;
        }
        match &self.selector {
            Selector::Query(filter) => filter.matches(event).then(|| filter.render(event, frame.offset)),
            Selector::Session { session, .. } => session_events::render(&session.subscriptions(), event, frame.offset),
        }
    }
}
