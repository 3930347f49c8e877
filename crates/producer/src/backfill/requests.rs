//! Backfill requests, kept in `pgevents.backfill`: asked for with `pgevents.snapshot(tables)`
//! (SECURITY DEFINER, `EXECUTE` granted per role; the caller must be able to read each table),
//! taken by a producer, their progress recorded after each chunk RabbitMQ confirmed, so that a
//! restart resumes them. Cancelled with `pgevents.snapshot_cancel(id)`.

use pgevents_event::Lsn;

use crate::database::Database;
use crate::error::{pg_error, ProducerError};

pub const REQUESTS_SQL: &str = r#"
CREATE TABLE pgevents.backfill (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name      text NOT NULL,
    relname          text NOT NULL,
    slot             text,
    requested_by     name NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    rows_done        bigint NOT NULL DEFAULT 0,
    rows_estimate    bigint,
    chunks           integer NOT NULL DEFAULT 0,
    chunks_retried   integer NOT NULL DEFAULT 0,
    last_key         text[],
    -- A partial backfill: an SQL condition on the table's row, run with the requester's rights.
    condition        text,
    error            text,
    cancel_requested boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE pgevents.backfill IS
    'Backfills on demand: SELECT pgevents.snapshot(ARRAY[''public.orders'']) asks for one; pgevents snapshot --status shows them.';
REVOKE ALL ON pgevents.backfill FROM PUBLIC;

CREATE FUNCTION pgevents.snapshot(tables text[], slot text DEFAULT NULL, condition text DEFAULT NULL) RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    given text;
    parts text[];
    found_schema text;
    found_name text;
    table_oid oid;
    kind "char";
    new_id bigint;
BEGIN
    IF tables IS NULL OR cardinality(tables) = 0 THEN
        RAISE EXCEPTION 'pgevents.snapshot() needs at least one table' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF condition IS NOT NULL AND (btrim(condition) = '' OR octet_length(condition) > 4096) THEN
        RAISE EXCEPTION 'pgevents.snapshot(): a condition has 1 to 4096 bytes' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF slot IS NOT NULL AND octet_length(slot) NOT BETWEEN 1 AND 63 THEN
        RAISE EXCEPTION 'pgevents.snapshot(): a slot name has 1 to 63 bytes' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH given IN ARRAY tables LOOP
        parts := parse_ident(given);
        IF parts[1] IN ('pg_catalog', 'information_schema', 'pgevents', 'pg_toast') THEN
            RAISE EXCEPTION 'pgevents.snapshot(): % is not a table of the application''s', given
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF cardinality(parts) = 1 THEN
            parts := ARRAY['public', parts[1]];
        ELSIF cardinality(parts) <> 2 THEN
            RAISE EXCEPTION 'pgevents.snapshot(): % is not schema.table', given USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT c.oid, c.relkind, n.nspname, c.relname INTO table_oid, kind, found_schema, found_name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = parts[1] AND c.relname = parts[2];
        IF NOT FOUND OR kind NOT IN ('r', 'p') THEN
            RAISE EXCEPTION 'pgevents.snapshot(): there is no table %', given USING ERRCODE = 'undefined_table';
        END IF;
        -- The caller (the role that logged in) must be able to read what it asks to publish.
        IF NOT has_schema_privilege(session_user, found_schema, 'USAGE')
           OR NOT has_table_privilege(session_user, table_oid, 'SELECT') THEN
            RAISE EXCEPTION 'pgevents.snapshot(): % may not read %', session_user, given
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- The same table asked for again while its backfill waits or runs: that one.
        SELECT b.id INTO new_id FROM pgevents.backfill b
        WHERE b.schema_name = found_schema AND b.relname = found_name AND b.status IN ('queued', 'running')
          AND b.slot IS NOT DISTINCT FROM snapshot.slot AND b.condition IS NOT DISTINCT FROM snapshot.condition
          AND NOT b.cancel_requested
        ORDER BY b.id LIMIT 1;
        IF NOT FOUND THEN
            INSERT INTO pgevents.backfill (schema_name, relname, slot, requested_by, condition)
            VALUES (found_schema, found_name, slot, session_user, condition)
            RETURNING id INTO new_id;
        END IF;
        RETURN NEXT new_id;
    END LOOP;
END $$;
REVOKE EXECUTE ON FUNCTION pgevents.snapshot(text[], text, text) FROM PUBLIC;
COMMENT ON FUNCTION pgevents.snapshot(text[], text, text) IS
    'Asks the producer to backfill these tables (R events, read in key order between watermarks, without locks). GRANT EXECUTE to the roles that may.';

CREATE FUNCTION pgevents.snapshot_cancel(backfill bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE pgevents.backfill b
    SET cancel_requested = true,
        status = CASE WHEN b.status = 'queued' THEN 'cancelled' ELSE b.status END,
        finished_at = CASE WHEN b.status = 'queued' THEN now() ELSE b.finished_at END,
        updated_at = now()
    WHERE b.id = backfill AND b.status IN ('queued', 'running')
      AND pg_has_role(session_user, b.requested_by, 'MEMBER');
    RETURN FOUND;
END $$;
REVOKE EXECUTE ON FUNCTION pgevents.snapshot_cancel(bigint) FROM PUBLIC;

-- What pgevents snapshot --status shows: the caller's backfills (those of roles it is a member
-- of), without the last key read (values of the table).
CREATE FUNCTION pgevents.snapshot_status(max_rows integer DEFAULT 50)
RETURNS TABLE (id bigint, table_name text, status text, requested_by name, requested_at timestamptz,
               started_at timestamptz, finished_at timestamptz, rows_done bigint, rows_estimate bigint,
               chunks integer, chunks_retried integer, error text)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT b.id, b.schema_name || '.' || b.relname, b.status, b.requested_by, b.requested_at, b.started_at,
           b.finished_at, b.rows_done, b.rows_estimate, b.chunks, b.chunks_retried, b.error
    FROM pgevents.backfill b
    WHERE pg_has_role(session_user, b.requested_by, 'MEMBER')
    ORDER BY b.id DESC LIMIT max_rows
$$;
REVOKE EXECUTE ON FUNCTION pgevents.snapshot_status(integer) FROM PUBLIC;
COMMENT ON FUNCTION pgevents.snapshot_cancel(bigint) IS
    'Cancels a queued or running backfill (the requester''s, or a role it is a member of).';
"#;

/// A backfill this producer works on.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: i64,
    pub schema: String,
    pub table: String,
    pub last_key: Option<Vec<String>>,
    pub rows_done: i64,
    pub chunks: i32,
    /// Asked for without a slot: another producer may take it if this one cannot.
    pub for_any_slot: bool,
    pub requested_by: String,
    /// A partial backfill's condition (SQL on the row, run as `requested_by`).
    pub condition: Option<String>,
}

