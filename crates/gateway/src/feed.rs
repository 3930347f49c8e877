//! One subscriber's event stream, as the SSE body: a state machine that starts live (at the
//! ring's head), resumes from the ring when it still holds the subscriber's `Last-Event-ID`, or
//! replays from the stream first (waiting for one of `--max-replays` slots) and then joins the
//! live feed exactly after the last replayed offset: no gap, no duplicate at the seam.
//!
//! It ends when the subscriber falls behind the ring (too slow), the hub's RabbitMQ connection
//! it started on is lost, its token expires, or the gateway stops. The connection calls
//! [`Feed::next_chunk`] only when it can write, so a chunk is formatted only when it can go out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::{watch, AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::clients::{Activity, Admission};
use crate::hub::Link;
use crate::metrics;
use crate::replay::{Replay, ReplayError, ReplayItem};
use crate::ring::{Read, Ring};
use crate::source::Access;
use crate::sse;
use crate::subscription::Subscription;

/// Frames taken from the ring at once.
const READ_BATCH: usize = 256;
/// A chunk grows from several frames up to about this size.
const MAX_CHUNK: usize = 64 << 10;

/// What every feed shares.
pub struct FeedContext {
    pub ring: Arc<Ring>,
    pub link: watch::Receiver<Link>,
    pub replay_slots: Arc<Semaphore>,
    pub stream: String,
    pub max_body_bytes: usize,
    pub heartbeat: Duration,
    pub retry: Duration,
    pub shutdown: CancellationToken,
}

/// Where the subscriber wants to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// With the next event.
    Live,
    /// Right after this event id (`Last-Event-ID`).
    After(i64),
}

type SlotWait = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

enum Phase {
    /// The `retry:` preamble is next.
    Opening(Resume),
    /// Waiting for the hub to read the stream.
    Connecting(Resume),
    /// Waiting for a replay slot.
    Queued {
        after: i64,
        generation: u64,
        slot: SlotWait,
    },
    Replaying(Box<Replaying>),
    /// Reading the ring from `cursor`; frames up to offset `after` (the last event the
    /// subscriber has) are skipped, as another gateway may have been ahead of this one.
    Live {
        cursor: u64,
        generation: u64,
        after: i64,
    },
    Ended,
}

struct Replaying {
    replay: Replay,
    _slot: OwnedSemaphorePermit,
    /// The last offset sent (or skipped as not wanted).
    last: i64,
    generation: u64,
}

/// Why a feed ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    TooSlow,
    BrokerLost,
    Stopping,
    Expired,
    ReplayFailed(String),
}

impl End {
    fn reason(&self) -> String {
        match self {
            End::TooSlow => "the client is too slow (it fell behind the buffered feed)".into(),
            End::BrokerLost => "the RabbitMQ connection was lost".into(),
            End::Stopping => "the gateway is stopping".into(),
            End::Expired => "the token expired".into(),
            End::ReplayFailed(why) => format!("the replay failed: {why}"),
        }
    }
}

/// What one turn of the state machine gives.
enum Step {
    Send(Bytes, Phase),
    Go(Phase),
    End(End),
}

/// Waiting for something, interrupted by the heartbeat, the token's expiry or shutdown.
enum Woke<T> {
    Ready(T),
    Heartbeat,
    End(End),
}

#[derive(Clone)]
struct Deadlines {
    heartbeat_at: Instant,
    expires_at: Option<Instant>,
    shutdown: CancellationToken,
}

impl Deadlines {
    async fn wait<T>(&self, ready: impl Future<Output = T>) -> Woke<T> {
        let expiry = async {
            match self.expires_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Woke::End(End::Stopping),
            _ = expiry => Woke::End(End::Expired),
            value = ready => Woke::Ready(value),
            _ = tokio::time::sleep_until(self.heartbeat_at) => Woke::Heartbeat,
        }
    }
}

pub struct Feed {
    context: Arc<FeedContext>,
    subscription: Subscription,
    admission: Admission,
    ring_changed: watch::Receiver<u64>,
    link: watch::Receiver<Link>,
    phase: Phase,
    last_sent: Instant,
    expires_at: Option<Instant>,
    ended: Option<End>,
}

