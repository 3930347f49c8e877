//! The stream transport: row events to a RabbitMQ stream over the stream protocol, written
//! exactly once across restarts.
//!
//! The publisher is named after the database system, the database and the slot, and each event
//! carries a publishing id, strictly increasing from 1, with its place in the WAL ([`Position`]:
//! commit LSN and number in the transaction) as the `lsn` and `seq` application properties, the
//! id as `publishing_id` and the name as `producer`. At connect the broker says the last id it
//! stored for the name; that message, read back from the end of the stream, gives the last
//! position stored. When the slot resumes before that
//! position's transaction (a crash between the broker's confirm and PostgreSQL's), the events
//! replayed up to it are already in the stream: they are confirmed without being sent, the others
//! get the ids that follow. The replay must meet the stored position itself: if it passes it, the
//! WAL and the stream tell different histories (a restored database, a new slot of the same
//! name, changed table filters) and the producer stops rather than guess. Ids never depend on how batches were cut or pipelined, and
//! one ordered connection sends them: concurrent batches cannot interleave ids.
//!
//! Snapshot rows have no place in the WAL: an unnamed publisher writes them, without
//! deduplication.

use std::time::Duration;

use pgevents_amqp::AckWindow;
use pgevents_event::{Action, Lsn, HEADER_ACTION, HEADER_LSN};
use pgevents_retry::ErrorKind;
use pgevents_stream::{property, Dedup, OutgoingStreamMessage, StreamError, StreamPublisher};
use tokio::sync::watch;

use super::numbers::Numbers;
use super::outputs::Role;
use super::{Confirm, Flow, Kind, Message, Position, PublishError, Transport};
use crate::config::StreamOutputConfig;

/// Application properties of the position, the publishing id and the publisher's name (besides
/// the event's headers).
pub const PROPERTY_SEQ: &str = "seq";
pub const PROPERTY_PUBLISHING_ID: &str = "publishing_id";
pub const PROPERTY_PRODUCER: &str = "producer";
/// How long a read of the stream back may go without a message before its range counts as read.
const TAIL_WAIT: Duration = Duration::from_secs(2);
/// How long a stream operation at connect or close may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The deduplication name (the slot's changes); `None` for snapshot rows.
    name: Option<String>,
    resume: Resume,
    next_number: u64,
    /// Publishing ids and the numbers of their messages.
    numbers: Numbers,
    /// Which numbers are confirmed (skipped ones at once); the settled prefix is handed out as
    /// one confirm.
    window: AckWindow,
    reported: u64,
    flow: (watch::Sender<Flow>, watch::Receiver<Flow>),
}

impl StreamOutput {
    /// Connects to the configured stream (declared if missing): for the slot's changes
    /// deduplicated by their publisher's name, resuming after what the stream holds; for snapshot
    /// rows without a name. `send_timeout`: how long publishing one message may wait.
    pub async fn connect(
        config: &StreamOutputConfig,
        slot: &str,
        role: &Role,
        send_timeout: Duration,
    ) -> Result<StreamOutput, PublishError> {
        let connection = format!("pgevents {} ({slot})", role.connection());
        let probe = pgevents_stream::client(&config.url, &connection).await?;
        let declared =
            within("declare the stream", pgevents_stream::ensure_stream(&probe, &config.stream, &config.retention))
                .await;
        let _ = within("close", async { probe.close().await.map_err(|e| StreamError::Closed(e.to_string())) }).await;
        declared?;
        let (mode, name) = match role {
            Role::Changes { name, .. } => (Dedup::Named(name.clone()), Some(name.clone())),
            Role::Snapshot => (Dedup::Off, None),
        };
        let connecting = StreamPublisher::connect(&config.url, &config.stream, mode, &connection, send_timeout);
        let publisher = within("declare the publisher", connecting).await?;
        let last_id = publisher.last_stored_id();
        let resume = match role {
            Role::Changes { name, start, wal_end } if last_id > 0 => {
                let resume = read_last(config, last_id, name, &connection).await?;
                believable(&resume, *wal_end, &config.stream)?;
                replayed(resume, *start)
            }
            _ => Resume::Fresh,
        };
        if let Resume::After { last, .. } = &resume {
            tracing::info!(stream = %config.stream, last_publishing_id = last_id, commit_lsn = %last.commit, seq = last.seq, "the stream holds this slot's events up to here; those replayed up to it are not sent again");
        }
        Ok(StreamOutput {
            publisher,
            name,
            resume,
            next_number: 1,
            numbers: Numbers::default(),
            window: AckWindow::default(),
            reported: 0,
            flow: watch::channel(Flow::Running),
        })
    }
}

