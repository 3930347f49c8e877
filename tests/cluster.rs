//! pgevents on a RabbitMQ cluster: three private nodes on this machine, joined with
//! `rabbitmqctl join_cluster`, quorum queues, and a node stopped under a steady write load.
//! Each test checks what the fault suite checks on one node: every change arrives, in order per
//! table, duplicates only with the same message id.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{check_at_least_once_in_order, stop, World, WAIT};
use pgevents_testkit::{EventQueue, RabbitCluster, ReceivedEvent, AB_TABLES};

const ROWS: i32 = 2000;

/// Everything in the queue until every row arrived (or nothing new for `WAIT`).
async fn collect_all(queue: &mut EventQueue, rows: i32) -> Vec<ReceivedEvent> {
    let mut events = Vec::new();
    loop {
        let distinct = events.iter().map(ReceivedEvent::message_id).collect::<HashSet<_>>().len();
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

/// The producer is given every node; the node it publishes to is stopped mid-stream. It fails
/// over to another node, and the quorum queue, replicated on the two nodes left, has every change.
#[tokio::test(flavor = "multi_thread")]
async fn the_producer_fails_over_when_its_node_stops() {
    let cluster = RabbitCluster::start(3).await;
    let world = World::new().await;
    world.pg.execute(AB_TABLES).await;
    // Declared and bound, then left alone: the collector reads it after the fault, through a
    // node that stayed up.
    let queue = EventQueue::quorum(&cluster.nodes[0].url(), &world.exchange, &["#"]).await;
    let queue_name = queue.name.clone();
    drop(queue);
    let producer = world.producer(&[("RABBITMQ_URL", &cluster.urls())]).await;
    let name = format!("pgevents producer ({})", world.slot);
    let node = cluster.node_of_connection(&cluster.nodes[0], &name).await.expect("the producer's connection is listed");
    let writer = common::write_rows(&world.pg, ROWS);
    let fault = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        node.stop_app().await;
    };
    tokio::join!(writer, fault);
    let survivor = cluster.other_than(node);
    let mut queue = EventQueue::reattach(&survivor.url(), &queue_name).await;
    let events = collect_all(&mut queue, ROWS).await;
    let log = stop(producer).await;
    let distinct = events.iter().map(ReceivedEvent::message_id).collect::<HashSet<_>>().len();
    assert_eq!(distinct, ROWS as usize, "every change arrived; producer log:\n{log}");
    let duplicates = check_at_least_once_in_order(&events, ROWS);
    eprintln!("producer failover: {} deliveries for {ROWS} changes ({duplicates} duplicates)", events.len());
    assert!(log.contains("failed over to another RabbitMQ node"), "the failover is logged:\n{log}");
    queue.close().await;
}