impl Feed {
    pub fn new(context: Arc<FeedContext>, subscription: Subscription, admission: Admission, resume: Resume) -> Feed {
        // The same tolerance as when the token was checked, or a token accepted within it
        // would end its stream at once.
        // (`None` also when the end is past what the clock can count to.)
        let expires_at = subscription.grant.as_ref().and_then(|grant| {
            let end = grant.expires_at.checked_add(Duration::from_secs(auth::LEEWAY_SECS))?;
            Instant::now().checked_add(end.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
        });
        Feed {
            ring_changed: context.ring.subscribe(),
            link: context.link.clone(),
            context,
            subscription,
            admission,
            phase: Phase::Opening(resume),
            last_sent: Instant::now(),
            expires_at,
            ended: None,
        }
    }

    /// When the connection last asked for data and last got some (for the watchdog).
    pub fn activity(&self) -> &Activity {
        &self.admission.activity
    }

    /// The next bytes to send; `None` when the stream ends.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let step = match std::mem::replace(&mut self.phase, Phase::Ended) {
                Phase::Opening(resume) => {
                    Step::Send(sse::preamble(millis(self.context.retry)), Phase::Connecting(resume))
                }
                Phase::Connecting(resume) => self.connecting(resume).await,
                Phase::Queued { after, generation, slot } => self.queued(after, generation, slot).await,
                Phase::Replaying(replaying) => self.replaying(replaying).await,
                Phase::Live { cursor, generation, after } => self.live(cursor, generation, after).await,
                Phase::Ended => return None,
            };
            match step {
                Step::Send(chunk, next) => {
                    self.phase = next;
                    self.last_sent = Instant::now();
                    return Some(chunk);
                }
                Step::Go(next) => self.phase = next,
                Step::End(end) => {
                    let last =
                        (end == End::Expired).then(|| sse::event(None, "expired", br#"{"reason":"token expired"}"#));
                    if end == End::TooSlow {
                        ::metrics::counter!(metrics::SLOW_CLIENTS).increment(1);
                    }
                    self.ended = Some(end);
                    return last;
                }
            }
        }
    }

    fn deadlines(&self) -> Deadlines {
        Deadlines {
            heartbeat_at: self.last_sent + self.context.heartbeat,
            expires_at: self.expires_at,
            shutdown: self.context.shutdown.clone(),
        }
    }

    fn heartbeat(phase: Phase) -> Step {
        Step::Send(sse::comment("heartbeat"), phase)
    }

    /// The hub's connection if it is still the one this feed started on.
    fn link_if(&self, generation: u64) -> Option<Access> {
        match &*self.link.borrow() {
            Link::Up { generation: g, access } if *g == generation => Some(access.clone()),
            _ => None,
        }
    }

    async fn connecting(&mut self, resume: Resume) -> Step {
        let generation = self.link.borrow_and_update().generation();
        if let Some(generation) = generation {
            return Step::Go(self.start(resume, generation));
        }
        let deadlines = self.deadlines();
        match deadlines.wait(self.link.changed()).await {
            Woke::Ready(Ok(())) => Step::Go(Phase::Connecting(resume)),
            Woke::Ready(Err(_)) => Step::End(End::Stopping),
            Woke::Heartbeat => Self::heartbeat(Phase::Connecting(resume)),
            Woke::End(end) => Step::End(end),
        }
    }

    /// Live from the ring's head, from the ring after `Last-Event-ID`, or a replay first.
    fn start(&self, resume: Resume, generation: u64) -> Phase {
        let ring = &self.context.ring;
        match resume {
            Resume::Live => Phase::Live { cursor: ring.head(), generation, after: i64::MIN },
            Resume::After(id) => match ring.cursor_after(id) {
                Some(cursor) => Phase::Live { cursor, generation, after: id },
                None => {
                    ::metrics::gauge!(metrics::REPLAYS_WAITING).increment(1.0);
                    let slot = Box::pin(self.context.replay_slots.clone().acquire_owned());
                    Phase::Queued { after: id, generation, slot }
                }
            },
        }
    }

