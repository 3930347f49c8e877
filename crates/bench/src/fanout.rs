//! SSE fan-out: events/s that `pgevents serve` delivers to many concurrent subscribers. The
//! producer keeps the history stream; `serve` runs next to it; `clients` SSE clients are
//! connected before `events` rows are inserted, and the clock stops when every client has
//! every event.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents_testkit::{delete_queue, free_local_addr, unique_name, PgCluster, PgEventsProcess, SseClient};
use serde::Serialize;

use crate::broker::BenchQueue;
use crate::producer_run::producer_env;

#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    pub clients: u64,
    pub events: u64,
    pub seconds: f64,
    pub deliveries_per_s: f64,
}

pub async fn measure(
    binary: &Path,
    pg: &PgCluster,
    queue: &BenchQueue,
    slot: &str,
    clients: u64,
    events: u64,
) -> anyhow::Result<Fanout> {
    let stream = unique_name("bench_history");
    let mut env: Vec<(String, String)> =
        producer_env(pg, queue, slot).into_iter().filter(|(k, _)| k != "RUST_LOG").collect();
    env.push(("RUST_LOG".into(), "info".into()));
    env.push(("PGEVENTS_HISTORY_STREAM".into(), stream.clone()));
    let mut producer = PgEventsProcess::spawn_binary(binary, &["producer"], &env);
    producer.wait_for_log("streaming", Duration::from_secs(30)).await;
    let addr = free_local_addr();
    let serve_env = vec![
        ("RABBITMQ_URL".to_owned(), queue.url.clone()),
        ("RABBITMQ_EXCHANGE".to_owned(), queue.exchange.clone()),
        ("PGEVENTS_HISTORY_STREAM".to_owned(), stream.clone()),
        ("PGEVENTS_LISTEN".to_owned(), addr.to_string()),
        ("PGEVENTS_CLIENT_BUFFER".to_owned(), events.max(1000).to_string()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    let mut serve = PgEventsProcess::spawn_binary(binary, &["serve"], &serve_env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut readers = Vec::new();
    for i in 0..clients {
        let id = format!("bench-{i}");
        let mut client = SseClient::connect(addr, "/events", &[("X-Consumer-Id", id.as_str())]).await;
        if client.status != 200 {
            bail!("serve answered {}: {}", client.status, client.body);
        }
        readers.push(tokio::spawn(async move {
            let mut received = 0;
            while received < events {
                if client.next(Duration::from_secs(60)).await.is_none() {
                    break;
                }
                received += 1;
            }
            received
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    pg.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO bench (id, i, t, n, arr, j) SELECT g, g, 'fanout', 1.5, ARRAY['a'], '{{}}' FROM generate_series(1, {events}) g"
        ))
        .await
        .context("insert the fan-out rows")?;
    let mut delivered = 0;
    for reader in readers {
        delivered += reader.await.context("reader task")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    producer.terminate();
    serve.terminate();
    let _ = producer.wait(Duration::from_secs(30)).await;
    let _ = serve.wait(Duration::from_secs(30)).await;
    delete_queue(&stream).await;
    if delivered < clients * events {
        bail!("only {delivered} of {} deliveries arrived", clients * events);
    }
    Ok(Fanout { clients, events, seconds, deliveries_per_s: delivered as f64 / seconds })
}
