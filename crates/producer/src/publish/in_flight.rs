//! Body bytes of the messages published and not yet confirmed, for the `--max-in-flight-bytes`
//! limit. Numbers are consecutive on a connection, so the sizes are kept in order from the oldest
//! unconfirmed one: O(1) per publish and per confirm.

use std::collections::VecDeque;

#[derive(Default)]
pub struct InFlightBytes {
    /// The number of `sizes[0]`.
    first: u64,
    /// Sizes by number; a confirmed message in the middle counts 0 until the ones before it are
    /// confirmed too.
    sizes: VecDeque<usize>,
    total: usize,
}

impl InFlightBytes {
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn published(&mut self, seq: u64, bytes: usize) {
        if self.sizes.is_empty() {
            self.first = seq;
        }
        self.sizes.push_back(bytes);
        self.total += bytes;
    }

    pub fn confirmed(&mut self, seq: u64, multiple: bool) {
        let Some(index) = seq.checked_sub(self.first).and_then(|i| usize::try_from(i).ok()) else { return };
        if multiple {
            let through = (index + 1).min(self.sizes.len());
            self.total -= self.sizes.drain(..through).sum::<usize>();
            self.first += through as u64;
        } else if let Some(size) = self.sizes.get_mut(index) {
            self.total -= std::mem::take(size);
        }
        while self.sizes.front() == Some(&0) {
            self.sizes.pop_front();
            self.first += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_bytes_follow_single_and_multiple_confirms() {
        let mut bytes = InFlightBytes::default();
        for (seq, size) in [(1, 100), (2, 200), (3, 300), (4, 400)] {
            bytes.published(seq, size);
        }
        assert_eq!(bytes.total, 1000);
        bytes.confirmed(3, false);
        assert_eq!(bytes.total, 700);
        bytes.confirmed(2, true);
        assert_eq!(bytes.total, 400);
        bytes.confirmed(9, true);
        assert_eq!((bytes.total, bytes.sizes.len()), (0, 0));
        bytes.confirmed(4, false);
        assert_eq!(bytes.total, 0, "a confirm for a message already gone changes nothing");
        // Out of order: the middle one first, then the rest at once.
        for (seq, size) in [(10, 10), (11, 20), (12, 30)] {
            bytes.published(seq, size);
        }
        bytes.confirmed(11, false);
        assert_eq!((bytes.total, bytes.sizes.len()), (40, 3));
        bytes.confirmed(10, false);
        assert_eq!((bytes.total, bytes.sizes.len(), bytes.first), (30, 1, 12), "the confirmed front is dropped");
        bytes.confirmed(12, true);
        assert_eq!((bytes.total, bytes.sizes.len()), (0, 0));
    }
}
