//! `pgevents check`: validates the settings against the real servers without changing
//! anything, and says for each problem what is wrong and how to fix it.

use pgevents_amqp::{Brokers, PublisherSettings};
use pgevents_decode::Plugin;
use pgevents_replication::ReplicationClient;

use crate::config::ProducerConfig;
use crate::database::{quote_ident, Database};
use crate::publish::exchange::ExchangeOutput;
use crate::publish::Transport as _;
use crate::session::explain;
use crate::setup::{check_slot, check_tables, check_wal_level, SlotState};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Works, but deserves attention (or will be set up at start).
    Warn,
    /// The producer will not work until this is fixed.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: &'static str,
    /// What was found, and for a problem, what to do.
    pub detail: String,
}

fn finding(verdict: Verdict, what: &'static str, detail: impl Into<String>) -> Finding {
    Finding { verdict, what, detail: detail.into() }
}

/// Runs every check; never fails itself.
pub async fn run_checks(config: &ProducerConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    postgres_checks(config, &mut out).await;
    out.push(broker_check(config).await);
    out.push(stream_check(config).await);
    out
}

/// Whether the stream protocol answers (the `rabbitmq_stream` plugin) where `--stream-url`
/// says, when events go to a stream.
async fn stream_check(config: &ProducerConfig) -> Finding {
    let Some(stream) = &config.stream else {
        return finding(Verdict::Pass, "RabbitMQ stream", "not used (--publish-to exchange)");
    };
    match pgevents_stream::client(&stream.url, "pgevents check").await {
        Ok(client) => {
            let version = client.server_properties().await.get("version").cloned().unwrap_or_else(|| "unknown".into());
            let _ = client.close().await;
            finding(
                Verdict::Pass,
                "RabbitMQ stream",
                format!("the stream protocol (plugin rabbitmq_stream) answers at {}, RabbitMQ {version}", stream.url),
            )
        }
        Err(e) => finding(Verdict::Fail, "RabbitMQ stream", e.to_string()),
    }
}

async fn postgres_checks(config: &ProducerConfig, out: &mut Vec<Finding>) {
    let db = match Database::connect(&config.postgres).await {
        Ok(db) => db,
        Err(e) => {
            out.push(finding(Verdict::Fail, "PostgreSQL connection", e.to_string()));
            return;
        }
    };
    let version = db.server_version_num().await.unwrap_or(0);
    out.push(match version {
        0 => finding(Verdict::Warn, "PostgreSQL version", "could not read server_version_num"),
        v if v < 100_000 => {
            finding(Verdict::Fail, "PostgreSQL version", format!("{v}: logical replication needs 10 or later"))
        }
        v if v < 140_000 => finding(
            Verdict::Warn,
            "PostgreSQL version",
            format!("{v}: transaction context (pg_logical_emit_message) needs 14 or later with pgoutput"),
        ),
        v => finding(Verdict::Pass, "PostgreSQL version", format!("{v}")),
    });
    out.push(match check_wal_level(&db).await {
        Ok(()) => finding(Verdict::Pass, "wal_level", "logical"),
        Err(e) => finding(Verdict::Fail, "wal_level", e.to_string()),
    });
    out.push(role_check(&db, config).await);
    out.push(capacity_check(&db).await);
    out.push(match check_tables(&db, config).await {
        Ok(()) if config.tables.is_empty() => finding(Verdict::Pass, "tables", "every table (PGTABLES not set)"),
        Ok(()) => finding(Verdict::Pass, "tables", format!("{} listed, all exist", config.tables.len())),
        Err(e) => finding(Verdict::Fail, "tables", e.to_string()),
    });
    out.extend(identity_checks(&db, config).await);
    if config.plugin == Plugin::PgOutput {
        out.push(publication_check(&db, config).await);
    }
    out.push(match check_slot(&db, config).await {
        Ok(SlotState::Missing) => finding(
            Verdict::Warn,
            "replication slot",
            format!("{:?} does not exist yet; it is created at start", config.slot),
        ),
        Ok(SlotState::Ready { confirmed_flush }) => finding(
            Verdict::Pass,
            "replication slot",
            format!(
                "{:?} ready, confirmed up to {}",
                config.slot,
                confirmed_flush.map(|l| l.to_string()).unwrap_or_default()
            ),
        ),
        Err(e) => finding(Verdict::Fail, "replication slot", e.to_string()),
    });
    out.push(match ReplicationClient::connect(&config.postgres).await {
        Ok(client) => {
            drop(client);
            finding(Verdict::Pass, "replication connection", "accepted")
        }
        Err(e) => finding(Verdict::Fail, "replication connection", explain(e, config, &db).await.to_string()),
    });
}

