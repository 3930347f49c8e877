//! The rule tables of pgevents, kept in PostgreSQL (schema `pgevents`).
//!
//! - [`install`] creates or upgrades them with versioned migrations (idempotent, safe to run
//!   from several places at once).
//! - [`RuleSet`] is what the tables say at one moment: subscribed tables, work items, actions
//!   and settings; [`load`] reads it in one consistent snapshot.
//! - [`RulesCache`] keeps the current [`RuleSet`] in memory and reloads it when a trigger on the
//!   rule tables sends a `pgevents_rules` notification (and every refresh interval, in case a
//!   notification is missed while reconnecting), so rules change without restarting workers.
//! - [`connection_pool`] and [`JsonbText`]: the SQL connections of the worker stages and a
//!   parameter type that sends JSON text to PostgreSQL as jsonb without re-encoding it.

mod cache;
mod error;
mod jsonb;
mod load;
mod model;
mod pool;
mod schema;

pub use cache::RulesCache;
pub use error::{pg_error, RulesError};
pub use jsonb::JsonbText;
pub use load::load;
pub use model::{ActionDef, ActionKind, Mode, RuleSet, WorkItem};
pub use pool::{connection_pool, Pool};
pub use schema::{install, installed_version, InstallReport, LATEST_VERSION};

/// The notification channel the rule tables' triggers notify on.
pub const RULES_CHANNEL: &str = "pgevents_rules";
