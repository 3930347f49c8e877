//! Several events at once (`--batch-size`): with a backlog the consumer hands the worker the
//! events already waiting (each of a different row), and their sync SQL work goes to
//! PostgreSQL in a few round trips instead of several per event: the work items of one owner
//! evaluated in one call, the jobs checked as fresh in one query, the jobs of one owner run and
//! recorded in one transaction.
//!
//! An event takes this way only when its work is of that kind (one sync work item, checked,
//! with a checked SQL action, its owner known to may read the event) and every step succeeds
//! for it; otherwise it runs alone, from its start, the way it always has: nothing before the
//! jobs' commit writes anything, and a job that committed is found done when its event runs
//! again. An event with several work items runs alone: each of its work items must see what
//! the one before it wrote.

use std::collections::BTreeMap;
use std::sync::Arc;

use pgevents_actions::{can_run_together, in_halves, EventReaders, Job};
use pgevents_consumer::{IncomingEvent, Together};
use pgevents_rules::access::columns_of;
use pgevents_rules::{Mode, WorkItem};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::evaluate::the_row;
use crate::together::Evaluation;
use crate::worker::{count_event, count_job, document, info, job, Stage};

/// Counter: events of a batch that ran alone instead.
pub const EVENTS_ALONE: &str = "pgevents_worker_events_alone_total";
/// Histogram: events per batch.
pub const BATCH_EVENTS: &str = "pgevents_worker_batch_events";

/// One work item of one event, and its document.
struct Planned {
    event: usize,
    item: Arc<WorkItem>,
    owner: String,
    document: Box<RawValue>,
}

impl Stage {
    pub(crate) async fn handle_batch(&self, events: &[Arc<IncomingEvent>]) -> Vec<Together> {
        metrics::histogram!(BATCH_EVENTS).record(events.len() as f64);
        let mut answers = vec![Together::Done; events.len()];
        let planned = self.plan(events, &mut answers).await;
        let rows = self.evaluate(events, &planned, &mut answers).await;
        let Jobs { events: of_event, jobs, owners } = self.jobs(events, &planned, rows, &answers);
        let readers: Vec<EventReaders> = owners.iter().map(|owner| EventReaders::Checked(owner)).collect();
        let done = self.runner.run_together(&jobs, &readers, self.batch_size).await;
        for (&event, done) in of_event.iter().zip(done) {
            if !done {
                answers[event] = Together::Alone;
            }
        }
        // Counted as when each runs alone: an event that does is counted there.
        let mut matched = vec![false; events.len()];
        for p in &planned {
            matched[p.event] = true;
        }
        for (answer, matched) in answers.iter().zip(matched) {
            match answer {
                Together::Alone => metrics::counter!(EVENTS_ALONE).increment(1),
                Together::Done => count_event(matched),
            }
        }
        for (&event, job) in of_event.iter().zip(&jobs) {
            if answers[event] == Together::Done {
                count_job(&job.work_item, Mode::Sync);
            }
        }
        answers
    }

    /// The work item of each event that can run together with others; any other event is
    /// answered `Alone`, and one that matches no work item is done.
    async fn plan(&self, events: &[Arc<IncomingEvent>], answers: &mut [Together]) -> Vec<Planned> {
        let rules = self.rules.get();
        let mut planned = Vec::new();
        for (index, incoming) in events.iter().enumerate() {
            let event = &incoming.event;
            let items: Vec<&Arc<WorkItem>> = rules.work_items_for(&event.table_name, event.action).collect();
            // Several work items of one event run one after the other (each sees what the one
            // before it wrote): only alone.
            let item = match items.as_slice() {
                [] => continue,
                [item] => *item,
                _ => {
                    answers[index] = Together::Alone;
                    continue;
                }
            };
            let action = rules.action(&item.action);
            let owner = match (&item.problem, &item.owner, item.mode, &action) {
                (None, Some(owner), Mode::Sync, Some(action))
                    if rules.work_item_checked(&item.name) && can_run_together(&rules, action) =>
                {
                    owner.clone()
                }
                _ => {
                    answers[index] = Together::Alone;
                    continue;
                }
            };
            let columns = columns_of([&event.new, &event.old]);
            let refusal = self.rules.access().refusal(&self.evaluator.pool, &owner, &event.table_name, columns);
            match (refusal.await, document(incoming, item).ok()) {
                (Ok(None), Some(document)) => {
                    planned.push(Planned { event: index, item: item.clone(), owner, document })
                }
                _ => answers[index] = Together::Alone,
            }
        }
        planned
    }

    /// The parameters rows of each planned work item (`None` where its event runs alone).
    async fn evaluate(
        &self,
        events: &[Arc<IncomingEvent>],
        planned: &[Planned],
        answers: &mut [Together],
    ) -> Vec<Option<Vec<Map<String, Value>>>> {
        let mut rows: Vec<Option<Vec<Map<String, Value>>>> = vec![None; planned.len()];
        let mut by_owner: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (index, p) in planned.iter().enumerate() {
            // Without a filter and a query, the parameters are the event's row.
            if p.item.filter.is_none() && p.item.query.is_none() {
                rows[index] = Some(the_row(&events[p.event].event));
            } else {
                by_owner.entry(p.owner.as_str()).or_default().push(index);
            }
        }
        // The owners' calls at the same time: one owner's slow rules do not hold the others'. A
        // refused call is split in halves (`in_halves`): an event that fails costs a few calls.
        let calls = by_owner.iter().map(|(owner, indexes)| async move {
            in_halves(indexes, indexes.len(), |part| async move {
                let evaluations: Vec<Evaluation> = part
                    .iter()
                    .map(|&i| Evaluation {
                        item: &planned[i].item,
                        event: &events[planned[i].event].event,
                        document: planned[i].document.get(),
                    })
                    .collect();
                self.evaluator.evaluate_together(owner, &evaluations).await
            })
            .await
        });
        let evaluated = futures_util::future::join_all(calls).await;
        for ((_, indexes), parts) in by_owner.iter().zip(evaluated) {
            for (part, found) in parts {
                for (&i, found) in part.iter().zip(found) {
                    rows[i] = found;
                }
            }
            // What no call gave runs alone.
            for &i in indexes.iter().filter(|&&i| rows[i].is_none()) {
                answers[planned[i].event] = Together::Alone;
            }
        }
        rows
    }

    /// The jobs of the events still to be done together.
    fn jobs(
        &self,
        events: &[Arc<IncomingEvent>],
        planned: &[Planned],
        rows: Vec<Option<Vec<Map<String, Value>>>>,
        answers: &[Together],
    ) -> Jobs {
        let mut jobs = Jobs::default();
        for (p, found) in planned.iter().zip(rows) {
            let (Together::Done, Some(found)) = (answers[p.event], found) else { continue };
            let incoming = &events[p.event];
            let event = info(incoming);
            for (row, parameters) in found.into_iter().enumerate() {
                jobs.events.push(p.event);
                jobs.jobs.push(job(incoming, &p.item, &event, &p.document, row, parameters));
                jobs.owners.push(p.owner.clone());
            }
        }
        jobs
    }
}

/// Jobs with, for each, the index of its event and the owner of its work item.
#[derive(Default)]
struct Jobs {
    events: Vec<usize>,
    jobs: Vec<Job>,
    owners: Vec<String>,
}
