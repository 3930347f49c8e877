//! `--snapshot-new-tables`: a table added to the publication while the producer runs is streamed
//! from that point (pgoutput follows the publication by itself), and its existing rows are
//! backfilled. The tables already seen are kept in `pgevents.streamed_table`, so that a table
//! added while the producer was stopped is backfilled at the next start, and one removed and
//! added again is backfilled again.

use pgevents_decode::Plugin;

use crate::config::ProducerConfig;
use crate::database::Database;
use crate::error::{pg_error, ProducerError};
use crate::routing::Router;

pub const STREAMED_TABLES_SQL: &str = r#"
CREATE TABLE pgevents.streamed_table (
    slot        text NOT NULL,
    schema_name text NOT NULL,
    relname     text NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, schema_name, relname)
);
COMMENT ON TABLE pgevents.streamed_table IS
    'The tables each producer (slot) has seen in its publication, for --snapshot-new-tables; a row with empty names marks the first look.';
REVOKE ALL ON pgevents.streamed_table FROM PUBLIC;
"#;

/// Whether the streamed set follows the publication here: pgoutput, and the publication (not
/// `PGTABLES`) says which tables.
pub fn follows(config: &ProducerConfig) -> bool {
    config.snapshot_new_tables && config.plugin == Plugin::PgOutput && config.tables.is_empty()
}

/// Compares the publication with the tables seen before: new ones are recorded and a backfill
/// is asked for each (by the producer's role, for its slot); removed ones are forgotten. The
/// first look records what is there without backfilling it. Returns the tables added.
pub async fn follow(db: &Database, config: &ProducerConfig, router: &Router) -> Result<Vec<String>, ProducerError> {
    let Some(current) = db.published_tables(&config.publication).await? else {
        return Ok(Vec::new());
    };
    let current: Vec<(String, String)> = current.into_iter().filter(|(s, t)| router.streams(s, t)).collect();
    let client = db.client();
    let fail = |e| pg_error("compare the publication with pgevents.streamed_table", e);
    client.batch_execute("BEGIN").await.map_err(fail)?;
    let result = async {
        let first = client
            .execute(
                "INSERT INTO pgevents.streamed_table (slot, schema_name, relname) VALUES ($1, '', '') ON CONFLICT DO NOTHING",
                &[&config.slot],
            )
            .await
            .map_err(fail)?
            == 1;
        let schemas: Vec<&str> = current.iter().map(|(s, _)| s.as_str()).collect();
        let names: Vec<&str> = current.iter().map(|(_, t)| t.as_str()).collect();
        let added = client
            .query(
                "INSERT INTO pgevents.streamed_table (slot, schema_name, relname)
                 SELECT $1, s, t FROM unnest($2::text[], $3::text[]) AS c(s, t)
                 ON CONFLICT DO NOTHING
                 RETURNING schema_name, relname",
                &[&config.slot, &schemas, &names],
            )
            .await
            .map_err(fail)?;
        client
            .execute(
                "DELETE FROM pgevents.streamed_table WHERE slot = $1 AND schema_name <> ''
                   AND (schema_name, relname) NOT IN (SELECT * FROM unnest($2::text[], $3::text[]))",
                &[&config.slot, &schemas, &names],
            )
            .await
            .map_err(fail)?;
        let mut tables = Vec::new();
        if !first {
            for row in &added {
                let (schema, name): (String, String) = (row.get(0), row.get(1));
                client
                    .execute(
                        "INSERT INTO pgevents.backfill (schema_name, relname, slot, requested_by) VALUES ($1, $2, $3, current_user)",
                        &[&schema, &name, &config.slot],
                    )
                    .await
                    .map_err(fail)?;
                tables.push(format!("{schema}.{name}"));
            }
        }
        Ok::<_, ProducerError>(tables)
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await.map_err(fail)?;
    result
}
