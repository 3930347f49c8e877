//! Routing: the routing key template, per-table exchanges, table include/exclude globs and
//! excluded columns.

mod common;

use std::time::Duration;

use common::{stop, World, WAIT};
use pgevents_testkit::{delete_exchange, unique_name, EventQueue};

#[tokio::test(flavor = "multi_thread")]
async fn events_follow_the_template_the_exchange_map_and_the_filters() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE users (id int PRIMARY KEY, name text, password_hash text, secret_note text);
             CREATE TABLE orders (id int PRIMARY KEY, password_hash text);
             CREATE TABLE tmp_import (id int PRIMARY KEY);",
        )
        .await;
    let orders_exchange = unique_name("x_orders");
    let mut main = world.queue(&["#"]).await;
    let mut orders = EventQueue::bind(&orders_exchange, &["#"]).await;
    let exchange_map = format!("public.orders={orders_exchange}");
    let producer = world
        .producer(&[
            ("PGEVENTS_ROUTING_KEY_TEMPLATE", "{database}.{schema}.{table}"),
            ("PGEVENTS_EXCHANGE_MAP", &exchange_map),
            ("PGEVENTS_EXCLUDE_TABLES", "public.tmp_*"),
            ("PGEVENTS_EXCLUDE_COLUMNS", "password_hash,public.users.secret_*"),
        ])
        .await;
    world.pg.execute("INSERT INTO tmp_import VALUES (1)").await;
    world.pg.execute("INSERT INTO users VALUES (1, 'ann', 'h4sh', 'psst')").await;
    world.pg.execute("UPDATE users SET password_hash = 'n3w' WHERE id = 1").await;
    world.pg.execute("INSERT INTO orders VALUES (7, 'h')").await;

    let events = main.take(2, WAIT).await;
    assert_eq!(events[0].delivery.routing_key, "postgres.public.users", "the excluded table sent nothing before it");
    assert_eq!(events[0].json["new"], serde_json::json!({"id": 1, "name": "ann"}));
    assert_eq!(events[0].json["diff"], serde_json::json!({"id": 1, "name": "ann"}));
    assert_eq!(events[1].json["action"], "U");
    assert_eq!(events[1].json["new"], serde_json::json!({"id": 1, "name": "ann"}));
    assert!(events[1].json["diff"].get("password_hash").is_none(), "{}", events[1].json);
    let order = orders.next(WAIT).await.expect("the orders event on its own exchange");
    assert_eq!(order.delivery.routing_key, "postgres.public.orders");
    assert_eq!(order.json["new"], serde_json::json!({"id": 7}));
    assert!(main.drain(Duration::from_millis(500)).await.is_empty(), "nothing else on the main exchange");

    stop(producer).await;
    orders.close().await;
    delete_exchange(&orders_exchange).await;
    world.cleanup(main).await;
}
