//! The stream transport: row events to a RabbitMQ stream over the stream protocol, written
//! exactly once across restarts.
//!
//! The publisher is named after the slot, and each event carries a publishing id, strictly
//! increasing from 1, with its place in the WAL ([`Position`]: commit LSN and number in the
//! transaction) as the `lsn` and `seq` application properties, and the id as `publishing_id`.
//! At connect the broker says the last id it stored for the name; that message, read back from
//! the stream's last chunk, gives the last position stored. When the slot resumes before that
//! position's transaction (a crash between the broker's confirm and PostgreSQL's), the events
//! replayed up to it are already in the stream: they are confirmed without being sent, the others
//! get the ids that follow. The replay must meet the stored position itself: if it passes it, the
//! WAL and the stream tell different histories (a restored database, a new slot of the same
//! name, changed table filters) and the producer stops rather than guess. Ids never depend on how batches were cut or pipelined, and
//! one ordered connection sends them: concurrent batches cannot interleave ids.
//!
//! Snapshot rows have no place in the WAL: an unnamed publisher writes them, without
//! deduplication.

use std::collections::VecDeque;
use std::time::Duration;

use pgevents_event::{Action, Lsn, HEADER_ACTION, HEADER_LSN};
use pgevents_retry::ErrorKind;
use pgevents_stream::{property, Dedup, OutgoingStreamMessage, StreamError, StreamPublisher};
use tokio::sync::watch;

use super::numbers::Numbers;
use super::{Confirm, Flow, Kind, Message, Position, PublishError, Transport};
use crate::config::StreamOutputConfig;

/// Application properties of the position and the publishing id (besides the event's headers).
pub const PROPERTY_SEQ: &str = "seq";
pub const PROPERTY_PUBLISHING_ID: &str = "publishing_id";
/// How long the stream's last chunk may take to arrive when read back at connect.
const TAIL_WAIT: Duration = Duration::from_secs(3);
/// Messages per publish frame.
const BATCH_SIZE: usize = 512;

/// What the stream already holds of this publisher's events.
enum Resume {
    /// Nothing to skip: every event is new to the stream.
    Fresh,
    /// The stream holds every event up to `last`; a backfill row (whose chunk a replay does not
    /// read again) may be missing from the replay.
    After { last: Position, backfill_row: bool },
}

pub struct StreamOutput {
    publisher: StreamPublisher,
    /// The next publishing id (named publisher); `None`: not deduplicated.
    next_id: Option<u64>,
    resume: Resume,
    next_number: u64,
    numbers: Numbers,
    /// Confirms of events skipped because the stream holds them.
    ready: VecDeque<Confirm>,
    flow: (watch::Sender<Flow>, watch::Receiver<Flow>),
}

impl StreamOutput {
    /// Connects to the configured stream (declared if missing); deduplicated by the slot's name
    /// when `dedup`, for a slot that resumes from `start`.
    pub async fn connect(
        config: &StreamOutputConfig,
        slot: &str,
        dedup: bool,
        start: Lsn,
    ) -> Result<StreamOutput, PublishError> {
        let name = format!("pgevents {} ({slot})", if dedup { "producer" } else { "producer snapshot" });
        let probe = pgevents_stream::client(&config.url, &name).await?;
        let declared = pgevents_stream::ensure_stream(&probe, &config.stream, &config.retention).await;
        let _ = probe.close().await;
        declared?;
        let mode = if dedup { Dedup::Named(producer_name(slot)) } else { Dedup::Off };
        let publisher = StreamPublisher::connect(&config.url, &config.stream, mode, &name, BATCH_SIZE).await?;
        let last_id = publisher.last_stored_id();
        let resume = if dedup && last_id > 0 { read_last(config, last_id, &name).await? } else { Resume::Fresh };
        // A slot confirmed past the last stored event's transaction replays none of it.
        let resume = match resume {
            Resume::After { last, .. } if start >= last.commit => Resume::Fresh,
            resume => resume,
        };
        if let Resume::After { last, .. } = &resume {
            tracing::info!(stream = %config.stream, last_publishing_id = last_id, commit_lsn = %last.commit, seq = last.seq, "the stream holds this slot's events up to here; those replayed up to it are not sent again");
        }
        Ok(StreamOutput {
            publisher,
            next_id: dedup.then_some(last_id + 1),
            resume,
            next_number: 1,
            numbers: Numbers::default(),
            ready: VecDeque::new(),
            flow: watch::channel(Flow::Running),
        })
    }

    /// Whether the stream holds `message` already.
    fn stored(&mut self, message: &Message) -> Result<bool, PublishError> {
        let (Resume::After { last, backfill_row }, Kind::Event { position: Some(position), .. }) =
            (&self.resume, message.kind)
        else {
            return Ok(false);
        };
        match position.cmp(last) {
            std::cmp::Ordering::Less => Ok(true),
            std::cmp::Ordering::Equal => {
                self.resume = Resume::Fresh;
                Ok(true)
            }
            std::cmp::Ordering::Greater if *backfill_row => {
                self.resume = Resume::Fresh;
                Ok(false)
            }
            std::cmp::Ordering::Greater => Err(diverged(*last, position)),
        }
    }
}

