-- pgevents rules, version 4: rules run with their author's rights.
--
-- Rules are code: a filter, a work_item_query and an SQL action are statements, an HTTP action
-- decides where rows and secrets go. Each rule now has an owner, the role that wrote its text
-- (set by the database from current_user, never taken from the row), and the workers run that
-- text in a session authenticated as the owner, so it can do nothing its author could not do
-- in psql. Rules written before this version have no owner and do not run until the schema's
-- owner, having read them, gives each to the role whose rights it should run with
-- (UPDATE pgevents.work_item SET owner = 'alice' WHERE name = '...'); nobody else may change an
-- ownerless rule (an author could rewire one and wait for an administrator to take it).
--
-- The owner of a work item must be able to read its table (every column: the event carries
-- them all; no row-level security that applies to it), and to use its action (the action's
-- owner, or a role whose privileges it has). An HTTP action may use a secret only if the secret
-- is granted to its owner (pgevents.secret_grant, managed by the schema's owner).
--
-- Rule text is no longer checked by PREPAREing it inside the database (the check built the
-- statement with format() and EXECUTEd it, so a filter could smuggle whole statements that ran
-- with the rights of whoever wrote the row next). Workers check it from Rust, parsing it as one
-- statement in its owner's session without running it, and `pgevents rules check` reports it.

DROP TRIGGER work_item_check ON pgevents.work_item;
DROP TRIGGER action_check ON pgevents.action;
DROP FUNCTION pgevents.check_work_item();
DROP FUNCTION pgevents.check_action();
DROP FUNCTION pgevents.check_statement(text, text, integer);

ALTER TABLE pgevents.work_item ADD COLUMN owner name;
ALTER TABLE pgevents.action ADD COLUMN owner name;

-- Which rule owners may use which secret ({{secret.NAME}} in HTTP actions); grantee PUBLIC:
-- every owner (pgevents check warns about it). Only the schema's owner manages it.
CREATE TABLE pgevents.secret_grant (
    secret  text NOT NULL,
    grantee name NOT NULL,
    PRIMARY KEY (secret, grantee)
);
CREATE TRIGGER secret_grant_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgevents.secret_grant
    FOR EACH STATEMENT EXECUTE FUNCTION pgevents.notify_rules_changed();

-- The secrets that `templates` name ({{secret.NAME}}) and that are not granted to `role_name`,
-- answered only about a role the caller's login is a member of (it would say which secrets are
-- granted to whom, to anyone); NULL otherwise, which the trigger takes for a refusal.
CREATE FUNCTION pgevents.ungranted_secrets(role_name name, templates text)
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

-- The owner is the role that wrote the rule's text. Changes that are not text (enabled, timeouts,
-- and the renames foreign keys cascade, which run as the tables' owner) keep it; an ownerless
-- rule gets the owner its writer names (only the schema's owner, or a role bypassing row-level
-- security, reaches an ownerless row).
CREATE FUNCTION pgevents.rule_owner(text_written boolean, old_owner name, new_owner name)
RETURNS name LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF text_written THEN
        RETURN current_user;
    ELSIF old_owner IS NULL AND new_owner IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = new_owner) THEN
            RAISE EXCEPTION 'role % does not exist', new_owner USING ERRCODE = 'undefined_object';
        END IF;
        RETURN new_owner;
    END IF;
    RETURN old_owner;
END $$;

CREATE FUNCTION pgevents.work_item_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    action_owner name;
    verdict record;
BEGIN
    NEW.owner := pgevents.rule_owner(
        TG_OP = 'INSERT'
        OR ROW(NEW.name, NEW.trigger_actions, NEW.filter, NEW.work_item_query, NEW.mode, NEW.transaction_label)
           IS DISTINCT FROM ROW(OLD.name, OLD.trigger_actions, OLD.filter, OLD.work_item_query, OLD.mode, OLD.transaction_label),
        OLD.owner, NEW.owner);
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
CREATE TRIGGER work_item_owner BEFORE INSERT OR UPDATE ON pgevents.work_item
    FOR EACH ROW EXECUTE FUNCTION pgevents.work_item_owner();

