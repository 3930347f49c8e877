-- pgevents rules, version 3: the database decides who may subscribe to what.
--
-- Version 2 checked a role's privileges in the subscribe_* functions only, so an INSERT into
-- pgevents.subscription (granted to PUBLIC) skipped them. Now a trigger checks every new
-- subscription, whoever writes it and however, against the privileges of the session's owner:
--
--   - the owner must be able to read the table's key columns, the subscribed column (column and
--     field subscriptions) and at least one column; pgevents serve sends it only the columns it
--     may read (column privileges, GRANT SELECT (id, item));
--   - tables with row-level security that applies to the owner are refused: each change would
--     have to be checked against the policies as that role, row by row, and a policy can depend
--     on anything (other tables, settings, the time); refusing is the answer that cannot leak.
--   - the owner needs USAGE on the table's schema too, and a dot inside a schema or table name
--     is refused (events name a table schema.table, so such a name is ambiguous);
--   - a session has at most max_subscriptions_per_session subscriptions (setting, default 1000),
--     and a row key at most 32 values and 8 KiB.
--
-- pgevents serve asks the same question (pgevents.subscription_access) each time it reads the
-- sessions, so a privilege revoked later stops the stream at its next reload.
--
-- Sessions: created_at and last_seen are set by the database (a session created with last_seen
-- 'infinity' never expired), each role has at most max_sessions_per_role sessions (setting,
-- default 100, counted under a row lock only pgevents takes), and notifications carry a
-- session's notify_key, not its id: any role can LISTEN, and without JWT the id is what lets a
-- client read the session. PUBLIC may not DELETE from the session tables (that right comes with
-- LOCK TABLE): session_drop and unsubscribe delete what the caller's login owns.

-- Every function of the schema resolves names in pg_catalog first and never in a schema any
-- role can write (a function overloading a built-in with a closer match, public.pg_notify(text,
-- name), would run with the rights of whoever fired a trigger); those of versions 1 and 2 too.
ALTER FUNCTION pgevents.notify_rules_changed() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.session_create() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_table(uuid, regclass) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_row(uuid, regclass, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_column(uuid, regclass, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_field(uuid, regclass, jsonb, text) SET search_path = pg_catalog, pg_temp;

-- Whether `member` has the privileges of `target` (false when either role does not exist, where
-- pg_has_role would raise an error).
CREATE FUNCTION pgevents.has_rights_of(member name, target name)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN member IS NULL OR target IS NULL THEN false
        WHEN NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = member)
          OR NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = target) THEN false
        ELSE pg_has_role(member, target, 'USAGE')
    END
$$;

