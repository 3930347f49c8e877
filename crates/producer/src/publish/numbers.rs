//! One transport's numbers for the numbers its caller gave the same messages: both increase in
//! publishing order; a confirm (of one number, or of every number up to one) settles the caller's.

use std::collections::VecDeque;

use super::{Confirm, PublishError};

/// Transport numbers and the caller's, in publishing order.
#[derive(Default)]
pub struct Numbers {
    /// (transport's number, outputs' number, confirmed).
    entries: VecDeque<(u64, u64, bool)>,
    /// The highest transport number pushed (a confirm above it names nothing sent).
    highest: u64,
}

impl Numbers {
    pub fn push(&mut self, number: u64, seq: u64) {
        self.entries.push_back((number, seq, false));
        self.highest = self.highest.max(number);
    }

    /// Hands `settle` each of the caller's numbers a transport's confirm covers (once).
    pub fn confirmed(&mut self, confirm: Confirm, mut settle: impl FnMut(u64)) -> Result<(), PublishError> {
        if confirm.seq > self.highest {
            let published = self.highest;
            return Err(PublishError::UnknownTag(pgevents_amqp::UnknownTag { tag: confirm.seq, published }));
        }
        if confirm.multiple {
            for entry in self.entries.iter_mut().take_while(|e| e.0 <= confirm.seq) {
                if !entry.2 {
                    entry.2 = true;
                    settle(entry.1);
                }
            }
        } else if let Ok(index) = self.entries.binary_search_by_key(&confirm.seq, |e| e.0) {
            let entry = &mut self.entries[index];
            if !entry.2 {
                entry.2 = true;
                settle(entry.1);
            }
        }
        while self.entries.front().is_some_and(|e| e.2) {
            self.entries.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(numbers: &mut Numbers, seq: u64, multiple: bool) -> Result<Vec<u64>, PublishError> {
        let mut out = Vec::new();
        numbers.confirmed(Confirm { seq, multiple }, |n| out.push(n))?;
        Ok(out)
    }

    #[test]
    fn numbers_map_single_and_multiple_confirms() {
        let mut numbers = Numbers::default();
        for (number, seq) in [(1, 1), (2, 3), (3, 4), (4, 7)] {
            numbers.push(number, seq);
        }
        assert_eq!(covered(&mut numbers, 3, false).unwrap(), vec![4]);
        assert_eq!(covered(&mut numbers, 3, true).unwrap(), vec![1, 3]);
        assert_eq!(covered(&mut numbers, 3, false).unwrap(), Vec::<u64>::new());
        assert!(covered(&mut numbers, 9, false).is_err());
        assert_eq!(covered(&mut numbers, 4, true).unwrap(), vec![7]);
        assert!(numbers.entries.is_empty());
        assert_eq!(covered(&mut numbers, 4, false).unwrap(), Vec::<u64>::new(), "a stale confirm, all settled");
    }
}
