//! pgevents on a RabbitMQ cluster: three private nodes on this machine, joined with
//! `rabbitmqctl join_cluster`, quorum queues, and a node stopped under a steady write load.
//! Each test checks what the fault suite checks on one node: every change arrives, in order per
//! table, duplicates only with the same message id.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::gateway::Gateway;
use common::{check_at_least_once_in_order, collect_all, stop, World, WAIT};
use pgevents_testkit::{
    connections_to, read_stream_at, unique_name, wait_for, EventQueue, PgEventsProcess, RabbitCluster, ReceivedEvent,
    SseClient, SseMessage, AB_TABLES,
};

const ROWS: i32 = 2000;

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
    let events = collect_all(&mut queue, Vec::new(), ROWS).await;
    let log = stop(producer).await;
    let distinct = events.iter().map(ReceivedEvent::message_id).collect::<HashSet<_>>().len();
    assert_eq!(distinct, ROWS as usize, "every change arrived; producer log:\n{log}");
    let duplicates = check_at_least_once_in_order(&events, ROWS);
    eprintln!("producer failover: {} deliveries for {ROWS} changes ({duplicates} duplicates)", events.len());
    assert!(log.contains("failed over to another RabbitMQ node"), "the failover is logged:\n{log}");
    queue.close().await;
}

/// A worker and an action runner on quorum queues (`--queue-type quorum`), given every node; the
/// node the worker consumes from is stopped while events arrive. Each event's SQL action runs
/// exactly once: redelivered events and jobs are recognised by their idempotency keys.
#[tokio::test(flavor = "multi_thread")]
async fn each_action_runs_once_when_the_workers_node_stops() {
    const ROWS: i32 = 300;
    let cluster = RabbitCluster::start(3).await;
    let urls = cluster.urls();
    let world = World::new().await;
    world.pg.execute("CREATE TABLE numbers (id serial PRIMARY KEY, n int NOT NULL); CREATE TABLE audit (id serial PRIMARY KEY, note text);").await;
    common::install_audit_rule(&world.pg).await;
    let producer = world.producer(&[("RABBITMQ_URL", &urls), ("PGTABLES", "numbers")]).await;
    let mut env = world.producer_env(&[("RABBITMQ_URL", &urls), ("PGEVENTS_QUEUE_TYPE", "quorum")]);
    for (name, value) in [
        ("PGEVENTS_WORK_EXCHANGE", unique_name("work")),
        ("PGEVENTS_WORK_QUEUE", unique_name("actions")),
        ("PGEVENTS_DEAD_LETTER_EXCHANGE", unique_name("dead")),
        ("PGEVENTS_DEAD_LETTER_QUEUE", unique_name("deadq")),
        ("RABBITMQ_QUEUE_NAME", unique_name("worker")),
    ] {
        env.push((name.into(), value));
    }
    let mut worker = PgEventsProcess::spawn(&["worker"], &env);
    worker.wait_for_log("consuming", WAIT).await;
    let mut runner = PgEventsProcess::spawn(&["action-runner"], &env);
    runner.wait_for_log("consuming", WAIT).await;
    let node = cluster.node_of_connection(&cluster.nodes[0], "pgevents worker").await.expect("the worker's connection");
    const INSERT: &str = "INSERT INTO numbers (n) VALUES ($1)";
    let writer = common::insert_paced_values(&world.pg, INSERT, 1..=ROWS / 2);
    let fault = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        node.stop_app().await;
    };
    tokio::join!(writer, fault);
    // Half of the changes come once the node is down (however long stopping it took), so the
    // worker has events to take from another node.
    common::insert_paced_values(&world.pg, INSERT, ROWS / 2 + 1..=ROWS).await;
    let counts = wait_for("every action", Duration::from_secs(90), || async {
        let counts = world.pg.query_text("SELECT count(DISTINCT note) || '/' || count(*) FROM audit").await;
        counts.filter(|c| c.starts_with(&format!("{ROWS}/")))
    })
    .await;
    assert_eq!(counts, format!("{ROWS}/{ROWS}"), "each event's action ran exactly once");
    worker.wait_for_log("failed over to another RabbitMQ node", WAIT).await;
    for process in [worker, runner, producer] {
        stop(process).await;
    }
}