    async fn queued(&mut self, after: i64, generation: u64, mut slot: SlotWait) -> Step {
        // While waiting for a slot, the ring may come to hold what the subscriber needs.
        self.ring_changed.borrow_and_update();
        if let Some(cursor) = self.context.ring.cursor_after(after) {
            return self.dequeued(Step::Go(Phase::Live { cursor, generation, after }));
        }
        let deadlines = self.deadlines();
        let (ring_changed, link) = (&mut self.ring_changed, &mut self.link);
        let woke = deadlines
            .wait(async {
                tokio::select! {
                    permit = &mut slot => Some(permit),
                    _ = ring_changed.changed() => None,
                    _ = link.changed() => None,
                }
            })
            .await;
        let permit = match woke {
            Woke::Ready(Some(Ok(permit))) => permit,
            Woke::Ready(Some(Err(_))) => return self.dequeued(Step::End(End::Stopping)),
            Woke::Ready(None) if self.link_if(generation).is_some() => {
                return Step::Go(Phase::Queued { after, generation, slot })
            }
            Woke::Ready(None) => return self.dequeued(Step::End(End::BrokerLost)),
            Woke::Heartbeat => return Self::heartbeat(Phase::Queued { after, generation, slot }),
            Woke::End(end) => return self.dequeued(Step::End(end)),
        };
        ::metrics::gauge!(metrics::REPLAYS_WAITING).decrement(1.0);
        if let Some(cursor) = self.context.ring.cursor_after(after) {
            return Step::Go(Phase::Live { cursor, generation, after });
        }
        let Some(access) = self.link_if(generation) else { return Step::End(End::BrokerLost) };
        let context = &self.context;
        match Replay::open(&access, &context.stream, after.saturating_add(1), context.max_body_bytes).await {
            Ok(replay) => {
                ::metrics::counter!(metrics::REPLAYS).increment(1);
                ::metrics::gauge!(metrics::REPLAYS_ACTIVE).increment(1.0);
                Step::Go(Phase::Replaying(Box::new(Replaying { replay, _slot: permit, last: after, generation })))
            }
            Err(e) => Step::End(End::ReplayFailed(e.to_string())),
        }
    }

    fn dequeued(&self, step: Step) -> Step {
        ::metrics::gauge!(metrics::REPLAYS_WAITING).decrement(1.0);
        step
    }

    async fn replaying(&mut self, mut r: Box<Replaying>) -> Step {
        // The seam: once the ring holds everything after the last replayed offset, go live.
        self.ring_changed.borrow_and_update();
        if let Some(cursor) = self.context.ring.cursor_after(r.last) {
            let (generation, after) = (r.generation, r.last);
            Self::finish_replay(r);
            return Step::Go(Phase::Live { cursor, generation, after });
        }
        if self.link_if(r.generation).is_none() {
            Self::finish_replay(r);
            return Step::End(End::BrokerLost);
        }
        let deadlines = self.deadlines();
        let (ring_changed, link) = (&mut self.ring_changed, &mut self.link);
        let woke = deadlines
            .wait(async {
                tokio::select! {
                    delivery = r.replay.recv() => Some(delivery),
                    _ = ring_changed.changed() => None,
                    _ = link.changed() => None,
                }
            })
            .await;
        let delivery = match woke {
            Woke::Ready(Some(delivery)) => delivery,
            Woke::Ready(None) => return Step::Go(Phase::Replaying(r)),
            Woke::Heartbeat => return Self::heartbeat(Phase::Replaying(r)),
            Woke::End(end) => {
                Self::finish_replay(r);
                return Step::End(end);
            }
        };
        let mut chunk = BytesMut::new();
        let mut sent = 0u64;
        let mut item = match r.replay.accept(delivery).await {
            Ok(item) => item,
            Err(e) => {
                Self::finish_replay(r);
                return Step::End(replay_end(e));
            }
        };
        loop {
            match item {
                Some(ReplayItem::Gap { first_available }) => {
                    ::metrics::counter!(metrics::REPLAY_GAPS).increment(1);
                    tracing::info!(subscriber = %self.subscription.label, last_event_id = r.last, first_available, "the requested events are past the stream's retention; sent a gap event");
                    let data = format!(r#"{{"last_event_id":{},"first_available":{first_available}}}"#, r.last);
                    r.last = first_available - 1;
                    chunk.extend_from_slice(&sse::event(Some(r.last), "gap", data.as_bytes()));
                }
                Some(ReplayItem::Frame(frame)) => {
                    r.last = frame.offset;
                    if let Some(bytes) = self.subscription.render(&frame) {
                        chunk.extend_from_slice(&bytes);
                        sent += 1;
                    }
                }
                None => {}
            }
            if chunk.len() >= MAX_CHUNK {
                break;
            }
            match r.replay.try_next() {
                Some(frame) => item = Some(ReplayItem::Frame(frame)),
                None => break,
            }
        }
        ::metrics::counter!(metrics::EVENTS_SENT).increment(sent);
        if let Err(e) = r.replay.acknowledge().await {
            Self::finish_replay(r);
            return Step::End(replay_end(e));
        }
        if chunk.is_empty() {
            Step::Go(Phase::Replaying(r))
        } else {
            Step::Send(chunk.freeze(), Phase::Replaying(r))
        }
    }

    fn finish_replay(r: Box<Replaying>) {
        ::metrics::gauge!(metrics::REPLAYS_ACTIVE).decrement(1.0);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(r.replay.close());
        }
    }