CREATE FUNCTION pgevents.subscription_access(
    role_name name, schema_name text, relation_name text, column_name text,
    OUT readable text[], OUT every_column boolean, OUT refused text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid;
    nsp oid;
    rel_owner oid;
    rls boolean;
    forced boolean;
    privileged boolean;
    key_columns text[];
    column_count integer;
BEGIN
    IF role_name IS NULL OR schema_name IS NULL OR relation_name IS NULL THEN
        refused := 'incomplete subscription';
        RETURN;
    END IF;
    IF strpos(schema_name, '.') > 0 OR strpos(relation_name, '.') > 0 THEN
        refused := format('%I.%I: events name a table schema.table, so a dot in either name is ambiguous; rename it', schema_name, relation_name);
        RETURN;
    END IF;
    SELECT r.rolsuper OR r.rolbypassrls INTO privileged FROM pg_roles r WHERE r.rolname = role_name;
    IF NOT FOUND THEN
        refused := format('the role %I does not exist (any more)', role_name);
        RETURN;
    END IF;
    SELECT c.oid, n.oid, c.relowner, c.relrowsecurity, c.relforcerowsecurity INTO rel, nsp, rel_owner, rls, forced
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = schema_name AND c.relname = relation_name AND c.relkind IN ('r', 'p');
    IF rel IS NULL THEN
        refused := format('there is no table %I.%I', schema_name, relation_name);
        RETURN;
    END IF;
    IF NOT has_schema_privilege(role_name, nsp, 'USAGE') THEN
        refused := format('role %I has no USAGE on schema %I, so it cannot read table %I.%I', role_name, schema_name, schema_name, relation_name);
        RETURN;
    END IF;
    IF rls AND NOT privileged AND (forced OR NOT pg_has_role(role_name, rel_owner, 'USAGE')) THEN
        refused := format('table %I.%I has row-level security, which applies to role %I: its changes are not streamed to that role (see "Security" in the README)',
                          schema_name, relation_name, role_name);
        RETURN;
    END IF;
    SELECT array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE has_column_privilege(role_name, rel, a.attnum, 'SELECT')),
           count(*)
    INTO readable, column_count
    FROM pg_attribute a WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped;
    IF readable IS NULL THEN
        refused := format('role %I cannot read table %I.%I', role_name, schema_name, relation_name);
        RETURN;
    END IF;
    SELECT array_agg(a.attname::text) INTO key_columns
    FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = rel AND i.indisprimary;
    IF key_columns IS NOT NULL AND NOT key_columns <@ readable THEN
        refused := format('role %I cannot read the key columns (%s) of table %I.%I, which every event carries',
                          role_name, array_to_string(key_columns, ', '), schema_name, relation_name);
        readable := NULL;
        RETURN;
    END IF;
    IF column_name IS NOT NULL AND NOT column_name = ANY (readable) THEN
        refused := format('role %I cannot read column %I of table %I.%I', role_name, column_name, schema_name, relation_name);
        readable := NULL;
        RETURN;
    END IF;
    every_column := cardinality(readable) = column_count;
END $$;

-- A numeric setting of the schema, for functions whose callers may not read pgevents.setting.
CREATE FUNCTION pgevents.setting_value(setting_name text, fallback integer)
RETURNS integer LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    text_value text;
BEGIN
    -- Only the limits every role is subject to: the other settings are the schema owner's.
    IF setting_name NOT IN ('max_sessions_per_role', 'max_subscriptions_per_session') THEN
        RETURN fallback;
    END IF;
    SELECT s.value INTO text_value FROM pgevents.setting s WHERE s.name = setting_name;
    RETURN coalesce(text_value::integer, fallback);
EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
    RETURN fallback;
END $$;

-- Every new subscription, however it is written, within the privileges of its session's owner
-- (with the schema owner's rights: it locks the session's row, so that concurrent inserts count
-- one after the other; the subscription's own row-level security policy still makes sure the
-- writer owns the session).
CREATE FUNCTION pgevents.check_subscription() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner_name name;
    verdict record;
    most integer;
    held bigint;
BEGIN
    SELECT s.owner INTO owner_name FROM pgevents.session s WHERE s.id = NEW.session_id;
    -- Only the owner's sessions are the writer's to know of (and to lock).
    IF owner_name IS NULL OR NOT pg_has_role(session_user, owner_name, 'MEMBER') THEN
        RAISE EXCEPTION 'no session %', NEW.session_id
            USING ERRCODE = 'no_data_found', HINT = 'a role can subscribe only the sessions it created';
    END IF;
    PERFORM 1 FROM pgevents.session s WHERE s.id = NEW.session_id FOR UPDATE;
    IF cardinality(NEW.pk) > 32 OR octet_length(array_to_string(NEW.pk, '')) > 8192 THEN
        RAISE EXCEPTION 'a subscription key holds at most 32 values and 8 KiB' USING ERRCODE = 'program_limit_exceeded';
    END IF;
    SELECT * INTO verdict FROM pgevents.subscription_access(owner_name, NEW.table_schema, NEW.table_name, NEW.column_name);
    IF verdict.refused IS NOT NULL THEN
        RAISE EXCEPTION 'permission denied to subscribe to %.%: %', NEW.table_schema, NEW.table_name, verdict.refused
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT pgevents.setting_value('max_subscriptions_per_session', 1000) INTO most;
    SELECT count(*) INTO held FROM pgevents.subscription s WHERE s.session_id = NEW.session_id;
    IF held >= most THEN
        RAISE EXCEPTION 'session % already has % subscriptions, the most allowed', NEW.session_id, held
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'subscribe to the table or a column instead of many rows, or raise max_subscriptions_per_session in pgevents.setting';
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION pgevents.check_subscription() FROM PUBLIC;
CREATE TRIGGER subscription_check BEFORE INSERT OR UPDATE ON pgevents.subscription
    FOR EACH ROW EXECUTE FUNCTION pgevents.check_subscription();