CREATE FUNCTION pgevents.action_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text[];
BEGIN
    NEW.owner := pgevents.rule_owner(
        TG_OP = 'INSERT'
        OR ROW(NEW.kind, NEW.sql, NEW.http_method, NEW.url, NEW.headers, NEW.body_template, NEW.static_parameters)
           IS DISTINCT FROM ROW(OLD.kind, OLD.sql, OLD.http_method, OLD.url, OLD.headers, OLD.body_template, OLD.static_parameters),
        OLD.owner, NEW.owner);
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
CREATE TRIGGER action_owner BEFORE INSERT OR UPDATE ON pgevents.action
    FOR EACH ROW EXECUTE FUNCTION pgevents.action_owner();

-- Why `role_name` may not receive an event of `event_table` (schema.table, as events name it)
-- carrying `columns`; NULL when it may: it must be able to read each of those columns, and no
-- row-level security may apply to it on that table. Of every way to split `event_table` at a
-- dot that names a table, exactly one is accepted (a dot inside a name is ambiguous).
CREATE FUNCTION pgevents.event_access(role_name name, event_table text, columns text[])
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

-- Authors change only their own rules (or those of roles whose privileges they have); the
-- schema's owner and superusers, who bypass these policies, change any, and they alone change
-- or assign rules without an owner. Everyone who may read the tables reads every rule (actions
-- are referred to by name).
ALTER TABLE pgevents.work_item ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgevents.action ENABLE ROW LEVEL SECURITY;
CREATE POLICY work_item_read ON pgevents.work_item FOR SELECT USING (true);
CREATE POLICY work_item_write ON pgevents.work_item FOR INSERT WITH CHECK (owner = current_user);
CREATE POLICY work_item_change ON pgevents.work_item FOR UPDATE
    USING (pgevents.has_rights_of(current_user, owner)) WITH CHECK (pgevents.has_rights_of(current_user, owner));
CREATE POLICY work_item_remove ON pgevents.work_item FOR DELETE USING (pgevents.has_rights_of(current_user, owner));
CREATE POLICY action_read ON pgevents.action FOR SELECT USING (true);
CREATE POLICY action_write ON pgevents.action FOR INSERT WITH CHECK (owner = current_user);
CREATE POLICY action_change ON pgevents.action FOR UPDATE
    USING (pgevents.has_rights_of(current_user, owner)) WITH CHECK (pgevents.has_rights_of(current_user, owner));
CREATE POLICY action_remove ON pgevents.action FOR DELETE USING (pgevents.has_rights_of(current_user, owner));

-- An SQL action commits with its success row, in the session of the action's owner, which may
-- not write pgevents.action_run itself: this records the success, for that owner's actions only
-- (a success counts for its action only, so no owner can mark another's jobs done). It waits for
-- a lock at most 5 s (an author may hold a table lock on the rule tables) and keeps at most 8 KiB
-- of result.
DROP INDEX pgevents.action_run_one_success;
CREATE UNIQUE INDEX action_run_one_success ON pgevents.action_run (idempotency_key, action)
    WHERE status = 'succeeded';
CREATE FUNCTION pgevents.record_action_success(
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
GRANT EXECUTE ON FUNCTION pgevents.record_action_success(text, text, text, text, text, text, jsonb, integer, timestamptz, double precision, text, text) TO PUBLIC;

-- No placeholder in the scheme, host or port, and after {base_url} only a path, a query or a
-- fragment (checked again when the request is made; rows written before are not re-checked
-- here, and are refused when they run).
ALTER TABLE pgevents.action ADD CONSTRAINT action_url_host_fixed
    CHECK (url IS NULL OR (url !~ '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*\{\{' AND url !~ '^\{base_url\}[^/?#]')) NOT VALID;
