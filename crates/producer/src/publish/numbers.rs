//! One transport's numbers for the numbers its caller gave the same messages: both increase in
//! publishing order; a confirm (of one number, or of every number up to one) settles the caller's.

use std::collections::VecDeque;

use super::{Confirm, PublishError};

/// Transport numbers and the caller's, in publishing order.
#[derive(Default)]
pub struct Numbers {
    /// (transport's number, outputs' number, confirmed).
    entries: VecDeque<(u64, u64, bool)>,
}

impl Numbers {
    pub fn push(&mut self, number: u64, seq: u64) {
        self.entries.push_back((number, seq, false));
    }

    /// The caller's numbers a transport's confirm covers.
    pub fn confirmed(&mut self, confirm: Confirm) -> Result<Vec<u64>, PublishError> {
        let last = self.entries.back().map(|e| e.0).unwrap_or(0);
        if confirm.seq > last {
            return Err(PublishError::UnknownTag(pgevents_amqp::UnknownTag { tag: confirm.seq, published: last }));
        }
        let mut covered = Vec::new();
        if confirm.multiple {
            for entry in self.entries.iter_mut().take_while(|e| e.0 <= confirm.seq) {
                if !entry.2 {
                    entry.2 = true;
                    covered.push(entry.1);
                }
            }
        } else if let Ok(index) = self.entries.binary_search_by_key(&confirm.seq, |e| e.0) {
            let entry = &mut self.entries[index];
            if !entry.2 {
                entry.2 = true;
                covered.push(entry.1);
            }
        }
        while self.entries.front().is_some_and(|e| e.2) {
            self.entries.pop_front();
        }
        Ok(covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_map_single_and_multiple_confirms() {
        let mut numbers = Numbers::default();
        for (number, seq) in [(1, 1), (2, 3), (3, 4), (4, 7)] {
            numbers.push(number, seq);
        }
        assert_eq!(numbers.confirmed(Confirm { seq: 3, multiple: false }).unwrap(), vec![4]);
        assert_eq!(numbers.confirmed(Confirm { seq: 3, multiple: true }).unwrap(), vec![1, 3]);
        assert_eq!(numbers.confirmed(Confirm { seq: 3, multiple: false }).unwrap(), Vec::<u64>::new());
        assert!(numbers.confirmed(Confirm { seq: 9, multiple: false }).is_err());
        assert_eq!(numbers.confirmed(Confirm { seq: 4, multiple: true }).unwrap(), vec![7]);
        assert!(numbers.entries.is_empty());
    }
}
