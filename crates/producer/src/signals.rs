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
    -- From a trigger, the context would be put into the transactions of whoever writes the
    -- table: only the transaction's own code attaches context.
    IF pg_trigger_depth() > 0 THEN
        RAISE EXCEPTION 'pgevents.context() may not be called from a trigger' USING ERRCODE = 'insufficient_privilege';
    END IF;
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
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- From a trigger, it would hide the changes of whoever writes the table.
    IF pg_trigger_depth() > 0 THEN
        RAISE EXCEPTION 'pgevents.skip() may not be called from a trigger' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN pgevents._emit_signed('skip', '');
END $$;
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
        -- Names pgevents writes, or RabbitMQ acts on (CC, BCC, x-...), are not the application's.
        SELECT h.key INTO bad_header FROM jsonb_each(headers) h
        WHERE jsonb_typeof(h.value) <> 'string' OR octet_length(h.key) NOT BETWEEN 1 AND 255
           OR lower(h.key) IN ('action', 'table', 'lsn', 'omitted', 'outbox', 'cc', 'bcc') OR lower(h.key) LIKE 'x-%'
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pgevents.outbox(): header % must be a string named with 1 to 255 bytes, not action, table, lsn, omitted, outbox, CC, BCC or x-...', quote_literal(bad_header)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT count(*) FROM jsonb_object_keys(headers)) > 64 THEN
            RAISE EXCEPTION 'pgevents.outbox(): at most 64 headers' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (SELECT sum(octet_length(h.key) + octet_length(h.value #>> '{}')) FROM jsonb_each(headers) h) > 16384 THEN
            RAISE EXCEPTION 'pgevents.outbox(): the headers hold more than 16384 bytes' USING ERRCODE = 'invalid_parameter_value';
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
-- The rotation tells the producer in the WAL, so that it reads the keys again before any
-- transaction that commits after it.
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
    -- One rotation at a time (kids in order).
    LOCK TABLE pgevents.message_key IN SHARE ROW EXCLUSIVE MODE;
    UPDATE pgevents.message_key SET retired_at = clock_timestamp() + grace
    WHERE retired_at IS NULL OR retired_at > clock_timestamp() + grace;
    INSERT INTO pgevents.message_key (key) VALUES (pgevents._new_message_key()) RETURNING kid INTO new_kid;
    -- Signed with the new key: the producer reads the keys again (a key newer than it knows),
    -- in WAL order, before any transaction that commits after the rotation.
    PERFORM pgevents._emit_signed('keys', '');
    RETURN new_kid;
END $$;
REVOKE EXECUTE ON FUNCTION pgevents.rotate_message_key(interval) FROM PUBLIC;

INSERT INTO pgevents.message_key (key) VALUES (pgevents._new_message_key());
"#;

/// Installs the signed-message functions when missing or older (an up-to-date install needs no
/// rights), checks that whoever owns them is trusted, then reads the keys. Whatever fails here
/// leaves the producer streaming with no key: every signed message is then refused (and
/// unsigned ones too, unless accepted), with the reason in the log.
pub async fn prepare(
    db: &Database,
    config: &ProducerConfig,
    server_version: u32,
) -> Result<MessageKeys, ProducerError> {
    match keys_of_trusted_install(db, config, server_version).await {
        Ok(keys) => Ok(keys),
        Err(ProducerError::Postgres(e)) if e.kind().is_transient() => Err(ProducerError::Postgres(e)),
        Err(e) => {
            tracing::warn!(error = %e, "signed messages (pgevents.context, skip, outbox) are refused until this is fixed");
            Ok(MessageKeys::default())
        }
    }
}

async fn keys_of_trusted_install(
    db: &Database,
    config: &ProducerConfig,
    server_version: u32,
) -> Result<MessageKeys, ProducerError> {
    if server_version < MIN_SERVER_VERSION {
        return Err(ProducerError::Setup("signed messages need PostgreSQL 13 or later".into()));
    }
    // A schema someone else owns could hold their keys and their functions: trust it only if
    // the producer's role could have made it (it is, or is a member of, the owner; or a
    // superuser owns it).
    untrusted_owners(db).await?.map_or(Ok(()), |why| Err(ProducerError::Setup(why)))?;
    match schema::install_if_older(db.client(), &config.postgres, &SIGNALS).await {
        Ok(Some(report)) if !report.applied.is_empty() => {
            tracing::info!(applied = ?report.applied, "installed the signed-message functions (GRANT EXECUTE ON FUNCTION pgevents.context(jsonb), pgevents.skip(), pgevents.outbox(text, jsonb, text, jsonb) to the roles that may use them)");
        }
        Ok(_) => {}
        Err(SchemaError::Pg(e)) if e.kind().is_transient() => return Err(e.into()),
        Err(e) => {
            return Err(ProducerError::Setup(format!(
            "the signed-message functions could not be installed in schema pgevents: {e}; grant the producer's role \
                 CREATE on the database (or run it once as the database owner)"
        )))
        }
    }
    untrusted_owners(db).await?.map_or(Ok(()), |why| Err(ProducerError::Setup(why)))?;
    read_keys(db).await
}

/// What in schema `pgevents` that signing relies on is owned by a role the producer does not
/// trust (neither its own, one it is a member of, nor a superuser), if anything.
async fn untrusted_owners(db: &Database) -> Result<Option<String>, ProducerError> {
    let rows = db
        .client()
        .query(
            "WITH owned (what, owner) AS (
                 SELECT 'schema pgevents', n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pgevents'
                 UNION ALL
                 SELECT 'table pgevents.' || c.relname, c.relowner FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'pgevents' AND c.relname IN ('message_key', 'schema_migration')
                 UNION ALL
                 SELECT 'function pgevents.' || p.proname, p.proowner FROM pg_catalog.pg_proc p
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = 'pgevents' AND p.proname IN ('context', 'skip', 'outbox', '_emit_signed', 'hmac_sha256', 'rotate_message_key', '_new_message_key'))
             SELECT o.what, r.rolname FROM owned o JOIN pg_catalog.pg_roles r ON r.oid = o.owner
             CROSS JOIN (SELECT oid, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) me
             -- (A superuser counts as a member of every role: it trusts only itself and superusers.)
             WHERE NOT r.rolsuper AND o.owner <> me.oid
               AND (me.rolsuper OR NOT pg_catalog.pg_has_role(current_user, o.owner, 'MEMBER'))
             ORDER BY 1 LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| pg_error("check who owns schema pgevents", e))?;
    Ok(rows.first().map(|row| {
        let (what, owner): (String, String) = (row.get(0), row.get(1));
        format!(
            "{what} is owned by role {owner:?}, which the producer's role is not a member of: that role could replace \
             the signing keys or functions; make the producer's role (or a superuser) their owner, or grant {owner:?} to it"
        )
    }))
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

/// When to read the keys again for a message that names one the producer does not know: at
/// once for a key newer than any it knows (a rotation), once per transaction; otherwise at most
/// once per `interval`. Messages with made-up key ids thus cost one query per transaction that
/// sends them, and never make a genuine new key wait.
#[derive(Debug)]
pub struct KeyRefresh {
    interval: Duration,
    last: Option<Instant>,
    last_xid: Option<u32>,
}

impl KeyRefresh {
    pub fn new(interval: Duration) -> KeyRefresh {
        KeyRefresh { interval, last: None, last_xid: None }
    }

    /// Whether to read the keys now for key `kid` in transaction `xid` (and remember it).
    pub fn due(&mut self, kid: i32, newest: Option<i32>, xid: Option<u32>) -> bool {
        let now = Instant::now();
        let newer = newest.is_none_or(|newest| kid > newest);
        let due = if newer {
            xid.is_none() || self.last_xid != xid
        } else {
            self.last.is_none_or(|last| now.duration_since(last) >= self.interval)
        };
        if due {
            self.last = Some(now);
            self.last_xid = xid;
        }
        due
    }
}

/// Logs at most one line per `interval` for what any role can cause at will (refused
/// messages), saying how many were left out since.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    last: Option<Instant>,
    left_out: u64,
}

impl LogLimit {
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit { interval, last: None, left_out: 0 }
    }

    /// `Some(lines left out since the last one)` when this one is to be logged.
    pub fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < self.interval) {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_key_is_read_once_per_transaction_others_once_a_second() {
        let mut refresh = KeyRefresh::new(Duration::from_secs(3600));
        assert!(refresh.due(5, Some(4), Some(10)));
        assert!(!refresh.due(5, Some(4), Some(10)), "once per transaction");
        assert!(refresh.due(6, Some(4), Some(11)), "a newer key in the next transaction: at once");
        assert!(!refresh.due(2, Some(4), Some(12)), "an older unknown key waits for the interval");
    }

    #[test]
    fn log_lines_are_limited() {
        let mut limit = LogLimit::new(Duration::from_secs(3600));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
        let mut limit = LogLimit { last: Some(Instant::now() - Duration::from_secs(7200)), ..limit };
        assert_eq!(limit.admit(), Some(2));
    }
}