/// Whether the stream holds `message` already, given what it holds (`resume`, which becomes
/// [`Resume::Fresh`] once the replay passed the last stored event).
fn stored_in(resume: &mut Resume, message: &Message) -> Result<bool, PublishError> {
    let (Resume::After { last, backfill_row }, Kind::Event { position: Some(position), .. }) = (&*resume, message.kind)
    else {
        return Ok(false);
    };
    match position.cmp(last) {
        std::cmp::Ordering::Less => Ok(true),
        std::cmp::Ordering::Equal => {
            *resume = Resume::Fresh;
            Ok(true)
        }
        std::cmp::Ordering::Greater if *backfill_row => {
            *resume = Resume::Fresh;
            Ok(false)
        }
        std::cmp::Ordering::Greater => Err(diverged(*last, position)),
    }
}

/// The stream's word for the last stored position is taken only within the database's WAL: a
/// position after its end was written by someone else (RabbitMQ does not tell a stream's writers
/// apart), and believing it would skip every change up to it.
fn believable(resume: &Resume, wal_end: Lsn, stream: &str) -> Result<(), PublishError> {
    match resume {
        Resume::After { last, .. } if last.commit > wal_end => Err(PublishError::Stream(StreamError::Operation {
            stream: stream.to_owned(),
            operation: "resume exactly once",
            reason: format!(
                "the last message stored under this producer's name claims commit {}, after the end of the database's WAL ({wal_end}): \
                 someone else wrote it (give write permission on the stream to the producer's RabbitMQ user only) or the database \
                 is not the one this stream was written from; publish to a new --stream",
                last.commit
            ),
            kind: ErrorKind::Config,
        })),
        _ => Ok(()),
    }
}

/// What of the stream's events a slot resuming from `start` replays: PostgreSQL replays every
/// transaction whose commit record starts at or after `start`, so the last stored event's
/// transaction is replayed unless `start` is past its commit record.
fn replayed(resume: Resume, start: Lsn) -> Resume {
    match resume {
        Resume::After { last, .. } if start > last.commit => Resume::Fresh,
        resume => resume,
    }
}

/// The deduplication name of a slot's publisher: the database system's identifier (the same on
/// its replicas and restored copies), the database and the slot, so that producers of other
/// databases writing to the same stream keep names of their own.
pub fn producer_name(system_id: &str, database: &str, slot: &str) -> String {
    format!("pgevents:{system_id}:{database}:{slot}")
}

/// `operation` within [`OPERATION_TIMEOUT`].
async fn within<T>(
    operation: &'static str,
    future: impl std::future::Future<Output = Result<T, StreamError>>,
) -> Result<T, PublishError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PublishError::Stream(StreamError::Operation {
            stream: String::new(),
            operation,
            reason: format!("no answer within {}s", OPERATION_TIMEOUT.as_secs()),
            kind: ErrorKind::Transient,
        })),
    }
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

/// The position of the message the broker stored last under the publisher's `name`.
async fn read_last(
    config: &StreamOutputConfig,
    last_id: u64,
    name: &str,
    connection: &str,
) -> Result<Resume, PublishError> {
    let id = last_id.to_string();
    let wanted = |message: &pgevents_stream::Message| {
        property(message, PROPERTY_PUBLISHING_ID).as_deref() == Some(id.as_str())
            && property(message, PROPERTY_PRODUCER).as_deref() == Some(name)
    };
    let found = pgevents_stream::tail::find_last(&config.url, &config.stream, wanted, connection, TAIL_WAIT).await?;
    let unreadable = |why: String, kind: ErrorKind| {
        PublishError::Stream(StreamError::Operation {
            stream: config.stream.clone(),
            operation: "resume exactly once",
            reason: format!("RabbitMQ stored publishing id {last_id} for publisher {name:?}, but {why}"),
            kind,
        })
    };
    let Some((_, message)) = found else {
        // A replica behind its leader may not have it yet: reading again later can help.
        return Err(unreadable(
            format!(
                "no message of it within {} messages of the stream's end; the stream may not have reached this node yet",
                pgevents_stream::tail::MAX_SCAN
            ),
            ErrorKind::Transient,
        ));
    };
    let commit = property(&message, HEADER_LSN).and_then(|lsn| lsn.parse::<Lsn>().ok());
    let seq = property(&message, PROPERTY_SEQ).and_then(|seq| seq.parse::<u64>().ok());
    let (Some(commit), Some(seq)) = (commit, seq) else {
        return Err(unreadable("that message has no readable lsn and seq properties".into(), ErrorKind::Config));
    };
    let backfill_row = property(&message, HEADER_ACTION).as_deref() == Some(Action::Read.code());
    Ok(Resume::After { last: Position { commit, seq }, backfill_row })
}

