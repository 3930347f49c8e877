//! The `pgevents` schema: the rule tables, the signed-message functions and the snapshot's progress tables are installed
//! through one record of migrations, by component, and a record made before components existed
//! is upgraded in place.

mod common;

use common::{run_to_end, stop, World};

#[tokio::test(flavor = "multi_thread")]
async fn rule_and_snapshot_tables_share_one_record_of_migrations() {
    let world = World::new().await;
    let first = run_to_end(&["rules", "install"], &world.pg.env()).await;
    assert!(first.contains("applied migration 1 rule tables"), "{first}");
    assert!(first.contains("applied migration 2 sessions and subscriptions"), "{first}");

    // The record as pgevents 0.1 made it: keyed by version alone.
    world
        .pg
        .execute(
            "ALTER TABLE pgevents.schema_migration DROP CONSTRAINT schema_migration_pkey;
             ALTER TABLE pgevents.schema_migration DROP COLUMN component;
             ALTER TABLE pgevents.schema_migration ADD PRIMARY KEY (version);",
        )
        .await;
    let client = world.pg.client().await;
    assert_eq!(pgevents_rules::installed_version(&client).await.unwrap(), 5, "still seen as installed");
    let again = run_to_end(&["rules", "install"], &world.pg.env()).await;
    assert!(again.contains("already at version 5"), "{again}");
    let key_columns = world
        .pg
        .query_text(
            "SELECT string_agg(a.attname, ',' ORDER BY array_position(c.conkey, a.attnum))
             FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
             WHERE c.conrelid = 'pgevents.schema_migration'::regclass AND c.contype = 'p'",
        )
        .await;
    assert_eq!(key_columns.as_deref(), Some("component,version"), "the record is upgraded");

    // The producer's snapshot installs its tables through the same record.
    world.pg.execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)").await;
    let producer = world.producer(&[("PGEVENTS_SNAPSHOT", "initial")]).await;
    stop(producer).await;
    let record = world
        .pg
        .query_text("SELECT string_agg(component || ' ' || version || ' ' || name, '; ' ORDER BY component, version) FROM pgevents.schema_migration")
        .await;
    assert_eq!(
        record.as_deref(),
        Some("rules 1 rule tables; rules 2 sessions and subscriptions; rules 3 subscriptions within the owner's privileges; rules 4 rules run with their owner's rights; rules 5 rule text of several events in one call; signals 1 signed messages; snapshot 1 snapshot progress; snapshot 2 backfills on demand; snapshot 3 tables seen in the publication")
    );
    assert_eq!(pgevents_rules::installed_version(&client).await.unwrap(), 5);
    pgevents_testkit::delete_exchange(&world.exchange).await;
}
