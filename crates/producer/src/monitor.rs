//! The session's monitor: asks the server for its WAL position (for the lag metrics and the
//! progress line) and runs the optional heartbeat statement, so that a slot on a database whose
//! subscribed tables are quiet still sees WAL of its own and advances. The heartbeat is the
//! operator's SQL: it runs on a connection of its own with the role's own search path (the
//! producer's connections look names up in `pg_catalog, pg_temp` only).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use pgevents_pg::{ConnectConfig, SearchPath};

use crate::clock::unix_micros;
use crate::config::ProducerConfig;
use crate::database::Database;
use crate::metrics::{HEARTBEATS, LAG_BYTES, LAG_SECONDS, SERVER_WAL_LSN};
use crate::stats::Stats;

/// How often the server's WAL position is read.
const POLL: Duration = Duration::from_secs(2);

/// Runs until aborted with the session. Failures are logged, never fatal: the replication
/// connection is what decides whether the session is healthy.
pub async fn run_monitor(db: Arc<Database>, config: Arc<ProducerConfig>, stats: Arc<Stats>) {
    let heartbeat = config.heartbeat_sql.as_deref().filter(|sql| !sql.trim().is_empty());
    let mut heartbeat_client: Option<tokio_postgres::Client> = None;
    let mut next_heartbeat = Instant::now() + config.heartbeat_interval;
    let mut tick = tokio::time::interval(POLL.min(config.heartbeat_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(sql) = heartbeat {
            if Instant::now() >= next_heartbeat {
                next_heartbeat = Instant::now() + config.heartbeat_interval;
                match run_heartbeat(&mut heartbeat_client, &config.postgres, sql).await {
                    Ok(()) => metrics::counter!(HEARTBEATS).increment(1),
                    Err(e) => tracing::warn!(error = %e, "heartbeat statement failed (--heartbeat-sql)"),
                }
            }
        }
        match db.current_wal_lsn().await {
            Ok(server) => {
                Stats::set(&stats.server_wal_lsn, server.0);
                record_lag(&stats);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the server's WAL position"),
        }
    }
}

/// Runs the heartbeat statement on its own connection (made again after a failure).
async fn run_heartbeat(
    client: &mut Option<tokio_postgres::Client>,
    postgres: &ConnectConfig,
    sql: &str,
) -> Result<(), pgevents_pg::PgError> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let settings = ConnectConfig { search_path: SearchPath::RoleDefault, ..postgres.clone() };
        *client = Some(pgevents_pg::connect_driven(&settings, "heartbeat").await?);
    }
    let Some(connected) = client.as_ref() else { return Ok(()) };
    connected.batch_execute(sql).await.map_err(|e| pgevents_pg::PgError::new(format!("run {sql:?}"), e))
}

/// Lag in bytes is the server's WAL position minus the confirmed LSN; lag in seconds is the age
/// of the last confirmed commit while anything read is still unconfirmed, and 0 when caught up.
fn record_lag(stats: &Stats) {
    let server = Stats::get(&stats.server_wal_lsn);
    let confirmed = Stats::get(&stats.confirmed_lsn);
    metrics::gauge!(SERVER_WAL_LSN).set(server as f64);
    metrics::gauge!(LAG_BYTES).set(server.saturating_sub(confirmed) as f64);
    let caught_up = Stats::get(&stats.in_flight) == 0 && Stats::get(&stats.received_lsn) <= confirmed;
    let last_commit = Stats::get(&stats.last_commit_micros) as i64;
    let seconds = if caught_up || last_commit == 0 { 0.0 } else { (unix_micros() - last_commit).max(0) as f64 / 1e6 };
    metrics::gauge!(LAG_SECONDS).set(seconds);
}