/// Reads `/events` until `rows` inserts arrived, coming back with `Last-Event-ID` whenever the
/// gateway closes the stream (as it does when its broker connection is lost), after the
/// `retry:` delay as a browser would.
async fn follow(gw: &Gateway, rows: usize) -> (Vec<SseMessage>, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<SseMessage> = Vec::new();
    let mut reconnects = 0;
    while tokio::time::Instant::now() < deadline {
        let last = seen.last().and_then(|m| m.id.clone());
        let mut headers = vec![("X-Consumer-Id", "follower")];
        if let Some(last) = &last {
            headers.push(("Last-Event-ID", last));
        }
        let mut client = SseClient::connect(gw.addr, "/events", &headers).await;
        if client.status != 200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        while let Some(message) = client.next(WAIT).await {
            seen.push(message);
            let distinct: HashSet<i64> = seen.iter().filter_map(|m| m.json()["new"]["id"].as_i64()).collect();
            if distinct.len() >= rows {
                return (seen, reconnects);
            }
        }
        reconnects += 1;
        // As EventSource does: wait the `retry:` the gateway sent (2 s by default).
        tokio::time::sleep(Duration::from_millis(2000)).await;
    }
    (seen, reconnects)
}

/// 1.5 s into the writes, stops `node` for 2 s.
async fn stop_for_a_while(node: &pgevents_testkit::RabbitNode) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.stop_app().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.start_app().await;
}

