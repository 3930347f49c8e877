//! The rules as the workers use them. Each rule has an owner, the role that wrote its text, and
//! runs with that role's rights; a rule that cannot run (no owner, text that does not parse as
//! one statement in its owner's session, an owner that cannot log in) carries the problem, and
//! its events are recorded as failed with it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pgevents_event::Action;
use pgevents_retry::Backoff;
use serde_json::{Map, Value};

/// When the action of a work item runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the worker, right away.
    Sync,
    /// Queued on the work exchange for an action runner.
    Async,
}

/// One row of `pgevents.work_item` (enabled, on an enabled event table).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    pub name: String,
    /// `schema.table`.
    pub table: String,
    /// The role that wrote it; `None` for a rule written before rules had owners (it does not
    /// run until its author takes it).
    pub owner: Option<String>,
    /// Why it cannot run, if it cannot.
    pub problem: Option<String>,
    pub trigger_actions: Vec<Action>,
    /// A boolean SQL expression over `$1` (the event as jsonb).
    pub filter: Option<String>,
    /// A query over `$1` returning a jsonb column `parameters`.
    pub query: Option<String>,
    /// The action's name.
    pub action: String,
    pub mode: Mode,
    pub transaction_label: Option<String>,
}

/// How an action runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind {
    /// A statement; `$1` is the parameters, `$2` the event (both jsonb).
    Sql { statement: String },
    /// An HTTP request.
    Http { method: String, url: String, headers: Map<String, Value>, body_template: Option<Value> },
}

/// One row of `pgevents.action`.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionDef {
    pub name: String,
    pub kind: ActionKind,
    /// The role that wrote it (see [`WorkItem::owner`]).
    pub owner: Option<String>,
    /// Why it cannot run, if it cannot.
    pub problem: Option<String>,
    /// Merged under the parameters of each run (the run's own values win).
    pub static_parameters: Map<String, Value>,
    pub timeout: Duration,
    pub max_attempts: u32,
    /// Wait before the second attempt; it doubles for each further attempt, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl ActionDef {
    /// The wait after failed attempt number `attempt` (1-based): `backoff` doubled for each
    /// further attempt, up to `backoff_max`, with jitter.
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        Backoff::after_failures(self.backoff, self.backoff_max, attempt)
    }
}

/// The rules at one moment.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Work items by `schema.table`, in name order.
    work_items: HashMap<String, Vec<Arc<WorkItem>>>,
    actions: HashMap<String, Arc<ActionDef>>,
    settings: HashMap<String, String>,
    /// The secrets each action owner may use (`pgevents.secret_grant`).
    secrets: HashMap<String, BTreeSet<String>>,
    /// Rules (`work item NAME`, `action NAME`) whose text could not be checked at the last load
    /// (the owner's session failed): they run, alone, and their run says what is wrong.
    unchecked: HashSet<String>,
}

impl RuleSet {
    pub fn new(work_items: Vec<WorkItem>, actions: Vec<ActionDef>, settings: HashMap<String, String>) -> RuleSet {
        let mut by_table: HashMap<String, Vec<Arc<WorkItem>>> = HashMap::new();
        for item in work_items {
            by_table.entry(item.table.clone()).or_default().push(Arc::new(item));
        }
        RuleSet {
            work_items: by_table,
            actions: actions.into_iter().map(|a| (a.name.clone(), Arc::new(a))).collect(),
            settings,
            secrets: HashMap::new(),
            unchecked: HashSet::new(),
        }
    }

    /// With `unchecked` (`work item NAME`, `action NAME`) marked as not checked.
    pub fn with_unchecked(mut self, unchecked: HashSet<String>) -> RuleSet {
        self.unchecked = unchecked;
        self
    }

    /// Whether the text of work item `name` was found to be one statement of the right shape.
    pub fn work_item_checked(&self, name: &str) -> bool {
        !self.unchecked.contains(&format!("work item {name}"))
    }

    /// Whether the text of action `name` was found to be one statement.
    pub fn action_checked(&self, name: &str) -> bool {
        !self.unchecked.contains(&format!("action {name}"))
    }

    /// With the secrets granted to each owner.
    pub fn with_secret_grants(mut self, grants: impl IntoIterator<Item = (String, String)>) -> RuleSet {
        for (owner, secret) in grants {
            self.secrets.entry(owner).or_default().insert(secret);
        }
        self
    }

    /// The secrets `owner` may use.
    pub fn secrets_granted_to(&self, owner: &str) -> Option<&BTreeSet<String>> {
        self.secrets.get(owner)
    }

