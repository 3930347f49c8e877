//! Checking the rules' text in their owners' sessions, when the rules are loaded: a rule whose
//! text does not parse (or whose owner cannot log in) gets the problem recorded, and runs no
//! more until it is fixed. Text that was found fine is not parsed again while it stays the same
//! (for the same owner); a failure is looked at again on each load (a missing table may have
//! been created since).

use std::collections::{HashMap, HashSet};

use pgevents_pg::ErrorKind;

use crate::model::{ActionKind, RuleSet};
use crate::owners::OwnerSessions;
use crate::statements::{check, Shape};

/// What earlier checks found: text found fine, as (owner, shape, text), and the problems
/// already logged (each is logged once, not at every reload).
#[derive(Debug, Default)]
pub struct Checked {
    fine: HashSet<(String, ShapeKey, String)>,
    reported: HashSet<(String, String)>,
}

type ShapeKey = u8;

fn key(shape: Shape) -> ShapeKey {
    match shape {
        Shape::Filter => 0,
        Shape::Query => 1,
        Shape::SqlAction => 2,
    }
}

/// What one rule needs checked.
struct Text<'a> {
    owner: &'a str,
    shape: Shape,
    text: &'a str,
    what: String,
}

/// `rules` with the problems their text has in their owners' sessions.
pub async fn validate(rules: RuleSet, sessions: &OwnerSessions, checked: &mut Checked) -> RuleSet {
    let mut texts = Vec::new();
    for item in rules.work_items().filter(|w| w.problem.is_none()) {
        let Some(owner) = item.owner.as_deref() else { continue };
        let name = &item.name;
        if let Some(filter) = &item.filter {
            texts.push((
                Text { owner, shape: Shape::Filter, text: filter, what: format!("filter of work item {name:?}") },
                name.clone(),
                true,
            ));
        }
        if let Some(query) = &item.query {
            texts.push((
                Text {
                    owner,
                    shape: Shape::Query,
                    text: query,
                    what: format!("work_item_query of work item {name:?}"),
                },
                name.clone(),
                true,
            ));
        }
    }
    for action in rules.actions().filter(|a| a.problem.is_none()) {
        let (Some(owner), ActionKind::Sql { statement }) = (action.owner.as_deref(), &action.kind) else { continue };
        let what = format!("sql of action {:?}", action.name);
        texts.push((Text { owner, shape: Shape::SqlAction, text: statement, what }, action.name.clone(), false));
    }
    let mut work_item_problems: HashMap<String, String> = HashMap::new();
    let mut action_problems: HashMap<String, String> = HashMap::new();
    let mut unchecked: HashSet<String> = HashSet::new();
    for (text, name, is_work_item) in &texts {
        let entry = (text.owner.to_owned(), key(text.shape), text.text.to_owned());
        if checked.fine.contains(&entry) {
            continue;
        }
        let problem = match sessions.get(text.owner).await {
            Ok(client) => match check(&client, text.shape, text.text).await {
                Ok(Ok(())) => {
                    checked.fine.insert(entry);
                    None
                }
                Ok(Err(invalid)) => Some(format!("{}: {invalid}", text.what)),
                // The connection failed: no verdict; the rule runs (alone) and its run says.
                Err(failed) => {
                    tracing::warn!(rule = ?text.what, error = ?failed.to_string(), "cannot check a rule now");
                    unchecked.insert(rule_name(*is_work_item, name));
                    None
                }
            },
            Err(e) if e.kind() != ErrorKind::Transient => Some(e.to_string()),
            Err(e) => {
                tracing::warn!(rule = ?text.what, error = ?e.to_string(), "cannot check a rule now");
                unchecked.insert(rule_name(*is_work_item, name));
                None
            }
        };
        if let Some(problem) = problem {
            let problems = if *is_work_item { &mut work_item_problems } else { &mut action_problems };
            problems.entry(name.clone()).or_insert(problem);
        }
    }
    let rules = rules.with_problems(&work_item_problems, &action_problems).with_unchecked(unchecked);
    let problems: HashSet<(String, String)> = rules.problems().into_iter().collect();
    for (what, problem) in problems.difference(&checked.reported) {
        tracing::error!(rule = ?what, problem = ?problem, "a rule cannot run; its events are recorded as failed until it is fixed");
    }
    metrics::gauge!(crate::INVALID_RULES).set(problems.len() as f64);
    checked.reported = problems;
    rules
}

/// How [`RuleSet::with_unchecked`] names a rule.
fn rule_name(is_work_item: bool, name: &str) -> String {
    if is_work_item {
        format!("work item {name}")
    } else {
        format!("action {name}")
    }
}
