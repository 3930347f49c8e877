//! `pgevents consumer_debug`: prints the events of the bound tables, in each output format, and
//! stops cleanly on SIGTERM.

mod common;

use std::time::Duration;

use common::{stop, World, WAIT};
use pgevents_testkit::{amqp_url, wait_for, PgEventsProcess};

fn consumer_debug(world: &World, extra: &[&str]) -> PgEventsProcess {
    let mut args = vec!["consumer_debug", "--binding-keys", "public.wanted"];
    args.extend_from_slice(extra);
    PgEventsProcess::spawn(
        &args,
        &[("RABBITMQ_URL".into(), amqp_url()), ("RABBITMQ_EXCHANGE".into(), world.exchange.clone())],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn prints_the_events_of_bound_tables() {
    let world = World::new().await;
    world
        .pg
        .execute("CREATE TABLE wanted (id int PRIMARY KEY, n numeric); CREATE TABLE other (id int PRIMARY KEY);")
        .await;
    let mut json = consumer_debug(&world, &["--format", "json"]);
    let mut line = consumer_debug(&world, &["--format", "line"]);
    let mut pretty = consumer_debug(&world, &["--format", "pretty"]);
    for p in [&mut json, &mut line, &mut pretty] {
        p.wait_for_log("consuming", WAIT).await;
    }
    // keep the collector queue so the world's exchange is cleaned up like in other tests
    let queue = world.queue(&["#"]).await;
    let producer = world.producer(&[]).await;
    world
        .pg
        .execute(
            "INSERT INTO other VALUES (1);
             INSERT INTO wanted VALUES (1, 123456789012345678901234567890.5);
             INSERT INTO other VALUES (2);",
        )
        .await;

    let printed = wait_for("consumer_debug to print the event", WAIT, || {
        let out = json.stdout();
        async move { (!out.is_empty()).then_some(out) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "only the bound table's event: {printed}");
    let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(event["table_name"], "public.wanted");
    assert!(lines[0].contains("123456789012345678901234567890.5"), "exact digits: {}", lines[0]);

    let text = wait_for("the line format", WAIT, || {
        let out = line.stdout();
        async move { (!out.is_empty()).then_some(out) }
    })
    .await;
    assert!(text.starts_with("public.wanted I 0/"), "routing key, action, message id, body: {text}");

    let text = wait_for("the pretty format", WAIT, || {
        let out = pretty.stdout();
        async move { out.contains("\n}").then_some(out) }
    })
    .await;
    assert!(text.starts_with("{\n  \"table_name\": \"public.wanted\",\n  \"action\": \"I\","), "{text}");
    assert!(text.contains("\"n\": 123456789012345678901234567890.5"), "{text}");

    for p in [json, line, pretty] {
        stop(p).await;
    }
    stop(producer).await;
    world.cleanup(queue).await;
}
