//! The watermark windows of a backfill (DBLog: Andreakis and Papapanagiotou, 2020), as the
//! reader sees them in commit order. Pure: no I/O.
//!
//! For each chunk the backfill writes a low watermark, reads the chunk (the next rows in key
//! order), then writes a high watermark; both are signed logical messages in transactions of
//! their own. Every transaction that commits between the two (and is published) may have
//! changed a row of the chunk after, or before, the chunk's read: such rows are dropped from the
//! chunk, since the stream carries their change in its place. The rest of the chunk is published
//! at the high watermark's position. Folding the events per key in order then gives the table's
//! state: a row's last event is either a change (later than any read of it) or a read taken
//! after its last change.
//!
//! What cannot be matched by key (a TRUNCATE of the table, a change whose key is not in the
//! event, more changed keys than the window holds) makes the window *dirty*: the whole chunk is
//! read again in a new window.
//!
//! One race is not visible in the WAL's order: a transaction writes its commit record before
//! the low watermark's, yet becomes visible to other sessions a moment later (it was still
//! waiting for the WAL flush), after the chunk's read took its snapshot. Its change is then in
//! the stream before the window, and the read missed it. The read therefore takes the list of
//! transactions in progress in its snapshot; the windows remember which tables the latest
//! transactions committed before each low watermark changed; should one of those in progress
//! have committed before the low watermark and changed the table, the chunk is read again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use pgevents_decode::{RowChange, TableRef, Tuple};
use pgevents_event::Action;
use serde::{Deserialize, Serialize};

/// Transactions remembered (their id and the tables they changed) to check the in-progress list
/// of a chunk's read against.
pub const RECENT_TRANSACTIONS: usize = 65_536;

/// Identifies one chunk of one backfill, read by one run of the backfill task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkId {
    pub backfill: i64,
    pub chunk: i64,
    pub run: u64,
}

/// Which side of a chunk's read a watermark is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    Low,
    High,
}

/// The payload of a watermark message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// Every producer on the database reads every watermark: each keeps to its own slot's.
    pub slot: String,
    #[serde(flatten)]
    pub id: ChunkId,
    pub edge: Edge,
    /// `schema.table`, for the low watermark.
    #[serde(default)]
    pub table: Option<String>,
}

/// A row's identity: its primary key values as the events write them.
pub type Key = Vec<u8>;

/// The key of a tuple (`None` when a key column is missing or unchanged-TOAST).
pub fn key_of(change: &RowChange, tuple: &Tuple) -> Option<Key> {
    let mut key = Vec::with_capacity(32);
    let mut hint = 0;
    for column in change.primary_key.keys_json() {
        let i = tuple.find(column, hint)?;
        if tuple.is_unchanged(i) {
            return None;
        }
        let value = tuple.value(i);
        key.extend_from_slice(&(value.len() as u32).to_le_bytes());
        key.extend_from_slice(value);
        hint = i + 1;
    }
    (!change.primary_key.columns().is_empty()).then_some(key)
}

/// The keys a change touches: old and new, or `None` when one cannot be known.
pub fn keys_touched(change: &RowChange) -> Option<Vec<Key>> {
    let mut keys = Vec::with_capacity(2);
    match change.action {
        Action::Insert | Action::Read => keys.push(key_of(change, &change.new)?),
        Action::Delete => keys.push(key_of(change, &change.old)?),
        Action::Update => {
            // Without a key change the old tuple is empty (REPLICA IDENTITY DEFAULT).
            if !change.old.is_empty() {
                keys.push(key_of(change, &change.old)?);
            }
            match key_of(change, &change.new) {
                Some(key) => keys.push(key),
                None if !change.old.is_empty() => {}
                None => return None,
            }
        }
        Action::Truncate => return None,
    }
    Some(keys)
}

/// What happened to a table within one window.
#[derive(Debug, Default)]
struct Window {
    table: String,
    changed: HashSet<Key>,
    dirty: Option<String>,
    /// How many transactions had committed when it opened.
    opened_at: u64,
}

/// What a transaction did, held until it commits (a skipped transaction publishes no change, so
/// it changes no window): the tables it changed, and the keys it changed in tables with an open
/// window.
#[derive(Debug, Default)]
pub struct Pending {
    tables: Vec<Arc<TableRef>>,
    keys: HashMap<String, Vec<Key>>,
    /// Tables changed in a way no key can describe, and why.
    unknown: HashMap<String, String>,
}

