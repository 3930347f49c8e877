//! The recent live feed, in memory, shared by every subscriber: frames in stream order, each
//! with a sequence number. The hub appends; each subscriber reads from its own cursor. The ring
//! keeps at most `max_events` frames and `max_bytes` bytes: a subscriber whose cursor falls
//! behind the oldest frame kept was too slow and is cut off.
//!
//! The ring also knows its *floor*: every stream message with a greater offset is in it (or
//! will be appended). A reconnecting subscriber whose last event id is at or above the floor
//! resumes from the ring without reading the stream again.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::watch;

use crate::frame::Frame;

/// How much of the feed is kept.
#[derive(Debug, Clone, Copy)]
pub struct RingLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

pub struct Ring {
    inner: RwLock<Inner>,
    /// The sequence number the next frame will get, published after every append.
    head: watch::Sender<u64>,
    limits: RingLimits,
}

struct Inner {
    frames: VecDeque<Arc<Frame>>,
    /// Sequence number of `frames[0]`.
    first_seq: u64,
    bytes: usize,
    /// Every message with a greater offset is in the ring; `None` while unknown.
    floor: Option<i64>,
}

/// What a subscriber reads from its cursor.
#[derive(Debug)]
pub enum Read {
    /// Frames from the cursor on (possibly none).
    Frames(Vec<Arc<Frame>>),
    /// The frames at the cursor are gone: the subscriber fell too far behind.
    Behind,
}

impl Ring {
    pub fn new(limits: RingLimits) -> Ring {
        let limits = RingLimits { max_events: limits.max_events.max(1), max_bytes: limits.max_bytes.max(1) };
        Ring {
            inner: RwLock::new(Inner { frames: VecDeque::new(), first_seq: 0, bytes: 0, floor: None }),
            head: watch::Sender::new(0),
            limits,
        }
    }

    /// Appends frames (in stream order) and wakes the subscribers.
    pub fn push(&self, frames: Vec<Frame>) {
        if frames.is_empty() {
            return;
        }
        let head = {
            let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            if inner.floor.is_none() {
                // The hub reads every message from its first one on.
                inner.floor = frames.first().map(|f| f.offset.saturating_sub(1));
            }
            for frame in frames {
                inner.bytes += frame.size();
                inner.frames.push_back(Arc::new(frame));
            }
            while inner.frames.len() > 1
                && (inner.frames.len() > self.limits.max_events || inner.bytes > self.limits.max_bytes)
            {
                if let Some(old) = inner.frames.pop_front() {
                    inner.bytes -= old.size();
                    inner.first_seq += 1;
                    inner.floor = Some(inner.floor.map_or(old.offset, |f| f.max(old.offset)));
                }
            }
            inner.first_seq + inner.frames.len() as u64
        };
        self.head.send_replace(head);
    }

    /// Forgets every frame (the feed had a discontinuity); cursors before the head are behind.
    pub fn clear(&self) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.first_seq += inner.frames.len() as u64;
        inner.frames.clear();
        inner.bytes = 0;
        inner.floor = None;
    }

    /// The hub learnt that no message after `offset` had been published before it started
    /// reading: the ring is complete above it (unless it already knows better).
    pub fn set_floor(&self, offset: i64) {
        {
            let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            if inner.floor.is_some() || !inner.frames.is_empty() {
                return;
            }
            inner.floor = Some(offset);
        }
        // Subscribers waiting to replay may now resume from the ring.
        self.head.send_modify(|_| {});
    }

    /// Every message after this offset is in the ring.
    pub fn floor(&self) -> Option<i64> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner).floor
    }

    pub fn max_events(&self) -> usize {
        self.limits.max_events
    }

    /// The sequence number of the next frame: a new live subscriber's cursor.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Notified after every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Up to `max` frames from `cursor` on.
    pub fn read(&self, cursor: u64, max: usize) -> Read {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if cursor < inner.first_seq {
            return Read::Behind;
        }
        let start = usize::try_from(cursor - inner.first_seq).unwrap_or(usize::MAX);
        Read::Frames(inner.frames.iter().skip(start).take(max).cloned().collect())
    }

    /// The cursor right after stream offset `offset`, if the ring holds everything after it
    /// (`offset` is at or above the floor), so a subscriber that has seen `offset` misses
    /// nothing by reading on from there. Frames at or below `offset` may still be appended
    /// after that cursor (messages in flight to the hub): readers skip them.
    pub fn cursor_after(&self, offset: i64) -> Option<u64> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        if inner.floor.is_none_or(|floor| offset < floor) {
            return None;
        }
        let index = inner.frames.partition_point(|f| f.offset <= offset);
        Some(inner.first_seq + index as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Content;

    fn frames(offsets: impl IntoIterator<Item = i64>) -> Vec<Frame> {
        offsets.into_iter().map(|offset| Frame { offset, content: Content::Unreadable }).collect()
    }

    fn offsets(read: Read) -> Vec<i64> {
        match read {
            Read::Frames(frames) => frames.iter().map(|f| f.offset).collect(),
            Read::Behind => panic!("behind"),
        }
    }

    #[test]
    fn keeps_the_newest_frames_and_reports_cursors_left_behind() {
        let ring = Ring::new(RingLimits { max_events: 3, max_bytes: 1 << 20 });
        let cursor = ring.head();
        ring.push(frames(10..12));
        assert_eq!(offsets(ring.read(cursor, 100)), vec![10, 11]);
        ring.push(frames(12..15));
        assert!(matches!(ring.read(cursor, 100), Read::Behind));
        assert_eq!(offsets(ring.read(2, 100)), vec![12, 13, 14]);
        assert_eq!(ring.head(), 5);
    }

    #[test]
    fn finds_where_a_subscriber_resumes() {
        let ring = Ring::new(RingLimits { max_events: 3, max_bytes: 1 << 20 });
        assert_eq!(ring.cursor_after(5), None, "empty: unknown");
        ring.push(frames([10, 11, 13]));
        assert_eq!(ring.cursor_after(8), None, "offset 9 may be missing");
        assert_eq!(ring.cursor_after(9), Some(0));
        assert_eq!(ring.cursor_after(11), Some(2));
        assert_eq!(ring.cursor_after(12), Some(2), "a hole in the offsets");
        assert_eq!(ring.cursor_after(13), Some(3), "caught up");
        assert_eq!(ring.cursor_after(99), Some(3));
        ring.push(frames([14]));
        assert_eq!(ring.cursor_after(9), None, "offset 10 left the ring");
        assert_eq!(ring.cursor_after(10), Some(1));
        ring.clear();
        assert_eq!(ring.cursor_after(13), None);
        assert!(matches!(ring.read(2, 10), Read::Behind));
        assert_eq!(offsets(ring.read(4, 10)), Vec::<i64>::new());
    }

    #[test]
    fn a_floor_known_before_any_frame_lets_up_to_date_subscribers_resume() {
        let ring = Ring::new(RingLimits { max_events: 100, max_bytes: 1 << 20 });
        ring.set_floor(41);
        assert_eq!(ring.cursor_after(40), None);
        assert_eq!(ring.cursor_after(41), Some(0));
        ring.push(frames([42]));
        assert_eq!(ring.cursor_after(41), Some(0));
        ring.set_floor(50);
        assert_eq!(ring.cursor_after(45), Some(1), "a later floor does not replace a known one");
    }
}