async fn role_check(db: &Database, config: &ProducerConfig) -> Finding {
    let row =
        db.client().query_one("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user", &[]).await;
    match row {
        Ok(row) if row.get::<_, bool>(0) => finding(Verdict::Pass, "role", "superuser"),
        Ok(row) if row.get::<_, bool>(1) => finding(Verdict::Pass, "role", "has REPLICATION"),
        Ok(_) => finding(
            Verdict::Fail,
            "role",
            format!(
                "{:?} has no REPLICATION attribute; run ALTER ROLE {} REPLICATION as a superuser",
                config.postgres.user,
                quote_ident(&config.postgres.user)
            ),
        ),
        Err(e) => finding(Verdict::Warn, "role", format!("could not read pg_roles: {e}")),
    }
}

async fn capacity_check(db: &Database) -> Finding {
    let row = db
        .client()
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, (SELECT count(*)::int FROM pg_replication_slots),
                    current_setting('max_wal_senders')::int, (SELECT count(*)::int FROM pg_stat_replication)",
            &[],
        )
        .await;
    match row {
        Ok(r) => {
            let (slots, used, senders, busy): (i32, i32, i32, i32) = (r.get(0), r.get(1), r.get(2), r.get(3));
            let detail = format!("slots {used}/{slots} used, WAL senders {busy}/{senders} busy");
            if used >= slots || busy >= senders {
                finding(
                    Verdict::Warn,
                    "replication capacity",
                    format!("{detail}; a new slot or connection needs room: raise max_replication_slots / max_wal_senders (restart needed)"),
                )
            } else {
                finding(Verdict::Pass, "replication capacity", detail)
            }
        }
        Err(e) => finding(Verdict::Warn, "replication capacity", format!("could not read the settings: {e}")),
    }
}

/// Tables whose UPDATEs and DELETEs PostgreSQL cannot publish (no replica identity).
async fn identity_checks(db: &Database, config: &ProducerConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    for table in &config.tables {
        let row = db
            .client()
            .query_opt(
                "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await;
        if let Ok(Some(row)) = row {
            let (identity, has_key): (String, bool) = (row.get(0), row.get(1));
            let name = format!("{}.{}", quote_ident(&table.schema), quote_ident(&table.name));
            if identity == "n" || (identity == "d" && !has_key) {
                out.push(finding(
                    Verdict::Fail,
                    "replica identity",
                    format!(
                        "{} has no primary key and no replica identity, so PostgreSQL rejects its UPDATEs and DELETEs once it is published; \
                         add a primary key or run ALTER TABLE {name} REPLICA IDENTITY FULL",
                        table.qualified()
                    ),
                ));
            } else if identity == "f" && !has_key {
                out.push(finding(
                    Verdict::Warn,
                    "replica identity",
                    format!("{} has no primary key: its events carry \"id\": null", table.qualified()),
                ));
            }
        }
    }
    out
}

async fn publication_check(db: &Database, config: &ProducerConfig) -> Finding {
    let name = &config.publication;
    match db.publication(name).await {
        Ok(None) => finding(
            Verdict::Warn,
            "publication",
            format!("{name:?} does not exist yet; it is created at start (needs a superuser or the tables' owner)"),
        ),
        Ok(Some(true)) => finding(Verdict::Pass, "publication", format!("{name:?} FOR ALL TABLES")),
        Ok(Some(false)) => {
            let present = db.publication_tables(name).await.unwrap_or_default();
            let missing: Vec<String> =
                config.tables.iter().map(|t| t.qualified()).filter(|q| !present.contains(q)).collect();
            if missing.is_empty() {
                finding(Verdict::Pass, "publication", format!("{name:?} with {} tables", present.len()))
            } else {
                finding(
                    Verdict::Warn,
                    "publication",
                    format!("{name:?} lacks {}; they are added at start (needs the tables' owner)", missing.join(", ")),
                )
            }
        }
        Err(e) => finding(Verdict::Fail, "publication", e.to_string()),
    }
}

async fn broker_check(config: &ProducerConfig) -> Finding {
    let settings = PublisherSettings {
        exchange: config.exchange.clone(),
        mandatory: false,
        declare_exchange: false,
        other_exchanges: Vec::new(),
        connection_name: "pgevents check".into(),
    };
    // Each node on its own: a cluster with a node down still runs, but the operator should know.
    let mut answered = Vec::new();
    let mut failed = Vec::new();
    for node in config.amqp_url.nodes() {
        match ExchangeOutput::connect(&Brokers::from(node.clone()), &settings).await {
            Ok(publisher) => {
                publisher.close().await;
                answered.push(node.to_string());
            }
            // The error names the node.
            Err(e) => failed.push(e.to_string()),
        }
    }
    match (answered.is_empty(), failed.is_empty()) {
        (false, true) => finding(Verdict::Pass, "RabbitMQ", format!("connected to {}", answered.join(", "))),
        (false, false) => finding(
            Verdict::Warn,
            "RabbitMQ",
            format!(
                "connected to {}, but not to {} (the clients fail over to the nodes that answer)",
                answered.join(", "),
                failed.join("; ")
            ),
        ),
        (true, _) => finding(Verdict::Fail, "RabbitMQ", failed.join("; ")),
    }
}