    /// The work item `name` (enabled, on an enabled table).
    pub fn work_item(&self, name: &str) -> Option<&Arc<WorkItem>> {
        self.work_items().find(|item| item.name == name)
    }

    /// Every work item.
    pub fn work_items(&self) -> impl Iterator<Item = &Arc<WorkItem>> {
        self.work_items.values().flatten()
    }

    /// Every action.
    pub fn actions(&self) -> impl Iterator<Item = &Arc<ActionDef>> {
        self.actions.values()
    }

    /// The rules with `problems` recorded (by `work item NAME` / `action NAME`).
    pub fn with_problems(mut self, work_items: &HashMap<String, String>, actions: &HashMap<String, String>) -> RuleSet {
        for item in self.work_items.values_mut().flatten() {
            if let Some(problem) = work_items.get(&item.name) {
                Arc::make_mut(item).problem = Some(problem.clone());
            }
        }
        for (name, action) in self.actions.iter_mut() {
            if let Some(problem) = actions.get(name) {
                Arc::make_mut(action).problem = Some(problem.clone());
            }
        }
        self
    }

    /// The rules that cannot run, as (what, why), sorted.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .work_items()
            .filter_map(|w| Some((format!("work item {:?}", w.name), w.problem.clone()?)))
            .chain(self.actions().filter_map(|a| Some((format!("action {:?}", a.name), a.problem.clone()?))))
            .collect();
        out.sort();
        out
    }

    /// The work items an event of `table` with `action` triggers.
    pub fn work_items_for<'a>(&'a self, table: &str, action: Action) -> impl Iterator<Item = &'a Arc<WorkItem>> + 'a {
        self.work_items.get(table).into_iter().flatten().filter(move |item| item.trigger_actions.contains(&action))
    }

    pub fn action(&self, name: &str) -> Option<Arc<ActionDef>> {
        self.actions.get(name).cloned()
    }

    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.get(name).map(String::as_str)
    }

    /// How many work items there are, over all tables.
    pub fn work_item_count(&self) -> usize {
        self.work_items.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, table: &str, actions: &[Action]) -> WorkItem {
        WorkItem {
            name: name.into(),
            table: table.into(),
            owner: Some("ann".into()),
            problem: None,
            trigger_actions: actions.to_vec(),
            filter: None,
            query: None,
            action: "a".into(),
            mode: Mode::Sync,
            transaction_label: None,
        }
    }

    #[test]
    fn work_items_match_by_table_and_action() {
        let rules = RuleSet::new(
            vec![
                item("w1", "public.users", &[Action::Insert]),
                item("w2", "public.users", &[Action::Insert, Action::Update]),
                item("w3", "public.orders", &[Action::Insert]),
            ],
            vec![],
            HashMap::new(),
        );
        let names = |action| rules.work_items_for("public.users", action).map(|w| w.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(Action::Insert), ["w1", "w2"]);
        assert_eq!(names(Action::Update), ["w2"]);
        assert!(names(Action::Delete).is_empty());
        assert_eq!(rules.work_items_for("public.nothing", Action::Insert).count(), 0);
        assert_eq!(rules.work_item_count(), 3);
    }

    #[test]
    fn problems_are_recorded_on_their_rules_and_secrets_by_owner() {
        let problems = HashMap::from([("w2".to_owned(), "syntax error".to_owned())]);
        let rules = RuleSet::new(
            vec![item("w1", "public.users", &[Action::Insert]), item("w2", "public.users", &[Action::Insert])],
            vec![],
            HashMap::new(),
        )
        .with_problems(&problems, &HashMap::new())
        .with_secret_grants([("ann".to_owned(), "TOKEN".to_owned())]);
        assert_eq!(rules.problems(), [("work item \"w2\"".to_owned(), "syntax error".to_owned())]);
        assert!(rules.secrets_granted_to("ann").is_some_and(|s| s.contains("TOKEN")));
        assert!(rules.secrets_granted_to("bob").is_none());
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let action = ActionDef {
            name: "a".into(),
            kind: ActionKind::Sql { statement: "SELECT 1".into() },
            owner: Some("ann".into()),
            problem: None,
            static_parameters: Map::new(),
            timeout: Duration::from_secs(1),
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
        };
        for (attempt, base) in [(1, 100.0), (2, 200.0), (3, 400.0), (4, 500.0), (1000, 500.0)] {
            let wait = action.backoff_after(attempt).as_secs_f64() * 1000.0;
            assert!(wait >= base * 0.8 - 0.01 && wait <= (base * 1.2).min(500.0) + 0.01, "{attempt}: {wait}");
        }
    }
}
