-- pgevents rules, version 5: doors an attacker's review of versions 3 and 4 found open.
--
-- 1. Every function of the schema resolves names in pg_catalog first and never in a schema any
--    role can write: a function overloading a built-in with a closer match (public.pg_notify(text,
--    name), public.array_to_string(text[], text)) ran with the rights of whoever fired a trigger.
-- 2. A role may read a table only with USAGE on its schema too: subscription_access now asks.
-- 3. Events name a table `schema.table`, so a dot inside a schema or table name is ambiguous
--    (schema "billing.v2", table invoices = schema billing, table "v2.invoices"): subscriptions and
--    work items on such names are refused, and an event name that splits into more than one table
--    is refused.
-- 4. Bounded work: at most max_subscriptions_per_session subscriptions (setting, default 1000)
--    per session, keys of at most 32 values and 8 KiB; the session limit no longer takes an
--    advisory lock anyone could hold.
-- 5. No table locks from PUBLIC: DELETE on the session tables is no longer granted (it allowed
--    LOCK TABLE ... ACCESS EXCLUSIVE); session_drop and unsubscribe do it for the sessions the
--    caller's login has the rights of.
-- 6. Rules without an owner are changed, taken and assigned by the schema's owner only (an author
--    could rewire one and wait for an administrator to take it).
-- 7. An action's URL may not take its scheme, host or port from a placeholder (a secret in a host
--    name leaves in a DNS query before any allow-list is consulted).