/// `serve` reads the history stream, replicated on every node, while inserts arrive; the node
/// leading the stream is stopped (and started again), then the node the gateway reads through.
/// Subscribers cut off come back with `Last-Event-ID` and miss nothing, in order; a duplicate
/// is only ever the same event again.
#[tokio::test(flavor = "multi_thread")]
async fn subscribers_miss_nothing_when_the_streams_leader_stops() {
    const ROWS: i32 = 600;
    let cluster = RabbitCluster::start(3).await;
    let urls = cluster.urls();
    let world = World::new().await;
    world.pg.execute("CREATE TABLE seam (id int PRIMARY KEY)").await;
    let stream = unique_name("history");
    let producer = world.producer(&[("RABBITMQ_URL", &urls), ("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let gw = Gateway::start(&world, &stream, Some(&urls), &[]).await;
    let leader = cluster.leader_of(&cluster.nodes[0], &stream).await.expect("the stream has a leader");
    let gateway_node = cluster.node_of_connection(&cluster.nodes[0], &format!("pgevents serve ({stream})")).await;
    let writer = common::insert_paced(&world.pg, "INSERT INTO seam VALUES ($1)", ROWS);
    let faults = async {
        stop_for_a_while(leader).await;
        if let Some(node) = gateway_node.filter(|n| n.node != leader.node) {
            node.stop_app().await;
        }
    };
    let ((), (seen, reconnects), ()) = tokio::join!(writer, follow(&gw, ROWS as usize), faults);
    // At least once, in order: an event published again after the failover (the producer
    // resumes from its last confirmed position) sits in the stream twice, under two offsets, with
    // the same body. Anything else (a gap, another event twice, a step back) is a failure.
    let mut first_seen: Vec<i64> = Vec::new();
    let mut bodies: std::collections::HashMap<i64, String> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    for message in &seen {
        let Some(id) = message.json()["new"]["id"].as_i64() else {
            problems.push(format!("not an insert: {:?} {} {}", message.id, message.event, message.data));
            continue;
        };
        match bodies.get(&id) {
            Some(body) if *body != message.data => problems.push(format!("row {id} twice with another body")),
            Some(_) => {}
            None => {
                bodies.insert(id, message.data.clone());
                first_seen.push(id);
            }
        }
    }
    let expected: Vec<i64> = (1..=i64::from(ROWS)).collect();
    if first_seen != expected {
        let missing: Vec<&i64> = expected.iter().filter(|id| !bodies.contains_key(id)).collect();
        problems.push(format!("missing {missing:?}; first seen in this order: {first_seen:?}"));
    }
    assert!(problems.is_empty(), "{problems:#?} ({reconnects} reconnects)\n{}", gw.process.stderr());
    let duplicates = seen.len() - first_seen.len();
    eprintln!("stream leader stopped: {ROWS} events, {duplicates} duplicates, {reconnects} reconnects");
    stop(producer).await;
    gw.stop().await;
}

/// Over the stream protocol: the producer writes `--publish-to stream`, given another node's URL
/// first and the stream's leader second: it publishes on a connection to the leader, found
/// through the stream's metadata. `serve` reads it with `--history-protocol stream`, given the
/// leader's URL first. The leader is stopped mid-stream (and started again at the end): the
/// gateway passes over it to the next node of its URL, both follow the new leader, the stream
/// holds each change exactly once, in commit order (the deduplication state moved with the
/// leader), and subscribers cut off resume with `Last-Event-ID` without a gap or a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn over_the_stream_protocol_each_change_is_stored_once_when_the_streams_leader_stops() {
    const ROWS: i32 = 600;
    let cluster = RabbitCluster::start_with_stream(3).await;
    let world = World::new().await;
    world.pg.execute("CREATE TABLE seam (id int PRIMARY KEY)").await;
    let stream = unique_name("history");
    // Declared through the first node; the test asks which node leads it.
    let declaring: pgevents_stream::StreamUrl =
        cluster.nodes[0].stream_url().expect("stream port").parse().expect("URL");
    let client = pgevents_stream::client(&declaring, "pgevents test").await.expect("connect");
    let retention = pgevents_stream::StreamRetention { max_age: "1D".into(), max_bytes: 1 << 30, ..Default::default() };
    pgevents_stream::ensure_stream(&client, &stream, &retention).await.expect("declare the stream");
    drop(client);
    let leader = wait_for("the stream's leader", WAIT, || cluster.leader_of(&cluster.nodes[0], &stream)).await;
    let (leader_url, leader_port) =
        (leader.stream_url().expect("stream URL"), leader.stream_port.expect("stream port"));
    let entry_url = cluster.other_than(leader).stream_url().expect("stream port");
    let (entry_first, leader_first) = (format!("{entry_url},{leader_url}"), format!("{leader_url},{entry_url}"));
    let urls = cluster.urls();
    let producer = world
        .producer(&[
            ("RABBITMQ_URL", &urls),
            ("PGEVENTS_PUBLISH_TO", "stream"),
            ("PGEVENTS_STREAM", &stream),
            ("PGEVENTS_STREAM_URL", &entry_first),
        ])
        .await;
    let publishing = || async { (connections_to(producer.pid(), leader_port) > 0).then_some(()) };
    wait_for("the producer's connection to the stream's leader", WAIT, publishing).await;
    let gw = Gateway::start(
        &world,
        &stream,
        Some(&urls),
        &[("PGEVENTS_HISTORY_PROTOCOL", "stream"), ("PGEVENTS_STREAM_URL", &leader_first)],
    )
    .await;
    let writer = common::insert_paced(&world.pg, "INSERT INTO seam VALUES ($1)", ROWS);
    // The subscriber connects first: it must see every change (`follow` ends at the last row).
    let writer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        writer.await;
    };
    // Stopped until every change arrived: reconnecting needs the next node of the URL.
    let stop_the_leader = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        leader.stop_app().await;
    };
    let ((), (seen, reconnects), ()) = tokio::join!(writer, follow(&gw, ROWS as usize), stop_the_leader);
    leader.start_app().await;
    let ids: Vec<i64> = seen.iter().filter_map(|m| m.json()["new"]["id"].as_i64()).collect();
    let expected: Vec<i64> = (1..=i64::from(ROWS)).collect();
    assert_eq!(
        ids,
        expected,
        "subscribers saw each change once, in order ({reconnects} reconnects)\n{}",
        gw.process.stderr()
    );
    let gateway_log = gw.process.stderr();
    assert!(
        gateway_log.contains("connected to the next node of the stream URL"),
        "the gateway passed over the stopped node:\n{gateway_log}"
    );
    let log = stop(producer).await;
    gw.stop().await;
    let records = read_stream_at(&entry_url, &stream, Duration::from_secs(3), 10 * ROWS as usize).await;
    let stored: Vec<i64> = records.iter().filter_map(|r| r.json()["new"]["id"].as_i64()).collect();
    let all: Vec<i64> = (1..=i64::from(ROWS)).collect();
    assert_eq!(stored, all, "the stream holds each change exactly once, in commit order; producer log:\n{log}");
    assert!(log.contains("connection failed; reconnecting"), "the producer's publisher lost the leader:\n{log}");
    eprintln!("stream leader stopped, over the stream protocol: {ROWS} changes stored once, {reconnects} subscriber reconnects");
}
