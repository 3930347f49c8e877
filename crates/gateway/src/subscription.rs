//! What one subscriber receives: its filter, within what its token grants.

use bytes::Bytes;

use crate::auth::Grant;
use crate::filter::Filter;
use crate::frame::Frame;

#[derive(Debug)]
pub struct Subscription {
    /// The token's `sub`, `?consumer_id=` or `X-Consumer-Id`.
    pub consumer_id: String,
    pub filter: Filter,
    /// `None` when the gateway runs without authentication.
    pub grant: Option<Grant>,
}

impl Subscription {
    /// The SSE bytes of `frame` for this subscriber; `None` when it is not for it.
    pub fn render(&self, frame: &Frame) -> Option<Bytes> {
        let event = frame.event()?;
        if self.grant.as_ref().is_some_and(|grant| !grant.allows(event)) || !self.filter.matches(event) {
            return None;
        }
        Some(self.filter.render(event, frame.offset))
    }
}
