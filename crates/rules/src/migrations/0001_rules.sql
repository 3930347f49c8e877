-- pgevents rules, version 1: subscribed tables, actions, work items, action runs, settings.
-- Every statement runs in one transaction with the version row that records it.

CREATE SCHEMA IF NOT EXISTS pgevents;

-- Settings the workers read, e.g. base_url (the {base_url} of HTTP action URLs).
CREATE TABLE pgevents.setting (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- Tables whose events the workers look at.
CREATE TABLE pgevents.event_table (
    table_schema text NOT NULL DEFAULT 'public',
    table_name   text NOT NULL,
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_schema, table_name)
);

-- What to do: run a statement (kind sql) or call an HTTP API (kind http).
CREATE TABLE pgevents.action (
    name              text PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('sql', 'http')),
    -- kind sql: one statement; $1 is the parameters (jsonb), $2 the event (jsonb).
    sql               text,
    -- kind http: the URL may start with {base_url} and hold {{name}} placeholders.
    http_method       text NOT NULL DEFAULT 'POST'
                      CHECK (http_method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')),
    url               text,
    headers           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    -- The request body; {{name}} strings are replaced by parameters. NULL: the parameters.
    body_template     jsonb,
    static_parameters jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(static_parameters) = 'object'),
    timeout_ms        integer NOT NULL DEFAULT 10000 CHECK (timeout_ms > 0),
    max_attempts      integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    backoff_ms        integer NOT NULL DEFAULT 1000 CHECK (backoff_ms >= 0),
    backoff_max_ms    integer NOT NULL DEFAULT 60000,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT action_sql_or_http CHECK (
        (kind = 'sql' AND sql IS NOT NULL AND url IS NULL)
        OR (kind = 'http' AND url IS NOT NULL AND sql IS NULL)),
    CONSTRAINT action_url_is_http CHECK (
        url IS NULL OR url ~ '^(https?://[^/\s?#]+|\{base_url\})[^\s]*$'),
    CONSTRAINT action_backoff_max CHECK (backoff_max_ms >= backoff_ms)
);

-- When an event becomes work: table, triggering actions, filter, parameters query, action.
CREATE TABLE pgevents.work_item (
    name              text PRIMARY KEY,
    table_schema      text NOT NULL DEFAULT 'public',
    table_name        text NOT NULL,
    -- Event actions that trigger it: I, U, D, T (and R for snapshot reads).
    trigger_actions   text[] NOT NULL DEFAULT '{I}'
                      CHECK (cardinality(trigger_actions) > 0
                             AND trigger_actions <@ ARRAY['I', 'U', 'D', 'T', 'R']),
    -- A boolean expression over the event $1 (jsonb); NULL matches every event.
    filter            text,
    -- A query over the event $1 returning rows with a jsonb column "parameters";
    -- NULL: one row, the event's new row (old row for deletes).
    work_item_query   text,
    action            text NOT NULL REFERENCES pgevents.action (name) ON UPDATE CASCADE,
    mode              text NOT NULL DEFAULT 'sync' CHECK (mode IN ('sync', 'async')),
    -- Passed to the query and the action with the event, as transaction_label.
    transaction_label text,
    enabled           boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (table_schema, table_name)
        REFERENCES pgevents.event_table (table_schema, table_name) ON UPDATE CASCADE ON DELETE CASCADE
);

-- One row per attempt to run an action. Kept: this is the record of what was done.
CREATE TABLE pgevents.action_run (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- event message id / work item / parameters row: the same for every attempt of one job.
    idempotency_key  text NOT NULL,
    work_item        text NOT NULL,
    action           text NOT NULL,
    event_message_id text NOT NULL,
    event_table      text NOT NULL,
    event_action     text NOT NULL,
    parameters       jsonb,
    status           text NOT NULL CHECK (status IN ('succeeded', 'failed', 'dead')),
    attempt          integer NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      double precision NOT NULL,
    error            text,
    response_code    integer,
    -- The HTTP response body or the SQL statement's returned rows (truncated).
    result           text,
    worker           text
);
CREATE INDEX action_run_by_key ON pgevents.action_run (idempotency_key);
CREATE INDEX action_run_by_work_item ON pgevents.action_run (work_item, started_at);
-- A job succeeds at most once, whichever worker ran it.
CREATE UNIQUE INDEX action_run_one_success ON pgevents.action_run (idempotency_key)
    WHERE status = 'succeeded';

-- Rejects a statement PostgreSQL cannot prepare with nparams jsonb parameters.
CREATE FUNCTION pgevents.check_statement(what text, statement text, nparams integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    prepared text := format('pgevents_check_%s_%s', pg_backend_pid(), floor(random() * 1e9)::bigint);
    types text := array_to_string(array_fill('jsonb'::text, ARRAY[nparams]), ',');
BEGIN
    BEGIN
        EXECUTE format('PREPARE %I(%s) AS %s', prepared, types, statement);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'invalid %: %', what, SQLERRM
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The statement was: %s', statement),
                  HINT = 'Test it with PREPARE t(jsonb) AS ... in psql; qualify table names with their schema.';
    END;
    EXECUTE format('DEALLOCATE %I', prepared);
END
$$;

CREATE FUNCTION pgevents.check_work_item() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.filter IS NOT NULL THEN
        PERFORM pgevents.check_statement(
            format('filter of work item %L', NEW.name),
            format('SELECT (%s)::boolean', NEW.filter), 1);
    END IF;
    IF NEW.work_item_query IS NOT NULL THEN
        PERFORM pgevents.check_statement(
            format('work_item_query of work item %L (it must return a jsonb column "parameters")', NEW.name),
            format('SELECT q.parameters::jsonb FROM (%s) AS q', NEW.work_item_query), 1);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER work_item_check BEFORE INSERT OR UPDATE ON pgevents.work_item
    FOR EACH ROW EXECUTE FUNCTION pgevents.check_work_item();

CREATE FUNCTION pgevents.check_action() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'sql' THEN
        PERFORM pgevents.check_statement(format('sql of action %L', NEW.name), NEW.sql, 2);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER action_check BEFORE INSERT OR UPDATE ON pgevents.action
    FOR EACH ROW EXECUTE FUNCTION pgevents.check_action();

-- Workers LISTEN on pgevents_rules and reload the rules when they change.
CREATE FUNCTION pgevents.notify_rules_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgevents_rules', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER setting_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgevents.setting
    FOR EACH STATEMENT EXECUTE FUNCTION pgevents.notify_rules_changed();
CREATE TRIGGER event_table_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgevents.event_table
    FOR EACH STATEMENT EXECUTE FUNCTION pgevents.notify_rules_changed();
CREATE TRIGGER action_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgevents.action
    FOR EACH STATEMENT EXECUTE FUNCTION pgevents.notify_rules_changed();
CREATE TRIGGER work_item_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pgevents.work_item
    FOR EACH STATEMENT EXECUTE FUNCTION pgevents.notify_rules_changed();
