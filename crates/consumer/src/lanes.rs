//! Keyed lanes: deliveries with the same key (an event's table and primary key) run one at a
//! time, in the order they arrived; deliveries with other keys, or without a key, run in
//! parallel. So the events of one row reach the handler in commit order at any concurrency.
//!
//! What waits behind its key is bounded by the prefetch: the broker sends no more unacknowledged
//! deliveries than that.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use pgevents_event::Event;

/// The lane of an event: its table and primary key (`id`), hashed. An update that changes the
/// primary key is in the lane of its new key. An event without a key (a table without a
/// primary key) has no lane: such events run in parallel, in no particular order.
pub fn event_lane(event: &Event) -> Option<u64> {
    if event.id.is_null() {
        return None;
    }
    let mut hasher = DefaultHasher::new();
    event.table_name.hash(&mut hasher);
    // `Value` does not implement `Hash`; its JSON text is canonical for equal keys (serde_json's
    // maps keep their keys sorted here: the workspace does not enable `preserve_order`).
    event.id.to_string().hash(&mut hasher);
    Some(hasher.finish())
}

/// Lanes in use, each with what waits behind the run in progress.
#[derive(Debug)]
pub struct Lanes<T> {
    busy: HashMap<u64, VecDeque<T>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes { busy: HashMap::new() }
    }
}

impl<T> Lanes<T> {
    /// `item` may run now (returned), or waits behind its lane's run in progress (`None`).
    pub fn admit(&mut self, lane: Option<u64>, item: T) -> Option<T> {
        let Some(lane) = lane else { return Some(item) };
        match self.busy.get_mut(&lane) {
            Some(waiting) => {
                waiting.push_back(item);
                None
            }
            None => {
                self.busy.insert(lane, VecDeque::new());
                Some(item)
            }
        }
    }

    /// The run of `lane` finished: the next item of the lane, which runs now (the lane stays
    /// busy), or `None` and the lane is free.
    pub fn finished(&mut self, lane: u64) -> Option<T> {
        let waiting = self.busy.get_mut(&lane)?;
        let next = waiting.pop_front();
        if next.is_none() {
            self.busy.remove(&lane);
        }
        next
    }

    /// The run of `lane` went back to the queue: what waits behind it must not run before it,
    /// so it goes back too (returned, in order) and the lane is free.
    pub fn requeued(&mut self, lane: u64) -> Vec<T> {
        self.busy.remove(&lane).map(Vec::from).unwrap_or_default()
    }

    /// Items waiting behind a run of their lane.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.busy.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_lane_in_arrival_order_and_other_lanes_in_parallel() {
        let mut lanes = Lanes::default();
        assert_eq!(lanes.admit(Some(1), "1a"), Some("1a"));
        assert_eq!(lanes.admit(Some(2), "2a"), Some("2a"));
        assert_eq!(lanes.admit(Some(1), "1b"), None);
        assert_eq!(lanes.admit(Some(1), "1c"), None);
        assert_eq!(lanes.admit(None, "free"), Some("free"));
        assert_eq!(lanes.waiting(), 2);
        assert_eq!(lanes.finished(1), Some("1b"));
        assert_eq!(lanes.admit(Some(1), "1d"), None, "still busy with 1b");
        assert_eq!(lanes.finished(1), Some("1c"));
        assert_eq!(lanes.finished(1), Some("1d"));
        assert_eq!(lanes.finished(1), None);
        assert_eq!(lanes.admit(Some(1), "1e"), Some("1e"), "the lane was freed");
        assert_eq!(lanes.finished(2), None);
        assert_eq!(lanes.waiting(), 0);
        assert_eq!(lanes.admit(Some(3), "3a"), Some("3a"));
        assert_eq!(lanes.admit(Some(3), "3b"), None);
        assert_eq!(lanes.admit(Some(3), "3c"), None);
        assert_eq!(lanes.requeued(3), vec!["3b", "3c"], "a requeued run takes its lane's waiting items along");
        assert_eq!(lanes.admit(Some(3), "3a again"), Some("3a again"));
    }

    #[test]
    fn the_lane_is_the_table_and_the_key() {
        let event = |table: &str, id: &str| {
            let json = format!(
                r#"{{"table_name": "{table}", "action": "U", "id": {id}, "lsn": "0/1", "xid": 1, "commit_time": "2026-01-01T00:00:00Z", "seq": 0}}"#
            );
            Event::from_slice(json.as_bytes()).unwrap()
        };
        assert_eq!(event_lane(&event("public.nokey", "null")), None, "no key: no lane");
        let a = event_lane(&event("public.t", r#"{"id": 1}"#));
        assert_eq!(a, event_lane(&event("public.t", r#"{"id": 1}"#)));
        assert_ne!(a, event_lane(&event("public.t", r#"{"id": 2}"#)));
        assert_ne!(a, event_lane(&event("public.u", r#"{"id": 1}"#)));
    }
}