impl Pending {
    /// (Noted for every change, windows open or not: a transaction that commits just before a
    /// low watermark is one the check in [`Windows::close`] looks for. The decoder shares one
    /// `TableRef` per table, so this is mostly a pointer comparison.)
    fn touched(&mut self, table: &Arc<TableRef>) {
        if !self.tables.iter().any(|t| Arc::ptr_eq(t, table) || t.qualified == table.qualified) {
            self.tables.push(table.clone());
        }
    }
}

/// The open windows, and the latest transactions.
#[derive(Debug)]
pub struct Windows {
    open: HashMap<ChunkId, Window>,
    /// More changed keys than this in one window makes it dirty (memory stays bounded).
    max_keys: usize,
    /// `(xid, tables changed)` of the latest published transactions, oldest first.
    recent: VecDeque<(u32, Vec<Arc<TableRef>>)>,
    /// Transactions committed so far (the position of the next in `recent`).
    committed: u64,
}

/// How a chunk is to be published, decided at its high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Publish the chunk's rows but those whose keys changed in the window.
    Publish { changed: HashSet<Key> },
    /// Read the chunk again: the reason.
    Retry(String),
    /// No window was open for it (opened before this session): read it again.
    Unknown,
}

impl Windows {
    pub fn new(max_keys: usize) -> Windows {
        Windows { open: HashMap::new(), max_keys, recent: VecDeque::new(), committed: 0 }
    }

    /// Whether a window is open on `table` (its changes must then be noted).
    pub fn watches(&self, table: &str) -> bool {
        self.open.values().any(|w| w.table == table)
    }

    /// A low watermark: from now on, changes of `table` are noted for the chunk. Windows of
    /// other runs (an earlier session's, whose high watermark may never come) are closed.
    pub fn open(&mut self, id: ChunkId, table: String) {
        self.open.retain(|other, _| other.run == id.run);
        self.open.insert(id, Window { table, opened_at: self.committed, ..Window::default() });
    }

    /// Notes a change of the transaction being read (its keys if a window watches its table).
    pub fn note(&self, pending: &mut Pending, change: &RowChange) {
        pending.touched(&change.table);
        let table = &change.table.qualified;
        if !self.watches(table) {
            return;
        }
        let keys = pending.keys.entry(table.clone()).or_default();
        match keys_touched(change) {
            Some(touched) => keys.extend(touched),
            None => {
                let why = format!(
                    "a {:?} of {table} whose primary key is not in the event (replica identity)",
                    change.action
                );
                pending.unknown.entry(table.clone()).or_insert(why);
            }
        }
    }

    /// Notes a TRUNCATE of the transaction being read.
    pub fn note_truncate(&self, pending: &mut Pending, table: &Arc<TableRef>) {
        pending.touched(table);
        let table = table.qualified.as_str();
        if self.watches(table) {
            pending.keys.entry(table.to_owned()).or_default();
            pending.unknown.entry(table.to_owned()).or_insert_with(|| format!("a TRUNCATE of {table}"));
        }
    }

    /// The transaction `xid` committed and was published: its changes count in every open
    /// window, and it is remembered.
    pub fn commit(&mut self, xid: u32, pending: Pending) {
        let max_keys = self.max_keys;
        for window in self.open.values_mut() {
            let Some(keys) = pending.keys.get(&window.table) else { continue };
            if let Some(why) = pending.unknown.get(&window.table) {
                window.dirty.get_or_insert_with(|| why.clone());
            }
            window.changed.extend(keys.iter().cloned());
            if window.changed.len() > max_keys {
                window
                    .dirty
                    .get_or_insert_with(|| format!("more than {max_keys} rows changed during the chunk's read"));
                window.changed.clear();
            }
        }
        if !pending.tables.is_empty() {
            if self.recent.len() == RECENT_TRANSACTIONS {
                self.recent.pop_front();
            }
            self.recent.push_back((xid, pending.tables));
        }
        self.committed += 1;
    }

