//! Shared set-up for the end-to-end tests: a cluster, unique names, a producer process and a
//! queue collecting what it publishes.

#![allow(dead_code)]

pub mod gateway;

use std::collections::HashMap;
use std::time::Duration;

use pgevents_testkit::{amqp_url, delete_exchange, unique_name, EventQueue, PgCluster, PgEventsProcess, ReceivedEvent};

pub const WAIT: Duration = Duration::from_secs(30);

/// One test's world.
pub struct World {
    pub pg: PgCluster,
    pub exchange: String,
    pub slot: String,
}

impl World {
    pub async fn new() -> World {
        Self::with_cluster(PgCluster::start().await).await
    }

    pub async fn with_cluster(pg: PgCluster) -> World {
        World { pg, exchange: unique_name("x"), slot: "pgevents_test".to_owned() }
    }

    /// Environment for a producer on this world.
    pub fn producer_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.pg.env();
        env.push(("RABBITMQ_URL".into(), amqp_url()));
        env.push(("RABBITMQ_EXCHANGE".into(), self.exchange.clone()));
        env.push(("PGSLOT".into(), self.slot.clone()));
        env.push(("PGEVENTS_STATUS_INTERVAL".into(), "1".into()));
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    /// Starts a producer and waits until it streams.
    pub async fn producer(&self, extra: &[(&str, &str)]) -> PgEventsProcess {
        let mut p = PgEventsProcess::spawn(&["producer"], &self.producer_env(extra));
        p.wait_for_log("streaming", WAIT).await;
        p
    }

    /// A queue bound to the world's exchange.
    pub async fn queue(&self, keys: &[&str]) -> EventQueue {
        EventQueue::bind(&self.exchange, keys).await
    }

    pub async fn cleanup(self, queue: EventQueue) {
        queue.close().await;
        delete_exchange(&self.exchange).await;
    }
}

/// The bodies as JSON, for assertions.
pub fn bodies(events: &[ReceivedEvent]) -> Vec<serde_json::Value> {
    events.iter().map(|e| e.json.clone()).collect()
}

/// Stops a producer with SIGTERM and checks it exits 0.
/// Collects events until every row arrived (or `WAIT` passes with nothing new), then a little more.
pub async fn collect_all(queue: &mut EventQueue, mut events: Vec<ReceivedEvent>, rows: i32) -> Vec<ReceivedEvent> {
    loop {
        let distinct = events.iter().map(|e| e.message_id()).collect::<std::collections::HashSet<_>>().len();
        if distinct >= rows as usize {
            events.extend(queue.drain(Duration::from_millis(500)).await);
            return events;
        }
        match queue.next(WAIT).await {
            Some(e) => events.push(e),
            None => return events,
        }
    }
}

/// `pgevents rules install`, then an async rule writing each `numbers` insert's `n` to
/// `audit.note` (tables `numbers (n)` and `audit (note)` must exist).
pub async fn install_audit_rule(pg: &PgCluster) {
    run_to_end(&["rules", "install"], &pg.env()).await;
    pg.execute(
        "INSERT INTO pgevents.event_table (table_name) VALUES ('numbers');
         INSERT INTO pgevents.action (name, kind, sql, backoff_ms, max_attempts)
         VALUES ('record', 'sql', 'INSERT INTO public.audit (note) VALUES ($1->>''n'')', 200, 50);
         INSERT INTO pgevents.work_item (name, table_name, action, mode) VALUES ('record', 'numbers', 'record', 'async');",
    )
    .await;
}

/// Runs `insert` (one `$1` of type int) for 1..=`rows`, one transaction each, 10 ms apart: a
/// steady write load for a fault to fall into.
pub async fn insert_paced(pg: &PgCluster, insert: &str, rows: i32) {
    insert_paced_values(pg, insert, 1..=rows).await
}

/// [`insert_paced`] with `$1` taking the `values`.
pub async fn insert_paced_values(pg: &PgCluster, insert: &str, values: std::ops::RangeInclusive<i32>) {
    let client = pg.client().await;
    for n in values {
        client.execute(insert, &[&n]).await.expect("insert");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a short pgevents command and returns its stdout, checking it exits 0.
pub async fn run_to_end(args: &[&str], env: &[(String, String)]) -> String {
    let mut process = PgEventsProcess::spawn(args, env);
    let code = process.wait(WAIT).await;
    assert_eq!(code, Some(0), "pgevents {args:?} failed: {}", process.stderr());
    process.stdout()
}

pub async fn stop(mut producer: PgEventsProcess) -> String {
    producer.terminate();
    let code = producer.wait(WAIT).await;
    let log = producer.stderr();
    assert_eq!(code, Some(0), "producer should exit 0 on SIGTERM; stderr:\n{log}");
    log
}

/// Writes `rows` rows into tables a and b (alternating, ids increasing per table) in small
/// transactions, some of several rows.
pub async fn write_rows(pg: &PgCluster, rows: i32) {
    pgevents_testkit::write_ab_sequence(pg_port(pg), i64::from(rows)).await;
}

/// The cluster's port.
pub fn pg_port(pg: &PgCluster) -> u16 {
    pg.env().iter().find(|(k, _)| k == "PGPORT").and_then(|(_, v)| v.parse().ok()).expect("PGPORT")
}

/// Checks: every row at least once, per-table order of first deliveries, duplicates identical.
pub fn check_at_least_once_in_order(events: &[ReceivedEvent], rows: i32) -> usize {
    let mut first_seen: HashMap<String, Vec<u8>> = HashMap::new();
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    let mut duplicates = 0;
    for e in events {
        let id = e.message_id();
        match first_seen.get(&id) {
            Some(body) => {
                assert_eq!(body, &e.body, "a redelivered message id carries the same event");
                duplicates += 1;
            }
            None => {
                first_seen.insert(id, e.body.clone());
                let table = e.json["table_name"].as_str().unwrap().to_owned();
                order.entry(table).or_default().push(e.json["id"].as_i64().unwrap());
            }
        }
    }
    let mut all: Vec<i64> = order.values().flatten().copied().collect();
    all.sort_unstable();
    let expected: Vec<i64> = (1..=i64::from(rows)).collect();
    assert_eq!(all, expected, "every change arrives (at least once)");
    for (table, ids) in &order {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "order within {table} is kept: {ids:?}");
    }
    duplicates
}
