//! Which published messages the broker has acknowledged. Tags are consecutive on a channel;
//! an acknowledgement may cover every earlier tag (`multiple`) and they may arrive in any order.

use std::collections::VecDeque;

/// The broker acknowledged a tag that was never published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RabbitMQ acknowledged delivery tag {tag}, but only {published} messages were published on this channel")]
pub struct UnknownTag {
    pub tag: u64,
    pub published: u64,
}

/// Acknowledgements of the messages published on one channel.
#[derive(Debug, Default, Clone)]
pub struct AckWindow {
    published: u64,
    /// Every tag up to this one is acknowledged.
    acked_through: u64,
    /// Acknowledgement state of tags `acked_through + 1 ..= published`.
    ahead: VecDeque<bool>,
}

impl AckWindow {
    /// A window whose next tag is `last + 1` (every earlier one settled).
    pub fn after(last: u64) -> AckWindow {
        AckWindow { published: last, acked_through: last, ahead: VecDeque::new() }
    }

    /// Records the next published message; `tag` must be the next sequence number.
    pub fn published(&mut self, tag: u64) {
        debug_assert_eq!(tag, self.published + 1, "tags are consecutive");
        self.published = tag;
        self.ahead.push_back(false);
    }

    /// Records an acknowledgement; duplicates and stale ones are harmless.
    pub fn ack(&mut self, tag: u64, multiple: bool) -> Result<(), UnknownTag> {
        if tag > self.published {
            return Err(UnknownTag { tag, published: self.published });
        }
        if tag > self.acked_through {
            let index = usize::try_from(tag - self.acked_through - 1).unwrap_or(usize::MAX);
            if multiple {
                for slot in self.ahead.iter_mut().take(index.saturating_add(1)) {
                    *slot = true;
                }
            } else if let Some(slot) = self.ahead.get_mut(index) {
                *slot = true;
            }
            while self.ahead.front() == Some(&true) {
                self.ahead.pop_front();
                self.acked_through += 1;
            }
        }
        Ok(())
    }

    /// The last tag published.
    pub fn last_published(&self) -> u64 {
        self.published
    }

    /// Every tag up to this one is acknowledged.
    pub fn acked_through(&self) -> u64 {
        self.acked_through
    }

    /// Messages published but not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.published - self.acked_through
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_out_of_order_and_multiple_acknowledgements() {
        let mut window = AckWindow::after(10);
        for tag in 11..=14 {
            window.published(tag);
        }
        window.ack(13, false).unwrap();
        assert_eq!((window.acked_through(), window.in_flight()), (10, 4));
        window.ack(12, true).unwrap();
        assert_eq!((window.acked_through(), window.in_flight()), (13, 1));
        window.ack(12, false).unwrap();
        window.ack(14, false).unwrap();
        assert_eq!(window.in_flight(), 0);
        assert_eq!(window.ack(20, false), Err(UnknownTag { tag: 20, published: 14 }));
    }
}
