//! Shared set-up for the end-to-end tests: a cluster, unique names, a producer process and a
//! queue collecting what it publishes.

#![allow(dead_code)]

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
pub async fn stop(mut producer: PgEventsProcess) -> String {
    producer.terminate();
    let code = producer.wait(WAIT).await;
    let log = producer.stderr();
    assert_eq!(code, Some(0), "producer should exit 0 on SIGTERM; stderr:\n{log}");
    log
}
