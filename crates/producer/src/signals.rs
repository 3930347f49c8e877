//! The functions that sign what applications send through the WAL, and the keys they sign with:
//! the `signals` component of the pgevents schema, installed by the producer at start, and read
//! by it to verify every message (see `pgevents_decode::signal`).
//!
//! Who may send what is `GRANT EXECUTE` on `pgevents.context(jsonb)`, `pgevents.skip()` and
//! `pgevents.outbox(...)`: none is executable by `PUBLIC`. They are `SECURITY DEFINER` (the key
//! is readable only by the schema's owner), with `search_path` pinned; the key never leaves the
//! database except to the producer, which reads it as that owner.

use std::time::{Duration, Instant};

use pgevents_decode::signal::{MessageKey, MessageKeys};
use pgevents_pg::schema::{self, Component, Migration, SchemaError};

use crate::config::ProducerConfig;
use crate::database::Database;
use crate::error::{pg_error, ProducerError};

/// Signed messages need `pg_current_xact_id()` and `gen_random_uuid()`.
pub const MIN_SERVER_VERSION: u32 = 130_000;

pub const SIGNALS: Component = Component {
    name: "signals",
    migrations: &[Migration { version: 1, name: "signed messages", sql: SIGNED_MESSAGES }],
};

const SIGNED_MESSAGES: &str = r#"
CREATE TABLE pgevents.message_key (
    kid        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key        bytea NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
);
COMMENT ON TABLE pgevents.message_key IS
    'Keys that sign pgevents messages. Readable by the owner of this table (and its members) only: pgevents.rotate_message_key() adds one.';
REVOKE ALL ON pgevents.message_key FROM PUBLIC;
-- Row-level security, forced: roles that read every table (pg_read_all_data) do not read these.
ALTER TABLE pgevents.message_key ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgevents.message_key FORCE ROW LEVEL SECURITY;
CREATE POLICY message_key_owner ON pgevents.message_key USING (
    pg_catalog.pg_has_role(
        (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = 'pgevents.message_key'::pg_catalog.regclass),
        'MEMBER'));

-- HMAC-SHA256 (RFC 2104) from the core sha256(): pgcrypto is not needed.
CREATE FUNCTION pgevents.hmac_sha256(key bytea, message bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    block bytea;
    inner_pad bytea;
    outer_pad bytea;
BEGIN
    IF length(key) > 64 THEN
        key := sha256(key);
    END IF;
    block := key || decode(repeat('00', 64 - length(key)), 'hex');
    inner_pad := block;
    outer_pad := block;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(block, i) # 54);
        outer_pad := set_byte(outer_pad, i, get_byte(block, i) # 92);
    END LOOP;
    RETURN sha256(outer_pad || sha256(inner_pad || message));
END $$;

-- 32 bytes from three version-4 uuids (366 random bits).
CREATE FUNCTION pgevents._new_message_key() RETURNS bytea
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, 'UTF8'))
$$;
REVOKE EXECUTE ON FUNCTION pgevents._new_message_key() FROM PUBLIC;

-- Emits a signed message bound to the calling transaction. Internal: called by the
-- SECURITY DEFINER functions below, as their owner.
CREATE FUNCTION pgevents._emit_signed(kind text, payload text) RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    signing record;
    head text;
BEGIN
    SELECT k.kid, k.key INTO signing FROM pgevents.message_key k
    WHERE k.retired_at IS NULL OR k.retired_at > clock_timestamp()
    ORDER BY k.kid DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgevents has no message key'
            USING HINT = 'The schema''s owner runs SELECT pgevents.rotate_message_key()';
    END IF;
    head := format('v1|%s|%s|%s|', signing.kid, (pg_current_xact_id()::text::bigint % 4294967296), kind);
    RETURN pg_logical_emit_message(true, 'pgevents',
        convert_to(head, 'UTF8')
        || convert_to(encode(pgevents.hmac_sha256(signing.key, convert_to(head || payload, 'UTF8')), 'hex') || '|', 'UTF8')
        || convert_to(payload, 'UTF8'));
END $$;
REVOKE EXECUTE ON FUNCTION pgevents._emit_signed(text, text) FROM PUBLIC;

