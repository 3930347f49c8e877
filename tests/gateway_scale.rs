//! `pgevents serve` under load and abuse: thousands of subscribers on one AMQP channel, the
//! subscriber limit, clients that never finish their request (slow-loris) and clients that stop
//! reading.

mod common;

use std::time::Duration;

use common::gateway::Gateway;
use common::{stop, World, WAIT};
use pgevents_testkit::{connection_channels, unique_name, wait_for, SseClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Subscribers at once in the big test (the machine's file-descriptor limit allows 10,000 with
/// the clients on the same machine; the benchmark measures that many).
const SUBSCRIBERS: usize = 5000;
const EVENTS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_subscribers_each_get_every_event_over_one_channel() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE ticks (id int PRIMARY KEY)").await;
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for wave in 0..SUBSCRIBERS / 500 {
        let connects = (0..500).map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move {
                SseClient::connect(addr, &format!("/events?consumer_id=c{}", wave * 500 + i), &[]).await
            })
        });
        for connect in connects.collect::<Vec<_>>() {
            let client = connect.await.unwrap();
            assert_eq!(client.status, 200, "{}", client.body);
            clients.push(client);
        }
    }
    wait_for("every subscriber connected", WAIT, || async {
        (gw.metric("pgevents_gateway_clients").await as usize == SUBSCRIBERS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.pg.execute(&format!("INSERT INTO ticks SELECT generate_series(1, {EVENTS})")).await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(EVENTS);
                while ids.len() < EVENTS {
                    match client.next(Duration::from_secs(60)).await {
                        Some(event) => ids.push(event.json()["id"].as_i64().unwrap_or(-1)),
                        None => break,
                    }
                }
                ids
            })
        })
        .collect();
    let expected: Vec<i64> = (1..=EVENTS as i64).collect();
    let mut complete = 0;
    for reader in readers {
        if reader.await.unwrap() == expected {
            complete += 1;
        }
    }
    assert_eq!(complete, SUBSCRIBERS, "every subscriber got every event, in order");
    assert_eq!(
        connection_channels(&format!("pgevents serve ({stream})")),
        Some(1),
        "one AMQP channel for all subscribers"
    );
    assert_eq!(gw.metric("pgevents_gateway_events_sent_total").await as usize, SUBSCRIBERS * EVENTS);
    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribers_beyond_the_maximum_are_told_to_retry_later() {
    let world = World::new().await;
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[("PGEVENTS_MAX_CLIENTS", "3")]).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(gw.subscribe(&format!("/events?consumer_id=s{i}"), &[]).await);
    }
    let refused = gw.refused("/events?consumer_id=s3", &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(refused.body.contains("maximum of 3 subscribers (--max-clients)"), "{}", refused.body);
    assert_eq!(gw.metric("pgevents_gateway_rejected_total{reason=\"max_clients\"}").await, 1.0);
    held.pop();
    wait_for("a place freed by a subscriber that left", WAIT, || async {
        let client = SseClient::connect(gw.addr, "/events?consumer_id=s4", &[]).await;
        (client.status == 200).then_some(())
    })
    .await;
    gw.stop().await;
}

/// Whether the server closes the connection within `within` (reads until EOF or an error).
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_finish_their_request_are_disconnected() {
    let world = World::new().await;
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[("PGEVENTS_HEADER_READ_TIMEOUT", "2")]).await;
    // Slow-loris: the request line and headers trickle in a byte at a time, never finished.
    let mut loris = TcpStream::connect(gw.addr).await.unwrap();
    loris.write_all(b"GET /events?consumer_id=slow HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if loris.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let started = tokio::time::Instant::now();
    trickle.await;
    let mut loris = loris;
    assert!(closed_by_server(&mut loris, Duration::from_secs(3)).await, "the trickling client is disconnected");
    assert!(started.elapsed() < Duration::from_secs(9));
    // A connection that sends nothing at all is closed too.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(6)).await, "the silent client is disconnected");
    // Everyone else is served as usual.
    gw.subscribe("/events?consumer_id=ok", &[]).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_stops_reading_is_disconnected() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE blobs (id int PRIMARY KEY, body text)").await;
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[("PGEVENTS_STALL_TIMEOUT", "2")]).await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    // A small receive buffer, so that the kernel cannot absorb what the client does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    let mut stuck = socket.connect(gw.addr).await.unwrap();
    stuck.write_all(b"GET /events?consumer_id=stuck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    wait_for("the subscriber is connected", WAIT, || async {
        (gw.metric("pgevents_gateway_clients").await == 1.0).then_some(())
    })
    .await;
    // Far more than the socket buffers hold, and never read.
    world.pg.execute("INSERT INTO blobs SELECT i, repeat('x', 10000) FROM generate_series(1, 1500) i").await;
    for _ in 0..300 {
        if gw.metric("pgevents_gateway_stalled_clients_total").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.metric("pgevents_gateway_stalled_clients_total").await, 1.0, "{}", gw.process.stderr());
    assert_eq!(gw.metric("pgevents_gateway_clients").await, 0.0);
    let log = gw.process.stderr();
    assert!(log.contains("has not read what was sent to it for longer than --stall-timeout"), "{log}");
    drop(stuck);
    stop(producer).await;
    gw.stop().await;
}