/// The stream message of an event: its headers as application properties; when deduplicated,
/// with what resuming reads back whatever `--headers` says (`lsn`, `seq`, `publishing_id`, and
/// `action`, which tells a backfill row).
fn outgoing(message: Message, named: Option<(&str, u64)>) -> OutgoingStreamMessage {
    let mut application_properties = message.headers;
    if let (Kind::Event { position: Some(position), action }, Some((name, id))) = (message.kind, named) {
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
        application_properties.push((PROPERTY_PRODUCER.into(), name.to_owned()));
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
        self.window.published(number);
        if stored_in(&mut self.resume, &message)? {
            self.window.ack(number, false)?;
            return Ok(number);
        }
        let named = self.name.as_deref().map(|name| (name, self.publisher.next_id()));
        let id = self.publisher.send(outgoing(message, named)).await?;
        self.numbers.push(id, number);
        Ok(number)
    }

    async fn flush(&mut self) -> Result<(), PublishError> {
        Ok(self.publisher.flush().await?)
    }

    async fn next_confirm(&mut self) -> Result<Confirm, PublishError> {
        loop {
            if self.window.acked_through() > self.reported {
                self.reported = self.window.acked_through();
                return Ok(Confirm { seq: self.reported, multiple: true });
            }
            let ids = self.publisher.next_confirm().await?;
            let window = &mut self.window;
            for id in ids {
                self.numbers.confirmed(Confirm { seq: id, multiple: false }, |number| {
                    // Numbers hands out only numbers published here.
                    let _ = window.ack(number, false);
                })?;
            }
        }
    }

    fn flow(&self) -> watch::Receiver<Flow> {
        self.flow.1.clone()
    }

    async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.publisher.close()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_at_the_commit_record_replays_its_transaction() {
        let last = Position { commit: Lsn(1000), seq: 3 };
        let stored = || Resume::After { last, backfill_row: false };
        assert!(matches!(replayed(stored(), Lsn(999)), Resume::After { .. }), "before the commit record");
        assert!(matches!(replayed(stored(), Lsn(1000)), Resume::After { .. }), "at it: replayed");
        assert!(matches!(replayed(stored(), Lsn(1001)), Resume::Fresh), "past it: not replayed");
    }

    #[test]
    fn a_stored_position_after_the_wal_is_not_believed() {
        let resume = |commit| Resume::After { last: Position { commit: Lsn(commit), seq: 0 }, backfill_row: false };
        assert!(believable(&resume(900), Lsn(1000), "s").is_ok());
        assert!(believable(&resume(1000), Lsn(1000), "s").is_ok());
        let err = believable(&resume(1001), Lsn(1000), "s").unwrap_err().to_string();
        assert!(err.contains("someone else wrote it"), "{err}");
        assert!(believable(&Resume::Fresh, Lsn(0), "s").is_ok());
    }

    #[test]
    fn replayed_events_up_to_the_stored_one_are_skipped_and_passing_it_is_refused() {
        let last = Position { commit: Lsn(1000), seq: 3 };
        let event = |commit: u64, seq: u64, action: Action| Message {
            kind: Kind::Event { position: Some(Position { commit: Lsn(commit), seq }), action },
            exchange: None,
            routing_key: String::new(),
            message_id: String::new(),
            headers: Vec::new(),
            timestamp: 0,
            content_type: "".into(),
            content_encoding: None,
            app_id: "".into(),
            message_type: None,
            mandatory: None,
            body: Vec::new(),
        };
        let mut resume = Resume::After { last, backfill_row: false };
        assert!(stored_in(&mut resume, &event(900, 7, Action::Insert)).unwrap());
        assert!(stored_in(&mut resume, &event(1000, 2, Action::Insert)).unwrap());
        assert!(stored_in(&mut resume, &event(1000, 3, Action::Insert)).unwrap(), "the stored one itself");
        assert!(!stored_in(&mut resume, &event(1000, 4, Action::Insert)).unwrap(), "then everything is new");
        let mut resume = Resume::After { last, backfill_row: false };
        assert!(stored_in(&mut resume, &event(1200, 0, Action::Insert)).is_err(), "passed without meeting it");
        let mut resume = Resume::After { last, backfill_row: true };
        assert!(!stored_in(&mut resume, &event(1200, 0, Action::Insert)).unwrap(), "a backfill row may be missing");
    }
}