/// The deduplication name of the slot's publisher.
pub fn producer_name(slot: &str) -> String {
    format!("pgevents:{slot}")
}

fn diverged(last: Position, position: Position) -> PublishError {
    PublishError::Stream(StreamError::Operation {
        stream: String::new(),
        operation: "resume exactly once",
        reason: format!(
            "the stream's last event of this slot (commit {} #{}) is not the event the slot replays at that place (commit {} #{}): \
             the database and the stream tell different histories (a restored database, a new slot of the same name, or table \
             filters changed while events were in flight); start once with the previous filters, or publish to a new --stream",
            last.commit, last.seq, position.commit, position.seq
        ),
        kind: ErrorKind::Config,
    })
}

/// The position and body of the message the broker stored last under the slot's name.
async fn read_last(config: &StreamOutputConfig, last_id: u64, name: &str) -> Result<Resume, PublishError> {
    let found = pgevents_stream::tail::find_in_last_chunk(
        &config.url,
        &config.stream,
        PROPERTY_PUBLISHING_ID,
        &last_id.to_string(),
        name,
        TAIL_WAIT,
    )
    .await?;
    let unreadable = |why: &str| {
        PublishError::Stream(StreamError::Operation {
            stream: config.stream.clone(),
            operation: "resume exactly once",
            reason: format!(
                "RabbitMQ stored publishing id {last_id} for this slot, but {why}; the stream must be written by this producer only \
                 (not bound to an exchange, not published to by another client)"
            ),
            kind: ErrorKind::Config,
        })
    };
    let Some((_, message)) = found else {
        return Err(unreadable("the stream's last chunk does not hold that message"));
    };
    let commit = property(&message, HEADER_LSN).and_then(|lsn| lsn.parse::<Lsn>().ok());
    let seq = property(&message, PROPERTY_SEQ).and_then(|seq| seq.parse::<u64>().ok());
    let (Some(commit), Some(seq)) = (commit, seq) else {
        return Err(unreadable("that message has no readable lsn and seq properties"));
    };
    let backfill_row = property(&message, HEADER_ACTION).as_deref() == Some(Action::Read.code());
    Ok(Resume::After { last: Position { commit, seq }, backfill_row })
}

/// The stream message of an event: its headers as application properties; when deduplicated,
/// with what resuming reads back whatever `--headers` says (`lsn`, `seq`, `publishing_id`, and
/// `action`, which tells a backfill row).
fn outgoing(message: Message, publishing_id: Option<u64>) -> OutgoingStreamMessage {
    let mut application_properties = message.headers;
    if let (Kind::Event { position: Some(position), action }, Some(id)) = (message.kind, publishing_id) {
        let has = |properties: &[(std::borrow::Cow<'static, str>, String)], name: &str| {
            properties.iter().any(|(n, _)| n == name)
        };
        if !has(&application_properties, HEADER_LSN) {
            application_properties.push((HEADER_LSN.into(), position.commit.to_string()));
        }
        if !has(&application_properties, HEADER_ACTION) {
            application_properties.push((HEADER_ACTION.into(), action.code().to_owned()));
        }
        application_properties.push((PROPERTY_SEQ.into(), position.seq.to_string()));
        application_properties.push((PROPERTY_PUBLISHING_ID.into(), id.to_string()));
    }
    OutgoingStreamMessage {
        body: message.body,
        message_id: message.message_id,
        content_type: Some(message.content_type),
        content_encoding: message.content_encoding,
        application_properties,
    }
}

impl Transport for StreamOutput {
    async fn publish(&mut self, message: Message) -> Result<u64, PublishError> {
        let number = self.next_number;
        self.next_number += 1;
        if self.stored(&message)? {
            self.ready.push_back(Confirm { seq: number, multiple: false });
            return Ok(number);
        }
        let publishing_id = self.next_id;
        let sent = self.publisher.send(outgoing(message, publishing_id), publishing_id).await?;
        if let Some(id) = &mut self.next_id {
            *id += 1;
        }
        self.numbers.push(sent, number);
        Ok(number)
    }

    async fn next_confirm(&mut self) -> Result<Confirm, PublishError> {
        loop {
            if let Some(confirm) = self.ready.pop_front() {
                return Ok(confirm);
            }
            let sent = self.publisher.next_confirm().await?;
            for number in self.numbers.confirmed(Confirm { seq: sent, multiple: false })? {
                self.ready.push_back(Confirm { seq: number, multiple: false });
            }
        }
    }

    fn flow(&self) -> watch::Receiver<Flow> {
        self.flow.1.clone()
    }

    async fn close(self) {
        self.publisher.close().await;
    }
}
