-- pgevents rules, version 4: rules run with their author's rights.
--
-- Rules are code: a filter, a work_item_query and an SQL action are statements, an HTTP action
-- decides where rows and secrets go. Each rule now has an owner, the role that wrote its text
-- (set by the database from current_user, never taken from the row), and the workers run that
-- text in a session authenticated as the owner, so it can do nothing its author could not do
-- in psql. Rules written before this version have no owner and do not run until their author
-- takes them: UPDATE pgevents.work_item SET owner = current_user WHERE name = '...'.
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

-- The secrets that `templates` name ({{secret.NAME}}) and that are not granted to `role_name`.
CREATE FUNCTION pgevents.ungranted_secrets(role_name name, templates text)
RETURNS text[] LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(array_agg(DISTINCT m[1] ORDER BY m[1]), '{}')
    FROM regexp_matches(coalesce(templates, ''), '\{\{\s*secret\.([^}]*?)\s*\}\}', 'g') AS m
    WHERE NOT EXISTS (
        SELECT 1 FROM pgevents.secret_grant g
        WHERE g.secret = m[1]
          AND (g.grantee = 'PUBLIC' OR pgevents.has_rights_of(role_name, g.grantee)))
$$;

-- The owner is the role that wrote the rule's text. Changes that are not text (enabled, timeouts,
-- and the renames foreign keys cascade, which run as the tables' owner) keep it; a rule without an
-- owner is taken by setting owner to oneself.
CREATE FUNCTION pgevents.work_item_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    action_owner name;
    verdict record;
BEGIN
    IF TG_OP = 'INSERT'
       OR ROW(NEW.name, NEW.trigger_actions, NEW.filter, NEW.work_item_query, NEW.mode, NEW.transaction_label)
          IS DISTINCT FROM ROW(OLD.name, OLD.trigger_actions, OLD.filter, OLD.work_item_query, OLD.mode, OLD.transaction_label)
       OR (OLD.owner IS NULL AND NEW.owner = current_user) THEN
        NEW.owner := current_user;
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
CREATE TRIGGER work_item_owner BEFORE INSERT OR UPDATE ON pgevents.work_item
    FOR EACH ROW EXECUTE FUNCTION pgevents.work_item_owner();

CREATE FUNCTION pgevents.action_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text[];
BEGIN
    IF TG_OP = 'INSERT'
       OR ROW(NEW.kind, NEW.sql, NEW.http_method, NEW.url, NEW.headers, NEW.body_template, NEW.static_parameters)
          IS DISTINCT FROM ROW(OLD.kind, OLD.sql, OLD.http_method, OLD.url, OLD.headers, OLD.body_template, OLD.static_parameters)
       OR (OLD.owner IS NULL AND NEW.owner = current_user) THEN
        NEW.owner := current_user;
    ELSE
        NEW.owner := OLD.owner;
    END IF;
    IF NEW.owner IS NOT NULL AND NEW.kind = 'http' THEN
        missing := pgevents.ungranted_secrets(NEW.owner, concat_ws(' ', NEW.url, NEW.headers::text, NEW.body_template::text));
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
-- row-level security may apply to it on that table.
CREATE FUNCTION pgevents.event_access(role_name name, event_table text, columns text[])
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    schema_name text := split_part(event_table, '.', 1);
    relation_name text := substr(event_table, length(split_part(event_table, '.', 1)) + 2);
    verdict record;
    unreadable text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = schema_name AND c.relname = relation_name) THEN
        -- A schema name with a dot in it: look for the one table that the name splits into.
        SELECT min(n.nspname), min(c.relname) INTO schema_name, relation_name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname || '.' || c.relname = event_table AND c.relkind IN ('r', 'p')
        HAVING count(*) = 1;
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
-- schema's owner and superusers, who bypass these policies, change any. Everyone who may read
-- the tables reads every rule (actions are referred to by name).
ALTER TABLE pgevents.work_item ENABLE ROW LEVEL SECURITY;
ALTER TABLE pgevents.action ENABLE ROW LEVEL SECURITY;
CREATE POLICY work_item_read ON pgevents.work_item FOR SELECT USING (true);
CREATE POLICY work_item_write ON pgevents.work_item FOR INSERT WITH CHECK (owner = current_user);
CREATE POLICY work_item_change ON pgevents.work_item FOR UPDATE
    USING (owner IS NULL OR pgevents.has_rights_of(current_user, owner))
    WITH CHECK (owner IS NULL OR pgevents.has_rights_of(current_user, owner));
CREATE POLICY work_item_remove ON pgevents.work_item FOR DELETE
    USING (owner IS NULL OR pgevents.has_rights_of(current_user, owner));
CREATE POLICY action_read ON pgevents.action FOR SELECT USING (true);
CREATE POLICY action_write ON pgevents.action FOR INSERT WITH CHECK (owner = current_user);
CREATE POLICY action_change ON pgevents.action FOR UPDATE
    USING (owner IS NULL OR pgevents.has_rights_of(current_user, owner))
    WITH CHECK (owner IS NULL OR pgevents.has_rights_of(current_user, owner));
CREATE POLICY action_remove ON pgevents.action FOR DELETE
    USING (owner IS NULL OR pgevents.has_rights_of(current_user, owner));

-- An SQL action commits with its success row, in the session of the action's owner, which may
-- not write pgevents.action_run itself: this records the success, for that owner's actions only
-- (a success counts for its action only, so no owner can mark another's jobs done).
DROP INDEX pgevents.action_run_one_success;
CREATE UNIQUE INDEX action_run_one_success ON pgevents.action_run (idempotency_key, action)
    WHERE status = 'succeeded';
CREATE FUNCTION pgevents.record_action_success(
    key text, work_item text, action text, message_id text, event_table text, event_action text,
    parameters jsonb, attempt integer, started_at timestamptz, duration_ms double precision, result text,
    worker text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgevents.action a WHERE a.name = record_action_success.action AND a.owner = session_user) THEN
        RAISE EXCEPTION 'the session''s role % does not own action %', session_user, quote_literal(action)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO pgevents.action_run
        (idempotency_key, work_item, action, event_message_id, event_table, event_action, parameters,
         status, attempt, started_at, duration_ms, error, response_code, result, worker)
    VALUES (key, work_item, action, message_id, event_table, event_action, parameters,
            'succeeded', attempt, started_at, duration_ms, NULL, NULL, result, worker);
END $$;
GRANT EXECUTE ON FUNCTION pgevents.record_action_success(text, text, text, text, text, text, jsonb, integer, timestamptz, double precision, text, text) TO PUBLIC;