    async fn live(&mut self, cursor: u64, generation: u64, after: i64) -> Step {
        if self.link.borrow().generation() != Some(generation) {
            return Step::End(End::BrokerLost);
        }
        self.ring_changed.borrow_and_update();
        let frames = match self.context.ring.read(cursor, READ_BATCH) {
            Read::Behind => return Step::End(End::TooSlow),
            Read::Frames(frames) => frames,
        };
        if frames.is_empty() {
            let deadlines = self.deadlines();
            let (ring_changed, link) = (&mut self.ring_changed, &mut self.link);
            let woke = deadlines
                .wait(async {
                    tokio::select! {
                        _ = ring_changed.changed() => {}
                        _ = link.changed() => {}
                    }
                })
                .await;
            return match woke {
                Woke::Ready(()) => Step::Go(Phase::Live { cursor, generation, after }),
                Woke::Heartbeat => Self::heartbeat(Phase::Live { cursor, generation, after }),
                Woke::End(end) => Step::End(end),
            };
        }
        let mut next = cursor;
        let mut single: Option<Bytes> = None;
        let mut chunk = BytesMut::new();
        let mut sent = 0u64;
        for frame in frames.iter().skip_while(|f| f.offset <= after) {
            next += 1;
            let Some(bytes) = self.subscription.render(frame) else { continue };
            sent += 1;
            match single.take() {
                None if chunk.is_empty() => single = Some(bytes),
                previous => {
                    if let Some(previous) = previous {
                        chunk.extend_from_slice(&previous);
                    }
                    chunk.extend_from_slice(&bytes);
                }
            }
            if chunk.len() >= MAX_CHUNK {
                break;
            }
        }
        ::metrics::counter!(metrics::EVENTS_SENT).increment(sent);
        let skipped = frames.iter().take_while(|f| f.offset <= after).count() as u64;
        let phase = Phase::Live { cursor: next + skipped, generation, after };
        match single {
            Some(bytes) => Step::Send(bytes, phase),
            None if chunk.is_empty() => Step::Go(phase),
            None => Step::Send(chunk.freeze(), phase),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Replaying(r) => Self::finish_replay(r),
            Phase::Queued { .. } => {
                ::metrics::gauge!(metrics::REPLAYS_WAITING).decrement(1.0);
            }
            _ => {}
        }
        let reason = self.ended.as_ref().map(End::reason).unwrap_or_else(|| "the client left".into());
        tracing::info!(subscriber = %self.subscription.label, reason = %reason, "subscriber disconnected");
    }
}

fn replay_end(error: ReplayError) -> End {
    match error {
        ReplayError::Lost => End::BrokerLost,
        other => End::ReplayFailed(other.to_string()),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
