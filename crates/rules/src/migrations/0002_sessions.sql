-- pgevents rules, version 2: sessions and subscriptions for `pgevents serve --sessions`
-- (GET /sessions/{id}/events). A session is an inbox that outlives connections; several
-- connections (tabs, devices) can read it at once. Its subscriptions are rows, made with the
-- functions below at four granularities:
--
--   subscribe_table(session, table)            row_insert, row_delete, field_update
--   subscribe_row(session, table, pk)          field_update, row_delete
--   subscribe_column(session, table, column)   field_update, row_delete, row_insert
--   subscribe_field(session, table, pk, column) field_update, row_delete
--
-- Access: row-level security. Any role may create sessions; a role sees, subscribes, and drops
-- only the sessions it owns (owner = current_user). The functions run with the caller's rights
-- (SECURITY INVOKER), so the policies apply to them too. The schema's owner (the role that ran
-- `pgevents rules install`, which `pgevents serve` should use) and superusers see every session.

CREATE TABLE pgevents.session (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner      name NOT NULL DEFAULT current_user,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set by pgevents serve while a connection reads the session; sessions not seen for
    -- --session-ttl are removed with their subscriptions.
    last_seen  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgevents.subscription (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id   uuid NOT NULL REFERENCES pgevents.session (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('table', 'row', 'column', 'field')),
    table_schema text NOT NULL,
    table_name   text NOT NULL,
    -- row and field: the primary key's values in key order, as text (as events carry them).
    pk           text[],
    column_name  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscription_pk CHECK ((kind IN ('row', 'field')) = (pk IS NOT NULL)),
    CONSTRAINT subscription_column CHECK ((kind IN ('column', 'field')) = (column_name IS NOT NULL))
);
CREATE INDEX subscription_session ON pgevents.subscription (session_id);

ALTER TABLE pgevents.session ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgevents.subscription ENABLE ROW LEVEL SECURITY;
CREATE POLICY session_owner ON pgevents.session
    USING (owner = current_user) WITH CHECK (owner = current_user);
CREATE POLICY subscription_owner ON pgevents.subscription
    USING (EXISTS (SELECT 1 FROM pgevents.session s WHERE s.id = session_id AND s.owner = current_user))
    WITH CHECK (EXISTS (SELECT 1 FROM pgevents.session s WHERE s.id = session_id AND s.owner = current_user));
GRANT USAGE ON SCHEMA pgevents TO PUBLIC;
GRANT SELECT, INSERT, DELETE ON pgevents.session, pgevents.subscription TO PUBLIC;

-- pgevents serve listens and applies subscription changes at once.
CREATE FUNCTION pgevents.notify_subscriptions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgevents_subscriptions',
                      CASE WHEN TG_OP = 'DELETE' THEN OLD.session_id::text ELSE NEW.session_id::text END);
    RETURN NULL;
END $$;
CREATE TRIGGER subscription_changed AFTER INSERT OR DELETE ON pgevents.subscription
    FOR EACH ROW EXECUTE FUNCTION pgevents.notify_subscriptions_changed();

CREATE FUNCTION pgevents.notify_session_dropped() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgevents_subscriptions', OLD.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER session_dropped AFTER DELETE ON pgevents.session
    FOR EACH ROW EXECUTE FUNCTION pgevents.notify_session_dropped();

-- A new session of the current role.
CREATE FUNCTION pgevents.session_create() RETURNS uuid LANGUAGE sql AS $$
    INSERT INTO pgevents.session DEFAULT VALUES RETURNING id
$$;

-- Drops a session of the current role, with its subscriptions.
CREATE FUNCTION pgevents.session_drop(session uuid) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgevents.session s WHERE s.id = session_drop.session;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session %', session
            USING ERRCODE = 'no_data_found', HINT = 'a role can drop only the sessions it created';
    END IF;
END $$;