ALTER FUNCTION pgevents.notify_rules_changed() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.session_create() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe(uuid, text, regclass, jsonb, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_table(uuid, regclass) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_row(uuid, regclass, jsonb) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_column(uuid, regclass, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION pgevents.subscribe_field(uuid, regclass, jsonb, text) SET search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION pgevents.subscription_access(
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

-- Every way to split `event_table` at a dot that names a table: exactly one is accepted.
CREATE OR REPLACE FUNCTION pgevents.event_access(role_name name, event_table text, columns text[])
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    schema_name text;
    relation_name text;
    matches integer;
    verdict record;
    unreadable text[];
BEGIN
    SELECT count(*), min(n.nspname), min(c.relname) INTO matches, schema_name, relation_name
    FROM generate_series(1, length(event_table)) AS p(at)
    JOIN pg_namespace n ON n.nspname = left(event_table, p.at - 1)
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = substr(event_table, p.at + 1) AND c.relkind IN ('r', 'p')
    WHERE substr(event_table, p.at, 1) = '.';
    IF matches = 0 THEN
        RETURN format('there is no table %s', event_table);
    ELSIF matches > 1 THEN
        RETURN format('%s names more than one table (a dot inside a schema or table name): refused', event_table);
    END IF;
    SELECT * INTO verdict FROM pgevents.subscription_access(role_name, schema_name, relation_name, NULL);
    IF verdict.refused IS NOT NULL THEN
        RETURN verdict.refused;
    END IF;
    SELECT array_agg(c ORDER BY c) INTO unreadable FROM unnest(columns) AS c WHERE NOT c = ANY (verdict.readable);
    IF unreadable IS NOT NULL THEN
        RETURN format('role %I cannot read column(s) %s of table %s, which the event carries',
                      role_name, array_to_string(unreadable, ', '), event_table);
    END IF;
    RETURN NULL;
END $$;

-- (The schema owner's rights: it locks the session's row, so that concurrent inserts count one
-- after the other; the subscription's own row-level security policy still makes sure the writer
-- owns the session.)
CREATE OR REPLACE FUNCTION pgevents.check_subscription() RETURNS trigger
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

-- One row per role that made sessions: what serialises the count of its sessions.
CREATE TABLE pgevents.session_owner (owner name PRIMARY KEY);
REVOKE ALL ON pgevents.session_owner FROM PUBLIC;

CREATE OR REPLACE FUNCTION pgevents.prepare_session() RETURNS trigger
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

REVOKE ALL ON FUNCTION pgevents.check_subscription() FROM PUBLIC;
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

-- Ownerless rules (written before version 4) are the schema owner's to change or assign.
DROP POLICY work_item_change ON pgevents.work_item;
DROP POLICY work_item_remove ON pgevents.work_item;
DROP POLICY action_change ON pgevents.action;
DROP POLICY action_remove ON pgevents.action;
CREATE POLICY work_item_change ON pgevents.work_item FOR UPDATE
    USING (pgevents.has_rights_of(current_user, owner)) WITH CHECK (pgevents.has_rights_of(current_user, owner));
CREATE POLICY work_item_remove ON pgevents.work_item FOR DELETE USING (pgevents.has_rights_of(current_user, owner));
CREATE POLICY action_change ON pgevents.action FOR UPDATE
    USING (pgevents.has_rights_of(current_user, owner)) WITH CHECK (pgevents.has_rights_of(current_user, owner));
CREATE POLICY action_remove ON pgevents.action FOR DELETE USING (pgevents.has_rights_of(current_user, owner));

-- The owner is the role that wrote the rule's text; an ownerless rule gets the owner its
-- (privileged) writer names.
CREATE OR REPLACE FUNCTION pgevents.work_item_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    action_owner name;
    verdict record;
BEGIN
    IF TG_OP = 'INSERT'
       OR ROW(NEW.name, NEW.trigger_actions, NEW.filter, NEW.work_item_query, NEW.mode, NEW.transaction_label)
          IS DISTINCT FROM ROW(OLD.name, OLD.trigger_actions, OLD.filter, OLD.work_item_query, OLD.mode, OLD.transaction_label) THEN
        NEW.owner := current_user;
    ELSIF OLD.owner IS NULL AND NEW.owner IS NOT NULL THEN
        -- Only the schema's owner (or a role bypassing row-level security) reaches an ownerless row.
        IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = NEW.owner) THEN
            RAISE EXCEPTION 'role % does not exist', NEW.owner USING ERRCODE = 'undefined_object';
        END IF;
    ELSE
        NEW.owner := OLD.owner;
    END IF;
    IF NEW.owner IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO verdict FROM pgevents.subscription_access(NEW.owner, NEW.table_schema, NEW.table_name, NULL);
    IF verdict.refused IS NOT NULL THEN
        RAISE EXCEPTION 'work item % cannot be owned by %: %', quote_literal(NEW.name), NEW.owner, verdict.refused
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'a work item runs with its owner''s rights (the role that wrote it): that role must be able to SELECT the table (each event is checked against the columns it carries)';
    END IF;
    SELECT a.owner INTO action_owner FROM pgevents.action a WHERE a.name = NEW.action;
    -- (An action that does not exist is the foreign key's to report.)
    IF FOUND AND NOT pgevents.has_rights_of(NEW.owner, action_owner) THEN
        RAISE EXCEPTION 'work item % (owner %) cannot use action % of owner %', quote_literal(NEW.name), NEW.owner,
            quote_literal(NEW.action), coalesce(action_owner::text, 'none')
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'a work item may run only the actions of its own owner, or of a role whose privileges its owner has';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION pgevents.action_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text[];
BEGIN
    IF TG_OP = 'INSERT'
       OR ROW(NEW.kind, NEW.sql, NEW.http_method, NEW.url, NEW.headers, NEW.body_template, NEW.static_parameters)
          IS DISTINCT FROM ROW(OLD.kind, OLD.sql, OLD.http_method, OLD.url, OLD.headers, OLD.body_template, OLD.static_parameters) THEN
        NEW.owner := current_user;
    ELSIF OLD.owner IS NULL AND NEW.owner IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = NEW.owner) THEN
            RAISE EXCEPTION 'role % does not exist', NEW.owner USING ERRCODE = 'undefined_object';
        END IF;
    ELSE
        NEW.owner := OLD.owner;
    END IF;
    IF NEW.owner IS NOT NULL AND NEW.kind = 'http' THEN
        missing := pgevents.ungranted_secrets(NEW.owner, concat_ws(' ', NEW.url, NEW.headers::text, NEW.body_template::text));
        IF missing IS NULL THEN
            RAISE EXCEPTION 'cannot check the secrets of action % for owner %: the writer''s login is not a member of that role', quote_literal(NEW.name), NEW.owner
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF cardinality(missing) > 0 THEN
            RAISE EXCEPTION 'action % uses secrets not granted to its owner %: %', quote_literal(NEW.name), NEW.owner,
                array_to_string(missing, ', ')
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('the schema''s owner grants them: INSERT INTO pgevents.secret_grant VALUES (%L, %L)', missing[1], NEW.owner);
        END IF;
    END IF;
    RETURN NEW;
END $$;

-- The secrets a role may not use, answered only about a role the caller's login is a member of
-- (it said which secrets were granted to whom, to anyone); NULL otherwise, which the trigger
-- takes for a refusal.
CREATE OR REPLACE FUNCTION pgevents.ungranted_secrets(role_name name, templates text)
RETURNS text[] LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = role_name) THEN NULL
        WHEN NOT pg_has_role(session_user, role_name, 'MEMBER') THEN NULL
        ELSE (
        SELECT coalesce(array_agg(DISTINCT m[1] ORDER BY m[1]), '{}')
        FROM regexp_matches(coalesce(templates, ''), '\{\{\s*secret\.([^}]*?)\s*\}\}', 'g') AS m
        WHERE NOT EXISTS (
            SELECT 1 FROM pgevents.secret_grant g
            WHERE g.secret = m[1] AND (g.grantee = 'PUBLIC' OR pgevents.has_rights_of(role_name, g.grantee))))
    END
$$;

-- No placeholder in the scheme, host or port, and after {base_url} only a path, a query or a
-- fragment (checked again when the request is made; rows written before are not re-checked
-- here, and are refused when they run).
ALTER TABLE pgevents.action ADD CONSTRAINT action_url_host_fixed
    CHECK (url IS NULL OR (url !~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*\{\{' AND url !~ '^\{base_url\}[^/?#]')) NOT VALID;

-- A success row: waits for a lock at most 5 s (an author may hold a table lock on the rule
-- tables), and keeps at most 8 KiB of result.
CREATE OR REPLACE FUNCTION pgevents.record_action_success(
    key text, work_item text, action text, message_id text, event_table text, event_action text,
    parameters jsonb, attempt integer, started_at timestamptz, duration_ms double precision, result text,
    worker text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '5s' AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgevents.action a WHERE a.name = record_action_success.action AND a.owner = session_user) THEN
        RAISE EXCEPTION 'the session''s role % does not own action %', session_user, quote_literal(action)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO pgevents.action_run
        (idempotency_key, work_item, action, event_message_id, event_table, event_action, parameters,
         status, attempt, started_at, duration_ms, error, response_code, result, worker)
    VALUES (key, work_item, action, message_id, event_table, event_action, parameters,
            'succeeded', attempt, started_at, duration_ms, NULL, NULL, left(result, 8192), worker);
END $$;
