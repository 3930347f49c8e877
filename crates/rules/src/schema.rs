//! `pgevents rules install`: the rule tables, as the `rules` component of the pgevents schema
//! (see [`pgevents_pg::schema`] for how migrations are applied).

use pgevents_pg::schema::{self, Component, InstallReport, Migration};
use tokio_postgres::Client;

use crate::RulesError;

/// The rule tables' migrations, in order. Never edit one that has been released: add a new one.
pub const RULES: Component = Component {
    name: "rules",
    migrations: &[
        Migration { version: 1, name: "rule tables", sql: include_str!("migrations/0001_rules.sql") },
        Migration { version: 2, name: "sessions and subscriptions", sql: include_str!("migrations/0002_sessions.sql") },
        Migration {
            version: 3,
            name: "subscriptions within the owner's privileges",
            sql: include_str!("migrations/0003_session_access.sql"),
        },
        Migration {
            version: 4,
            name: "rules run with their owner's rights",
            sql: include_str!("migrations/0004_rule_owners.sql"),
        },
        Migration {
            version: 5,
            name: "rule text of several events in one call",
            sql: include_str!("migrations/0005_batched_runs.sql"),
        },
    ],
};

/// Creates or upgrades the rule tables.
pub async fn install(client: &mut Client) -> Result<InstallReport, RulesError> {
    Ok(schema::install(client, &RULES).await?)
}

/// The installed version (0 when the rule tables do not exist).
pub async fn installed_version(client: &Client) -> Result<i32, RulesError> {
    Ok(schema::installed_version(client, &RULES).await?)
}

/// Fails unless the rule tables are installed at the version this pgevents knows.
pub(crate) async fn require_installed(client: &Client) -> Result<(), RulesError> {
    let latest = RULES.latest();
    match installed_version(client).await? {
        0 => Err(RulesError::NotInstalled),
        v if v > latest => Err(RulesError::NewerSchema { found: v, supported: latest }),
        v if v < latest => Err(RulesError::Outdated { found: v, latest }),
        _ => Ok(()),
    }
}