    /// A high watermark: the window closes. `in_progress` lists the transactions the chunk's
    /// read did not see yet.
    pub fn close(&mut self, id: ChunkId, in_progress: &HashSet<u32>) -> Verdict {
        let Some(window) = self.open.remove(&id) else {
            return Verdict::Unknown;
        };
        if let Some(why) = window.dirty {
            return Verdict::Retry(why);
        }
        if !in_progress.is_empty() {
            // `recent` starts at transaction number `forgotten`; those before the low watermark
            // are the first `opened_at - forgotten` of it.
            let forgotten = self.committed - self.recent.len() as u64;
            if window.opened_at > 0 && forgotten >= window.opened_at {
                return Verdict::Retry("too many transactions committed during the chunk to check its read".into());
            }
            let before_low = window.opened_at.saturating_sub(forgotten) as usize;
            let missed =
                self.recent.iter().take(before_low).any(|(xid, tables)| {
                    in_progress.contains(xid) && tables.iter().any(|t| t.qualified == window.table)
                });
            if missed {
                return Verdict::Retry(
                    "a change committed just before the low watermark was not yet visible to the read".into(),
                );
            }
        }
        Verdict::Publish { changed: window.changed }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use pgevents_decode::{PrimaryKey, TableRef};
    use proptest::prelude::*;

    use super::*;

    fn tuple(id: Option<i64>, value: i64) -> Tuple {
        let mut t = Tuple::with_capacity(2, 32);
        if let Some(id) = id {
            t.push_named("id", |out| out.extend_from_slice(id.to_string().as_bytes()));
        }
        t.push_named("v", |out| out.extend_from_slice(value.to_string().as_bytes()));
        t
    }

    fn change(action: Action, old: Option<i64>, new: Option<(i64, i64)>) -> RowChange {
        RowChange {
            table: Arc::new(TableRef::new("public", "t")),
            action,
            old: old.map(|id| tuple(Some(id), 0)).unwrap_or_default(),
            new: new.map(|(id, v)| tuple(Some(id), v)).unwrap_or_default(),
            primary_key: Arc::new(PrimaryKey::new(vec!["id".into()])),
        }
    }

    fn key(id: i64) -> Key {
        key_of(&change(Action::Insert, None, Some((id, 0))), &tuple(Some(id), 0)).unwrap()
    }

    #[test]
    fn keys_of_every_action() {
        assert_eq!(keys_touched(&change(Action::Insert, None, Some((1, 5)))), Some(vec![key(1)]));
        assert_eq!(keys_touched(&change(Action::Update, None, Some((1, 6)))), Some(vec![key(1)]));
        assert_eq!(keys_touched(&change(Action::Update, Some(1), Some((2, 6)))), Some(vec![key(1), key(2)]));
        assert_eq!(keys_touched(&change(Action::Delete, Some(3), None)), Some(vec![key(3)]));
        let mut keyless = change(Action::Update, None, Some((1, 6)));
        keyless.new = tuple(None, 6);
        assert_eq!(keys_touched(&keyless), None, "a key not in the event cannot be matched");
    }

    #[test]
    fn a_skipped_transaction_changes_no_window_and_a_truncate_dirties_it() {
        let id = ChunkId { backfill: 1, chunk: 0, run: 1 };
        let mut windows = Windows::new(100);
        windows.open(id, "public.t".into());
        let mut skipped = Pending::default();
        windows.note(&mut skipped, &change(Action::Insert, None, Some((1, 5))));
        drop(skipped);
        let mut published = Pending::default();
        windows.note(&mut published, &change(Action::Delete, Some(2), None));
        windows.commit(1, published);
        assert_eq!(windows.close(id, &HashSet::new()), Verdict::Publish { changed: HashSet::from([key(2)]) });
        windows.open(id, "public.t".into());
        let mut truncated = Pending::default();
        windows.note_truncate(&mut truncated, &Arc::new(TableRef::new("public", "t")));
        windows.commit(2, truncated);
        assert!(matches!(windows.close(id, &HashSet::new()), Verdict::Retry(why) if why.contains("TRUNCATE")));
        assert_eq!(windows.close(id, &HashSet::new()), Verdict::Unknown);
    }

    #[test]
    fn too_many_changes_make_the_window_dirty() {
        let id = ChunkId { backfill: 1, chunk: 0, run: 1 };
        let mut windows = Windows::new(2);
        windows.open(id, "public.t".into());
        let mut busy = Pending::default();
        for n in 0..3 {
            windows.note(&mut busy, &change(Action::Insert, None, Some((n, 0))));
        }
        windows.commit(3, busy);
        assert!(matches!(windows.close(id, &HashSet::new()), Verdict::Retry(why) if why.contains("more than 2")));
    }

    #[test]
    fn a_commit_before_the_low_watermark_the_read_did_not_see_makes_it_read_again() {
        let id = ChunkId { backfill: 1, chunk: 0, run: 1 };
        let mut windows = Windows::new(100);
        let mut before = Pending::default();
        windows.note(&mut before, &change(Action::Update, None, Some((4, 1))));
        windows.commit(77, before);
        let mut other = Pending::default();
        let mut elsewhere = change(Action::Insert, None, Some((5, 1)));
        elsewhere.table = Arc::new(TableRef::new("public", "u"));
        windows.note(&mut other, &elsewhere);
        windows.commit(78, other);
        windows.open(id, "public.t".into());
        let mut after = Pending::default();
        windows.note(&mut after, &change(Action::Update, None, Some((6, 1))));
        windows.commit(79, after);
        assert!(
            matches!(windows.close(id, &HashSet::from([77])), Verdict::Retry(why) if why.contains("not yet visible"))
        );
        windows.open(id, "public.t".into());
        assert!(
            matches!(windows.close(id, &HashSet::from([78, 80])), Verdict::Publish { .. }),
            "another table, or unknown"
        );
    }

    /// One step of a history: a writer's transaction, or a step of the backfill.
    #[derive(Debug, Clone)]
    enum Step {
        Write(Vec<(i64, Option<i64>)>),
        Backfill,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let write = prop::collection::vec((0..12i64, prop::option::of(0..100i64)), 1..4).prop_map(Step::Write);
        prop::collection::vec(prop_oneof![3 => write, 2 => Just(Step::Backfill)], 1..80)
    }

    proptest! {
        /// A table written by transactions (inserts, updates, deletes) while a backfill reads it
        /// in chunks of 3 keys, each chunk's low watermark, read and high watermark falling at
        /// random points among the writes: folding the published events per key in order, from
        /// nothing, gives the table's final state.
        #[test]
        fn folding_the_events_gives_the_table(
            initial in prop::collection::btree_map(0..12i64, 0..100i64, 0..12),
            steps in steps(),
        ) {
            let mut table: BTreeMap<i64, i64> = initial;
            let mut folded: BTreeMap<i64, i64> = BTreeMap::new();
            let mut windows = Windows::new(1000);
            let (mut chunk, mut last_key, mut done, mut phase) = (0, -1, false, 0);
            let mut held: Vec<(i64, i64)> = Vec::new();
            let mut steps = steps;
            steps.extend(std::iter::repeat_n(Step::Backfill, 60));
            for step in steps {
                match step {
                    Step::Write(writes) => {
                        let mut pending = Pending::default();
                        for (k, v) in writes {
                            let c = match (table.contains_key(&k), v) {
                                (false, None) => continue,
                                (true, None) => change(Action::Delete, Some(k), None),
                                (true, Some(v)) => change(Action::Update, None, Some((k, v))),
                                (false, Some(v)) => change(Action::Insert, None, Some((k, v))),
                            };
                            windows.note(&mut pending, &c);
                            match v {
                                Some(v) => { table.insert(k, v); folded.insert(k, v); }
                                None => { table.remove(&k); folded.remove(&k); }
                            }
                        }
                        windows.commit(0, pending);
                    }
                    Step::Backfill if done => {}
                    Step::Backfill => {
                        let id = ChunkId { backfill: 1, chunk, run: 1 };
                        match phase {
                            0 => windows.open(id, "public.t".into()),
                            1 => held = table.range(last_key + 1..).take(3).map(|(k, v)| (*k, *v)).collect(),
                            _ => {
                                let Verdict::Publish { changed } = windows.close(id, &HashSet::new()) else {
                                    return Err(TestCaseError::fail("the window was not clean"));
                                };
                                for (k, v) in &held {
                                    if !changed.contains(&key(*k)) {
                                        folded.insert(*k, *v);
                                    }
                                }
                                done = held.len() < 3;
                                if let Some((k, _)) = held.last() {
                                    last_key = *k;
                                }
                                chunk += 1;
                            }
                        }
                        phase = (phase + 1) % 3;
                    }
                }
            }
            prop_assert!(done, "the backfill finished");
            prop_assert_eq!(folded, table);
        }
    }
}
