//! The one invariant, as a data structure: which LSN may be reported to PostgreSQL as flushed.
//!
//! Messages get consecutive tags as they are published; a commit LSN is attached after the last
//! message of its transaction. An LSN becomes confirmed only when every message published before
//! it has been acknowledged by the broker, whatever order the acknowledgements arrive in.

use std::collections::VecDeque;

use pgevents_amqp::AckWindow;
pub use pgevents_amqp::UnknownTag;
use pgevents_event::Lsn;

/// Tracks publisher confirms ([`AckWindow`]) and the LSN they make safe.
#[derive(Debug, Default)]
pub struct LsnTracker {
    acks: AckWindow,
    /// Commit LSNs waiting for their messages: (last tag before the commit, LSN, commit time).
    commits: VecDeque<(u64, Lsn, Option<i64>)>,
    confirmed: Lsn,
    /// Commit times (Unix microseconds) of transactions confirmed since the last
    /// [`LsnTracker::take_confirmed_commit_times`].
    confirmed_commit_times: Vec<i64>,
}

impl LsnTracker {
    /// Starts with `confirmed` as the LSN already known to be safe.
    pub fn new(confirmed: Lsn) -> Self {
        LsnTracker { confirmed, ..Default::default() }
    }

    /// Records the next published message; `tag` must be the next sequence number.
    pub fn published(&mut self, tag: u64) {
        self.acks.published(tag);
    }

    /// Attaches a commit LSN after every message published so far, with the transaction's commit
    /// time when it is one (not an idle position). Returns the new confirmed LSN if it advanced
    /// (when nothing is in flight, at once).
    pub fn commit(&mut self, lsn: Lsn, commit_time_micros: Option<i64>) -> Option<Lsn> {
        self.commits.push_back((self.acks.last_published(), lsn, commit_time_micros));
        self.advance()
    }

    /// The commit times of the transactions confirmed since the last call.
    pub fn take_confirmed_commit_times(&mut self) -> std::vec::Drain<'_, i64> {
        self.confirmed_commit_times.drain(..)
    }

    /// Records an acknowledgement. Returns the new confirmed LSN if it advanced.
    pub fn ack(&mut self, tag: u64, multiple: bool) -> Result<Option<Lsn>, UnknownTag> {
        self.acks.ack(tag, multiple)?;
        Ok(self.advance())
    }

    fn advance(&mut self) -> Option<Lsn> {
        let mut advanced = false;
        while let Some(&(tag, lsn, commit_time)) = self.commits.front() {
            if tag > self.acks.acked_through() {
                break;
            }
            self.commits.pop_front();
            if let Some(micros) = commit_time {
                self.confirmed_commit_times.push(micros);
            }
            if lsn > self.confirmed {
                self.confirmed = lsn;
                advanced = true;
            }
        }
        advanced.then_some(self.confirmed)
    }

    /// Messages published but not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.acks.in_flight()
    }

    /// The highest LSN that is safe to report as flushed.
    #[cfg(test)]
    fn confirmed(&self) -> Lsn {
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker_with(messages: u64) -> LsnTracker {
        let mut t = LsnTracker::new(Lsn(10));
        for tag in 1..=messages {
            t.published(tag);
        }
        t
    }

    #[test]
    fn an_empty_transaction_confirms_at_once_when_nothing_is_in_flight() {
        let mut t = LsnTracker::new(Lsn(10));
        assert_eq!(t.commit(Lsn(20), None), Some(Lsn(20)));
        assert_eq!(t.confirmed(), Lsn(20));
    }

    #[test]
    fn a_transaction_confirms_only_after_all_its_messages() {
        let mut t = tracker_with(3);
        assert_eq!(t.commit(Lsn(100), None), None);
        assert_eq!(t.ack(1, false), Ok(None));
        assert_eq!(t.ack(3, false), Ok(None), "tag 2 is still missing");
        assert_eq!(t.confirmed(), Lsn(10));
        assert_eq!(t.ack(2, false), Ok(Some(Lsn(100))));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn multiple_acks_cover_earlier_tags() {
        let mut t = tracker_with(2);
        t.commit(Lsn(50), None);
        t.published(3);
        t.commit(Lsn(60), None);
        assert_eq!(t.ack(2, true), Ok(Some(Lsn(50))));
        assert_eq!(t.ack(3, true), Ok(Some(Lsn(60))));
    }

    #[test]
    fn empty_transactions_wait_behind_earlier_messages() {
        let mut t = tracker_with(1);
        t.commit(Lsn(50), None);
        assert_eq!(t.commit(Lsn(70), None), None, "an empty transaction after unconfirmed messages waits");
        assert_eq!(t.ack(1, false), Ok(Some(Lsn(70))));
    }

    #[test]
    fn duplicate_and_stale_acks_are_harmless() {
        let mut t = tracker_with(2);
        t.commit(Lsn(50), None);
        assert_eq!(t.ack(1, false), Ok(None));
        assert_eq!(t.ack(1, false), Ok(None));
        assert_eq!(t.ack(1, true), Ok(None));
        assert_eq!(t.ack(2, false), Ok(Some(Lsn(50))));
    }

    #[test]
    fn commit_times_are_reported_once_confirmed() {
        let mut t = tracker_with(1);
        t.commit(Lsn(50), Some(1_000));
        t.commit(Lsn(60), None);
        assert_eq!(t.take_confirmed_commit_times().count(), 0);
        t.ack(1, false).unwrap();
        assert_eq!(t.take_confirmed_commit_times().collect::<Vec<_>>(), vec![1_000]);
        assert_eq!(t.take_confirmed_commit_times().count(), 0);
    }

    #[test]
    fn an_ack_beyond_what_was_published_is_an_error() {
        let mut t = tracker_with(1);
        assert_eq!(t.ack(5, false), Err(UnknownTag { tag: 5, published: 1 }));
    }

    #[test]
    fn out_of_order_acks_in_every_order_give_the_same_result() {
        // 4 messages in 2 transactions; try all 24 ack orders.
        let orders = permutations(&[1, 2, 3, 4]);
        assert_eq!(orders.len(), 24);
        for order in orders {
            let mut t = LsnTracker::new(Lsn(0));
            t.published(1);
            t.published(2);
            t.commit(Lsn(100), None);
            t.published(3);
            t.published(4);
            t.commit(Lsn(200), None);
            let mut seen = vec![];
            for tag in &order {
                if let Some(lsn) = t.ack(*tag, false).unwrap() {
                    seen.push(lsn);
                }
                // never ahead of what is acknowledged
                let all_first =
                    [1, 2].iter().all(|x| order[..=order.iter().position(|y| y == tag).unwrap()].contains(x));
                if !all_first {
                    assert_eq!(t.confirmed(), Lsn(0), "order {order:?}");
                }
            }
            assert_eq!(t.confirmed(), Lsn(200), "order {order:?}");
        }
    }

    fn permutations(items: &[u64]) -> Vec<Vec<u64>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = vec![];
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, first);
                out.push(p);
            }
        }
        out
    }
}