CREATE FUNCTION pgevents.context(context jsonb) RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF context IS NULL OR jsonb_typeof(context) <> 'object' THEN
        RAISE EXCEPTION 'pgevents.context() takes a JSON object, not %', coalesce(jsonb_typeof(context), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN pgevents._emit_signed('context', context::text);
END $$;
REVOKE EXECUTE ON FUNCTION pgevents.context(jsonb) FROM PUBLIC;
COMMENT ON FUNCTION pgevents.context(jsonb) IS
    'Attaches a JSON object to every event of the calling transaction (signed; GRANT EXECUTE to the roles that may).';

CREATE FUNCTION pgevents.skip() RETURNS pg_lsn
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT pgevents._emit_signed('skip', '')
$$;
REVOKE EXECUTE ON FUNCTION pgevents.skip() FROM PUBLIC;
COMMENT ON FUNCTION pgevents.skip() IS
    'Publishes none of the calling transaction''s row events (signed; GRANT EXECUTE to the roles that may).';

CREATE FUNCTION pgevents.outbox(routing_key text, payload jsonb, message_id text DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad_header text;
BEGIN
    IF routing_key IS NULL OR octet_length(routing_key) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'pgevents.outbox(): the routing key must have 1 to 255 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION 'pgevents.outbox(): the payload is NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF message_id IS NOT NULL AND octet_length(message_id) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'pgevents.outbox(): the message id must have 1 to 255 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF headers IS NOT NULL THEN
        IF jsonb_typeof(headers) <> 'object' THEN
            RAISE EXCEPTION 'pgevents.outbox(): headers are a JSON object of strings' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT h.key INTO bad_header FROM jsonb_each(headers) h
        WHERE jsonb_typeof(h.value) <> 'string' OR octet_length(h.key) NOT BETWEEN 1 AND 255 OR h.key IN ('outbox', 'lsn')
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgevents.outbox(): header % must be named with 1 to 255 bytes (not "outbox" or "lsn") and be a string', bad_header
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(*) FROM jsonb_object_keys(headers)) > 64 THEN
            RAISE EXCEPTION 'pgevents.outbox(): at most 64 headers' USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN pgevents._emit_signed('outbox',
        jsonb_build_object('routing_key', routing_key, 'message_id', message_id, 'headers', headers)::text
        || E'\n' || payload::text);
END $$;
REVOKE EXECUTE ON FUNCTION pgevents.outbox(text, jsonb, text, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION pgevents.outbox(text, jsonb, text, jsonb) IS
    'Publishes a message with the calling transaction, if it commits (signed; GRANT EXECUTE to the roles that may).';

-- A new key signs from now on; the others stop signing for transactions that commit after
-- `grace` (a transaction that signed before the rotation and commits within it still verifies).
-- The rotation tells the producer in the WAL, signed with the key it retires, so the producer
-- reads the keys again before any transaction that commits after it.
CREATE FUNCTION pgevents.rotate_message_key(grace interval DEFAULT '5 minutes') RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_kid integer;
BEGIN
    IF grace IS NULL OR grace < interval '0' THEN
        RAISE EXCEPTION 'pgevents.rotate_message_key(): the grace is a positive interval or 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT FROM pgevents.message_key WHERE retired_at IS NULL OR retired_at > clock_timestamp()) THEN
        PERFORM pgevents._emit_signed('keys', '');
    END IF;
    UPDATE pgevents.message_key SET retired_at = now() + grace
    WHERE retired_at IS NULL OR retired_at > now() + grace;
    INSERT INTO pgevents.message_key (key) VALUES (pgevents._new_message_key()) RETURNING kid INTO new_kid;
    RETURN new_kid;
END $$;
REVOKE EXECUTE ON FUNCTION pgevents.rotate_message_key(interval) FROM PUBLIC;

INSERT INTO pgevents.message_key (key) VALUES (pgevents._new_message_key());
"#;

/// Installs the signed-message functions when missing or older (an up-to-date install needs no
/// rights), then reads the keys. On servers before 13 there are none: every message is
/// refused, unless unsigned ones are accepted.
pub async fn prepare(
    db: &Database,
    config: &ProducerConfig,
    server_version: u32,
) -> Result<MessageKeys, ProducerError> {
    if server_version < MIN_SERVER_VERSION {
        tracing::warn!(server_version, "signed messages (pgevents.context, skip, outbox) need PostgreSQL 13 or later; messages are refused unless --allow-unsigned-messages is on");
        return Ok(MessageKeys::default());
    }
    let installed = schema::installed_version(db.client(), &SIGNALS).await?;
    if installed < SIGNALS.latest() {
        let mut client = pgevents_pg::connect_driven(&config.postgres, "schema").await?;
        match schema::install(&mut client, &SIGNALS).await {
            Ok(report) if !report.applied.is_empty() => {
                tracing::info!(applied = ?report.applied, "installed the signed-message functions (GRANT EXECUTE ON FUNCTION pgevents.context(jsonb), pgevents.skip(), pgevents.outbox(text, jsonb, text, jsonb) to the roles that may use them)");
            }
            Ok(_) => {}
            Err(SchemaError::Pg(e)) if e.kind().is_transient() => return Err(e.into()),
            Err(e) => {
                return Err(ProducerError::Setup(format!(
                    "the signed-message functions could not be installed in schema pgevents: {e}; grant the producer's role \
                     CREATE on the database, or install them once as the database owner (start the producer as that role)"
                )))
            }
        }
    }
    read_keys(db).await
}

/// The signing keys, retired ones included (they verify what was signed before).
pub async fn read_keys(db: &Database) -> Result<MessageKeys, ProducerError> {
    let rows = db
        .client()
        .query("SELECT kid, key, (extract(epoch FROM retired_at) * 1000000)::bigint FROM pgevents.message_key", &[])
        .await
        .map_err(|e| pg_error("read the message keys (pgevents.message_key)", e))?;
    if rows.is_empty() {
        tracing::warn!("no message key can be read: run the producer as the owner of pgevents.message_key (or a member of that role); until then signed messages are refused");
    }
    let mut keys = Vec::with_capacity(rows.len());
    for row in rows {
        let read = |e| pg_error("read a message key", e);
        let kid: i32 = row.try_get(0).map_err(read)?;
        let secret: Vec<u8> = row.try_get(1).map_err(read)?;
        let retired_at_micros: Option<i64> = row.try_get(2).map_err(read)?;
        keys.push((kid, MessageKey { secret, retired_at_micros }));
    }
    Ok(MessageKeys::new(keys))
}

/// Reads the keys again when a message names one the producer does not know (a key created
/// since), at most once per `interval`, so messages with made-up key ids cost one query a
/// second at most.
#[derive(Debug)]
pub struct KeyRefresh {
    interval: Duration,
    last: Option<Instant>,
}

impl KeyRefresh {
    pub fn new(interval: Duration) -> KeyRefresh {
        KeyRefresh { interval, last: None }
    }

    /// Whether to read the keys now (and remember that they were).
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.interval) {
            return false;
        }
        self.last = Some(now);
        true
    }
}
