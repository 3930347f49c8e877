//! The fault suite: real processes, real faults. Each test writes a known sequence of changes
//! while the fault happens, then checks the queue: every change present at least once, per-table
//! order preserved, duplicates only with the same message id (and body).
//!
//! SIGKILL of the producer is in `producer_delivery.rs`; takeover by a standby in
//! `producer_operations.rs`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{check_at_least_once_in_order, collect_all, stop, World};
use pgevents_testkit::{
    amqp_url, delete_exchange, EventQueue, FaultProxy, PgEventsProcess, RabbitNode, ReceivedEvent, AB_TABLES,
};

const ROWS: i32 = 2000;

/// Prints the producer's log when changes are missing, so a failure shows why.
fn show_log_if_incomplete(events: &[ReceivedEvent], rows: i32, producer: &PgEventsProcess) {
    let distinct = events.iter().map(|e| e.message_id()).collect::<std::collections::HashSet<_>>().len();
    if distinct < rows as usize {
        eprintln!("only {distinct} of {rows} changes arrived; producer log:\n{}", producer.stderr());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rabbitmq_restart_loses_nothing() {
    let node = RabbitNode::start().await;
    let world = World::new().await;
    world.pg.execute(AB_TABLES).await;
    let queue = EventQueue::durable(&node.url(), &world.exchange, &["#"]).await;
    let queue_name = queue.name.clone();
    let producer = world.producer(&[("RABBITMQ_URL", &node.url())]).await;
    let writer = common::write_rows(&world.pg, ROWS);
    let fault = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        node.stop_app().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.start_app().await;
    };
    tokio::join!(writer, fault);
    drop(queue);
    let mut queue = EventQueue::reattach(&node.url(), &queue_name).await;
    let events = collect_all(&mut queue, Vec::new(), ROWS).await;
    show_log_if_incomplete(&events, ROWS, &producer);
    let duplicates = check_at_least_once_in_order(&events, ROWS);
    eprintln!("RabbitMQ restart: {} deliveries for {ROWS} changes ({duplicates} duplicates)", events.len());
    let log = stop(producer).await;
    assert!(log.contains("reconnecting"), "the producer noticed the restart:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_restart_loses_nothing() {
    let world = World::new().await;
    world.pg.execute(AB_TABLES).await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[]).await;
    let writer = common::write_rows(&world.pg, ROWS);
    let fault = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        world.pg.restart();
    };
    tokio::join!(writer, fault);
    let events = collect_all(&mut queue, Vec::new(), ROWS).await;
    show_log_if_incomplete(&events, ROWS, &producer);
    let duplicates = check_at_least_once_in_order(&events, ROWS);
    eprintln!("PostgreSQL restart: {} deliveries for {ROWS} changes ({duplicates} duplicates)", events.len());
    let log = stop(producer).await;
    assert!(log.contains("reconnecting"), "the producer noticed the restart:\n{log}");
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn network_cuts_to_the_broker_and_the_database_lose_nothing() {
    let world = World::new().await;
    world.pg.execute(AB_TABLES).await;
    let mut queue = world.queue(&["#"]).await;
    let broker: SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let database = SocketAddr::from(([127, 0, 0, 1], common::pg_port(&world.pg)));
    let to_broker = FaultProxy::start(broker).await;
    let to_database = FaultProxy::start(database).await;
    let url = amqp_url().replace("127.0.0.1:5672", &to_broker.addr.to_string());
    let db_port = to_database.addr.port().to_string();
    let producer = world.producer(&[("RABBITMQ_URL", &url), ("PGPORT", &db_port)]).await;
    let writer = common::write_rows(&world.pg, ROWS);
    let faults = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        to_broker.cut();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        to_broker.restore().await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        to_database.cut();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        to_database.restore().await;
    };
    tokio::join!(writer, faults);
    let events = collect_all(&mut queue, Vec::new(), ROWS).await;
    show_log_if_incomplete(&events, ROWS, &producer);
    let duplicates = check_at_least_once_in_order(&events, ROWS);
    eprintln!("network cuts: {} deliveries for {ROWS} changes ({duplicates} duplicates)", events.len());
    let log = stop(producer).await;
    assert!(log.matches("reconnecting").count() >= 2, "both cuts were noticed:\n{log}");
    world.cleanup(queue).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_keeps_nacking_does_not_affect_the_producer() {
    let world = World::new().await;
    world.pg.execute(AB_TABLES).await;
    let mut failing = world.queue(&["#"]).await;
    let mut healthy = EventQueue::bind(&world.exchange, &["#"]).await;
    let producer = world.producer(&[]).await;
    let rows = 500;
    let nacker = async {
        let mut rejected = 0;
        while failing.nack_next(Duration::from_secs(2)).await {
            rejected += 1;
            if rejected >= 5000 {
                break;
            }
        }
        rejected
    };
    let (rejected, events) = tokio::join!(nacker, async {
        common::write_rows(&world.pg, rows).await;
        collect_all(&mut healthy, Vec::new(), rows).await
    });
    check_at_least_once_in_order(&events, rows);
    assert!(rejected > rows as usize, "the failing consumer saw redeliveries ({rejected})");
    let log = stop(producer).await;
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "the producer was not disturbed:\n{log}");
    healthy.close().await;
    world.cleanup(failing).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exchange_deleted_mid_stream_is_not_a_silent_loss() {
    let world = World::new().await;
    world.pg.execute(AB_TABLES).await;
    let mut queue = world.queue(&["#"]).await;
    let producer = world.producer(&[("RABBITMQ_MANDATORY", "true")]).await;
    let writer = common::write_rows(&world.pg, ROWS);
    let fault = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        delete_exchange(&world.exchange).await;
        // The producer re-declares the exchange; until the queue is bound again its events are
        // returned (mandatory) and retried, not confirmed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        queue.rebind(&world.exchange, &["#"]).await;
    };
    let (_, ()) = tokio::join!(writer, fault);
    let events = collect_all(&mut queue, Vec::new(), ROWS).await;
    show_log_if_incomplete(&events, ROWS, &producer);
    let duplicates = check_at_least_once_in_order(&events, ROWS);
    eprintln!("exchange deleted: {} deliveries for {ROWS} changes ({duplicates} duplicates)", events.len());
    let log = stop(producer).await;
    assert!(log.contains("reconnecting"), "{log}");
    world.cleanup(queue).await;
}
