//! The rule tables of pgevents, kept in PostgreSQL (schema `pgevents`).
//!
//! - [`install`] creates or upgrades them with versioned migrations (idempotent, safe to run
//!   from several places at once).
//! - [`RuleSet`] is what the tables say at one moment: subscribed tables, work items, actions
//!   and settings; [`load`] reads it in one consistent snapshot.
//! - [`RulesCache`] keeps the current [`RuleSet`] in memory and reloads it when a trigger on the
//!   rule tables sends a `pgevents_rules` notification (and every refresh interval, in case a
//!   notification is missed while reconnecting), so rules change without restarting workers.

mod cache;
mod error;
mod load;
mod model;
mod schema;

pub use cache::RulesCache;
pub use error::RulesError;
pub use load::load;
pub use model::{ActionDef, ActionKind, Mode, RuleSet, WorkItem};
pub use schema::{install, installed_version, RULES};

/// The notification channel the rule tables' triggers notify on.
const RULES_CHANNEL: &str = "pgevents_rules";