-- The checks and the insert behind the subscribe_* functions.
CREATE FUNCTION pgevents.subscribe(session uuid, kind text, tbl regclass, pk jsonb, col text)
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    schema_name text;
    relation_name text;
    key_columns text[];
    key_values text[];
    new_id uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgevents.session s WHERE s.id = subscribe.session) THEN
        RAISE EXCEPTION 'no session %', session
            USING ERRCODE = 'no_data_found', HINT = 'create one with pgevents.session_create(); a role can use only the sessions it created';
    END IF;
    SELECT n.nspname, c.relname INTO schema_name, relation_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF col IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
    ) THEN
        RAISE EXCEPTION 'column % does not exist in table %', quote_ident(col), tbl
            USING ERRCODE = 'undefined_column';
    END IF;
    -- The gateway reads every table; a role may subscribe only to tables it may read itself
    -- (whole rows: row_insert and row_delete carry them).
    IF NOT has_table_privilege(tbl, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied to subscribe to table %: the role % cannot read it', tbl, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF pk IS NOT NULL THEN
        SELECT array_agg(a.attname::text ORDER BY k.ord) INTO key_columns
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = tbl AND i.indisprimary;
        IF key_columns IS NULL THEN
            RAISE EXCEPTION 'table % has no primary key, so its rows cannot be subscribed to', tbl
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(pk) = 'object' THEN
            IF (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(pk) AS k)
               IS DISTINCT FROM (SELECT array_agg(k ORDER BY k) FROM unnest(key_columns) AS k) THEN
                RAISE EXCEPTION 'the primary key of table % is (%), not (%)', tbl,
                    array_to_string(key_columns, ', '),
                    (SELECT string_agg(k, ', ') FROM jsonb_object_keys(pk) AS k)
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            SELECT array_agg(pk ->> k ORDER BY ord) INTO key_values FROM unnest(key_columns) WITH ORDINALITY AS u(k, ord);
        ELSIF cardinality(key_columns) = 1 THEN
            key_values := ARRAY[pk #>> '{}'];
        ELSE
            RAISE EXCEPTION 'the primary key of table % has % columns (%): give them as an object, e.g. %',
                tbl, cardinality(key_columns), array_to_string(key_columns, ', '),
                (SELECT jsonb_object_agg(k, '...') FROM unnest(key_columns) AS k)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF key_values IS NULL OR array_position(key_values, NULL) IS NOT NULL THEN
            RAISE EXCEPTION 'a primary key value of table % is null', tbl USING ERRCODE = 'null_value_not_allowed';
        END IF;
    END IF;
    INSERT INTO pgevents.subscription (session_id, kind, table_schema, table_name, pk, column_name)
    VALUES (subscribe.session, subscribe.kind, schema_name, relation_name, key_values, col)
    RETURNING subscription.id INTO new_id;
    RETURN new_id;
END $$;

CREATE FUNCTION pgevents.subscribe_table(session uuid, tbl regclass) RETURNS uuid LANGUAGE sql AS $$
    SELECT pgevents.subscribe(session, 'table', tbl, NULL, NULL)
$$;
CREATE FUNCTION pgevents.subscribe_row(session uuid, tbl regclass, pk jsonb) RETURNS uuid LANGUAGE sql AS $$
    SELECT pgevents.subscribe(session, 'row', tbl, pk, NULL)
$$;
CREATE FUNCTION pgevents.subscribe_column(session uuid, tbl regclass, col text) RETURNS uuid LANGUAGE sql AS $$
    SELECT pgevents.subscribe(session, 'column', tbl, NULL, col)
$$;
CREATE FUNCTION pgevents.subscribe_field(session uuid, tbl regclass, pk jsonb, col text) RETURNS uuid LANGUAGE sql AS $$
    SELECT pgevents.subscribe(session, 'field', tbl, pk, col)
$$;

-- Removes one subscription of the current role's sessions.
CREATE FUNCTION pgevents.unsubscribe(subscription uuid) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgevents.subscription s WHERE s.id = unsubscribe.subscription;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no subscription %', subscription USING ERRCODE = 'no_data_found';
    END IF;
END $$;
