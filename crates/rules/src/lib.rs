//! The rule tables of pgevents, kept in PostgreSQL (schema `pgevents`).
//!
//! - [`install`] creates or upgrades them with versioned migrations (idempotent, safe to run
//!   from several places at once).
//! - [`RuleSet`] is what the tables say at one moment: subscribed tables, work items, actions
//!   and settings; [`load`] reads it in one consistent snapshot.
//! - [`RulesCache`] keeps the current [`RuleSet`] in memory and reloads it when a trigger on the
//!   rule tables sends a `pgevents_rules` notification (and every refresh interval, in case a
//!   notification is missed while reconnecting), so rules change without restarting workers.
//! - Rules run with their author's rights: [`OwnerSessions`] are sessions authenticated as each
//!   rule's owner, where its text is checked ([`statements`]) and run.

pub mod access;
mod cache;
mod error;
mod load;
mod model;
mod owners;
mod review;
mod schema;
pub mod statements;
mod validate;

pub use cache::RulesCache;
pub use error::RulesError;
pub use load::load;
pub use model::{ActionDef, ActionKind, Mode, RuleSet, WorkItem};
pub use owners::{Flight, OwnerError, OwnerSession, OwnerSessions};
pub use review::{review, Concern};
pub use schema::{install, installed_version, RULES};
pub use validate::{validate, Checked};

/// Gauge: rules that cannot run (no owner, text that does not parse, an owner the worker cannot
/// log in as).
pub const INVALID_RULES: &str = "pgevents_rules_invalid";

/// The notification channel the rule tables' triggers notify on.
const RULES_CHANNEL: &str = "pgevents_rules";