/// Takes the oldest queued request for this slot (or any slot, but those in `skip`), or resumes
/// the one it was running before a restart.
pub async fn claim(db: &Database, slot: &str, skip: &[i64]) -> Result<Option<Request>, ProducerError> {
    let row = db
        .client()
        .query_opt(
            "WITH taken AS (
                 SELECT id, slot IS NULL AS for_any_slot FROM pgevents.backfill
                 WHERE ((status = 'queued' AND (slot IS NULL OR slot = $1)) OR (status = 'running' AND slot = $1))
                   AND id <> ALL($2)
                 ORDER BY (status = 'running') DESC, id
                 LIMIT 1 FOR UPDATE SKIP LOCKED)
             UPDATE pgevents.backfill b
             SET status = 'running', slot = $1, started_at = coalesce(b.started_at, now()), updated_at = now(),
                 rows_estimate = coalesce(b.rows_estimate, (
                     SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END FROM pg_catalog.pg_class c
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = b.schema_name AND c.relname = b.relname))
             FROM taken WHERE b.id = taken.id
             RETURNING b.id, b.schema_name, b.relname, b.last_key, b.rows_done, b.chunks, taken.for_any_slot,
                       b.requested_by::text, b.condition",
            &[&slot, &skip],
        )
        .await
        .map_err(|e| pg_error("take a backfill request (pgevents.backfill)", e))?;
    Ok(row.map(|r| Request {
        id: r.get(0),
        schema: r.get(1),
        table: r.get(2),
        last_key: r.get(3),
        rows_done: r.get(4),
        chunks: r.get(5),
        for_any_slot: r.get(6),
        requested_by: r.get(7),
        condition: r.get(8),
    }))
}

/// Gives a request for any slot back, for another producer.
pub async fn release(db: &Database, id: i64) -> Result<(), ProducerError> {
    db.client()
        .execute(
            "UPDATE pgevents.backfill SET status = 'queued', slot = NULL, started_at = NULL, updated_at = now()
             WHERE id = $1 AND rows_done = 0",
            &[&id],
        )
        .await
        .map_err(|e| pg_error("give a backfill request back", e))?;
    Ok(())
}