ALTER TABLE pgevents.session ADD COLUMN notify_key uuid NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX session_notify_key ON pgevents.session (notify_key);

-- One row per role that made sessions: what serialises the count of its sessions.
CREATE TABLE pgevents.session_owner (owner name PRIMARY KEY);
REVOKE ALL ON pgevents.session_owner FROM PUBLIC;

-- Set by the database, not by whoever inserts: the times, the notification key, and the limit
-- on sessions per role (the schema owner's rights: the writer sees only its own sessions and
-- may not read the settings).
CREATE FUNCTION pgevents.prepare_session() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    most integer;
    held bigint;
BEGIN
    NEW.created_at := now();
    NEW.last_seen := now();
    NEW.notify_key := gen_random_uuid();
    most := pgevents.setting_value('max_sessions_per_role', 100);
    -- Inserts of one role count one after the other: they lock the role's row (a table only this
    -- function writes, so no other role can hold that lock).
    INSERT INTO pgevents.session_owner (owner) VALUES (NEW.owner) ON CONFLICT (owner) DO NOTHING;
    PERFORM 1 FROM pgevents.session_owner o WHERE o.owner = NEW.owner FOR UPDATE;
    SELECT count(*) INTO held FROM pgevents.session s WHERE s.owner = NEW.owner;
    IF held >= most THEN
        RAISE EXCEPTION 'role % already has % sessions, the most allowed', NEW.owner, held
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'drop sessions no longer used with pgevents.session_drop(id), or raise the limit: INSERT INTO pgevents.setting VALUES (''max_sessions_per_role'', ''500'') ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value';
    END IF;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION pgevents.prepare_session() FROM PUBLIC;
CREATE TRIGGER session_prepare BEFORE INSERT ON pgevents.session
    FOR EACH ROW EXECUTE FUNCTION pgevents.prepare_session();

-- Notifications name a session by its notify_key.
CREATE OR REPLACE FUNCTION pgevents.notify_subscriptions_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key uuid;
BEGIN
    SELECT s.notify_key INTO key FROM pgevents.session s
    WHERE s.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.session_id ELSE NEW.session_id END;
    -- Its session is being dropped: session_dropped notifies.
    IF key IS NOT NULL THEN
        PERFORM pg_notify('pgevents_subscriptions', key::text);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pgevents.notify_session_dropped() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('pgevents_subscriptions', OLD.notify_key::text);
    RETURN NULL;
END $$;

-- The subscribe functions leave the privilege check to the trigger.
CREATE OR REPLACE FUNCTION pgevents.subscribe(session uuid, kind text, tbl regclass, pk jsonb, col text)
RETURNS uuid LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
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

-- No table locks from PUBLIC: DELETE on the session tables is not granted (it allowed LOCK TABLE
-- ... ACCESS EXCLUSIVE); session_drop and unsubscribe delete for the sessions the caller's login
-- has the rights of.
REVOKE DELETE ON pgevents.session, pgevents.subscription FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgevents.session_drop(session uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM pgevents.session s WHERE s.id = session_drop.session AND pgevents.has_rights_of(session_user, s.owner);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no session %', session
            USING ERRCODE = 'no_data_found', HINT = 'a role can drop only the sessions it created';
    END IF;
END $$;

CREATE OR REPLACE FUNCTION pgevents.unsubscribe(subscription uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM pgevents.subscription sub
    USING pgevents.session s
    WHERE sub.id = unsubscribe.subscription AND s.id = sub.session_id AND pgevents.has_rights_of(session_user, s.owner);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no subscription %', subscription USING ERRCODE = 'no_data_found';
    END IF;
END $$;