/// Whether the backfill was cancelled.
pub async fn cancel_requested(db: &Database, id: i64) -> Result<bool, ProducerError> {
    let row = db
        .client()
        .query_one("SELECT cancel_requested FROM pgevents.backfill WHERE id = $1", &[&id])
        .await
        .map_err(|e| pg_error("read a backfill's state", e))?;
    Ok(row.get(0))
}

/// Records a chunk RabbitMQ confirmed.
pub async fn progress(db: &Database, id: i64, last_key: &Option<Vec<String>>, rows: i64) -> Result<(), ProducerError> {
    db.client()
        .execute(
            "UPDATE pgevents.backfill SET last_key = $2, rows_done = rows_done + $3, chunks = chunks + 1, updated_at = now()
             WHERE id = $1",
            &[&id, last_key, &rows],
        )
        .await
        .map_err(|e| pg_error("record a backfill's progress", e))?;
    Ok(())
}

/// Counts a chunk read again.
pub async fn retried(db: &Database, id: i64) -> Result<(), ProducerError> {
    db.client()
        .execute(
            "UPDATE pgevents.backfill SET chunks_retried = chunks_retried + 1, updated_at = now() WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(|e| pg_error("record a backfill's progress", e))?;
    Ok(())
}

/// How a backfill ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Done,
    Cancelled,
    Failed(String),
}

pub async fn finish(db: &Database, id: i64, end: &End) -> Result<(), ProducerError> {
    let (status, error) = match end {
        End::Done => ("done", None),
        End::Cancelled => ("cancelled", None),
        End::Failed(why) => ("failed", Some(why.as_str())),
    };
    db.client()
        .execute(
            "UPDATE pgevents.backfill SET status = $2, error = $3, finished_at = now(), updated_at = now() WHERE id = $1",
            &[&id, &status, &error],
        )
        .await
        .map_err(|e| pg_error("record the end of a backfill", e))?;
    Ok(())
}

/// Writes a watermark (a signed logical message in a transaction of its own); returns its LSN.
pub async fn watermark(db: &Database, payload: &str) -> Result<Lsn, ProducerError> {
    let row = db
        .client()
        .query_one("SELECT pgevents._emit_signed('watermark', $1)::text", &[&payload])
        .await
        .map_err(|e| pg_error("write a backfill watermark (pgevents._emit_signed)", e))?;
    let text: String = row.get(0);
    text.parse().map_err(|_| ProducerError::Protocol(format!("unexpected LSN {text:?} from pg_logical_emit_message")))
}

/// One backfill as `pgevents snapshot --status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub id: i64,
    pub table: String,
    pub status: String,
    pub requested_by: String,
    pub rows_done: i64,
    pub rows_estimate: Option<i64>,
    /// Rows per second since it started (until it ended).
    pub rate: Option<f64>,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
    pub chunks: i32,
    pub chunks_retried: i32,
    pub error: Option<String>,
}

/// Asks for backfills of `tables` (as `pgevents.snapshot()` does, with the caller's rights).
pub async fn request(
    client: &tokio_postgres::Client,
    tables: &[String],
    slot: Option<&str>,
    condition: Option<&str>,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client.query("SELECT pgevents.snapshot($1, $2, $3)", &[&tables, &slot, &condition]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Cancels a backfill; `false` when there was none queued or running of that id (for the caller).
pub async fn cancel(client: &tokio_postgres::Client, id: i64) -> Result<bool, tokio_postgres::Error> {
    client.query_one("SELECT pgevents.snapshot_cancel($1)", &[&id]).await.map(|r| r.get(0))
}

/// The latest backfills of the caller (and of the roles it is a member of), newest first.
pub async fn status(client: &tokio_postgres::Client, limit: i32) -> Result<Vec<Status>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, table_name, status, requested_by::text, rows_done, rows_estimate,
                    rows_done / nullif(extract(epoch FROM coalesce(finished_at, now()) - started_at), 0)::float8,
                    chunks, chunks_retried, error
             FROM pgevents.snapshot_status($1)",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let rows_done: i64 = r.get(4);
            let rows_estimate: Option<i64> = r.get(5);
            let rate: Option<f64> = r.get(6);
            let status: String = r.get(2);
            let eta_seconds = match (status.as_str(), rate, rows_estimate) {
                ("running", Some(rate), Some(estimate)) if rate > 0.0 => {
                    Some(((estimate - rows_done).max(0) as f64) / rate)
                }
                _ => None,
            };
            Status {
                id: r.get(0),
                table: r.get(1),
                status,
                requested_by: r.get(3),
                rows_done,
                rows_estimate,
                rate,
                eta_seconds,
                chunks: r.get(7),
                chunks_retried: r.get(8),
                error: r.get(9),
            }
        })
        .collect())
}
