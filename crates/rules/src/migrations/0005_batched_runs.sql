-- pgevents rules, version 5: rule text of several events in one call.
--
-- A worker with a backlog runs the rules of many events together instead of one statement (and
-- one round trip) at a time: the filters and queries of one owner's work items in one call, in
-- a read-only transaction that is rolled back; the SQL actions of one owner and their success
-- rows in one call, in one transaction. The functions that run rule text are SECURITY INVOKER
-- and have no SET clause: the text runs in the caller's session with the caller's rights and
-- settings, exactly as when the worker sends it as a statement of its own. The worker calls them
-- only in a session of the role that owns the text, with text it checked there as one statement.
-- Anyone may call them, with any text: that is no more than running the text themselves.
--
-- None catches an error: any failure aborts the call (and the transaction), and the worker then
-- runs each event alone, the way it always has (with its own errors, limits and retries). So
-- each refuses what the worker would refuse of one event: a statement that ran past its time
-- (SQLSTATE PGE02), parameters past the size limit (PGE03), a job that ran before (PGE01).
-- Nothing here is built from the text: it is EXECUTEd as given, its values bound with USING.

-- For each event i: whether filters[i] matched (a NULL filter matches), and, when it did and
-- queries[i] is not NULL, the first column of each row of queries[i], stopping after
-- max_rows + 1 rows (the worker then takes that event alone, to report the limit). Each
-- statement must end within timeout_ms, and the parameters of all events together stay within
-- max_bytes.
CREATE FUNCTION pgevents.evaluate_work_items(
    filters text[], queries text[], documents jsonb[], max_rows integer, max_bytes bigint, timeout_ms integer)
RETURNS TABLE (matched boolean, parameters jsonb[])
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    found_row jsonb;
    started timestamptz;
    total_bytes bigint := 0;
    time_limit interval := pg_catalog.make_interval(secs => timeout_ms / 1000.0);
BEGIN
    FOR i IN 1 .. coalesce(pg_catalog.array_length(documents, 1), 0) LOOP
        matched := true;
        parameters := NULL;
        IF filters[i] IS NOT NULL THEN
            started := pg_catalog.clock_timestamp();
            EXECUTE filters[i] INTO matched USING documents[i];
            IF pg_catalog.clock_timestamp() - started > time_limit THEN
                RAISE EXCEPTION 'a filter ran past its time' USING ERRCODE = 'PGE02';
            END IF;
            matched := coalesce(matched, false);
        END IF;
        IF matched AND queries[i] IS NOT NULL THEN
            parameters := '{}';
            started := pg_catalog.clock_timestamp();
            FOR found_row IN EXECUTE queries[i] USING documents[i] LOOP
                parameters := pg_catalog.array_append(parameters, found_row);
                total_bytes := total_bytes + coalesce(pg_catalog.pg_column_size(found_row), 0);
                IF total_bytes > max_bytes THEN
                    RAISE EXCEPTION 'parameters past the size limit' USING ERRCODE = 'PGE03';
                END IF;
                EXIT WHEN pg_catalog.cardinality(parameters) > max_rows;
            END LOOP;
            IF pg_catalog.clock_timestamp() - started > time_limit THEN
                RAISE EXCEPTION 'a query ran past its time' USING ERRCODE = 'PGE02';
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION pgevents.evaluate_work_items(text[], text[], jsonb[], integer, bigint, integer) TO PUBLIC;

-- Fails unless the session's role owns every one of the actions.
CREATE FUNCTION pgevents.require_own_actions(actions text[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    foreign_action text;
BEGIN
    SELECT a INTO foreign_action FROM unnest(actions) AS a
    WHERE NOT EXISTS (SELECT 1 FROM pgevents.action x WHERE x.name = a AND x.owner = session_user)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the session''s role % does not own action %', session_user, quote_literal(foreign_action)
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;
REVOKE EXECUTE ON FUNCTION pgevents.require_own_actions(text[]) FROM PUBLIC;

-- Fails with SQLSTATE PGE01 if any job (keys[i] of actions[i]) has a row in
-- pgevents.action_run already (an earlier attempt, a death, a success): such a job is not run
-- together with others but alone, with what its rows say. Only for actions the session's role
-- owns (it says nothing of anybody else's jobs). One job at a time, an index lookup each,
-- whatever the planner knows of the table's size.
CREATE FUNCTION pgevents.require_fresh_jobs(keys text[], actions text[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pgevents.require_own_actions(actions);
    FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
        IF EXISTS (SELECT 1 FROM pgevents.action_run r WHERE r.idempotency_key = keys[i] AND r.action = actions[i]) THEN
            RAISE EXCEPTION 'a job has run before' USING ERRCODE = 'PGE01';
        END IF;
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION pgevents.require_fresh_jobs(text[], text[]) TO PUBLIC;

-- Records the first, successful attempt of several SQL jobs at once, like
-- pgevents.record_action_success: only for actions the session's role owns, and never twice for
-- a job (the unique index on successes). Every row is attempt 1: it is for jobs that never ran
-- (see pgevents.require_fresh_jobs).
CREATE FUNCTION pgevents.record_action_successes(
    keys text[], work_items text[], actions text[], message_ids text[], event_tables text[],
    event_actions text[], parameters jsonb[], started_at timestamptz[], duration_ms double precision[],
    results text[], worker text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '5s' AS $$
BEGIN
    PERFORM pgevents.require_own_actions(actions);
    INSERT INTO pgevents.action_run
        (idempotency_key, work_item, action, event_message_id, event_table, event_action, parameters,
         status, attempt, started_at, duration_ms, error, response_code, result, worker)
    SELECT r.job_key, r.work_item, r.action, r.message_id, r.event_table, r.event_action, r.parameters,
           'succeeded', 1, r.started_at, r.duration_ms, NULL, NULL, left(r.result, 8192), worker
    FROM unnest(keys, work_items, actions, message_ids, event_tables, event_actions, parameters, started_at,
                duration_ms, results)
         AS r(job_key, work_item, action, message_id, event_table, event_action, parameters, started_at,
              duration_ms, result);
END $$;
GRANT EXECUTE ON FUNCTION pgevents.record_action_successes(text[], text[], text[], text[], text[], text[], jsonb[], timestamptz[], double precision[], text[], text) TO PUBLIC;

-- Unless a job has run before (pgevents.require_fresh_jobs), runs statements[i] with
-- $1 = parameters[i] and $2 = events[i], one after the other, each within timeouts_ms[i], then
-- records their successes (pgevents.record_action_successes, with recorded[i] as the
-- parameters: without secrets), in the caller's transaction; gives the rows each statement
-- affected.
CREATE FUNCTION pgevents.run_sql_actions(
    statements text[], timeouts_ms integer[], parameters jsonb[], events jsonb[], keys text[], work_items text[],
    actions text[], message_ids text[], event_tables text[], event_actions text[], recorded jsonb[], worker text)
RETURNS bigint[]
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
    affected bigint;
    started timestamptz;
    took interval;
    done bigint[] := '{}';
    started_at timestamptz[] := '{}';
    duration_ms double precision[] := '{}';
    results text[] := '{}';
BEGIN
    PERFORM pgevents.require_fresh_jobs(keys, actions);
    FOR i IN 1 .. coalesce(pg_catalog.array_length(statements, 1), 0) LOOP
        started := pg_catalog.clock_timestamp();
        EXECUTE statements[i] USING parameters[i], events[i];
        GET DIAGNOSTICS affected = ROW_COUNT;
        took := pg_catalog.clock_timestamp() - started;
        IF took > pg_catalog.make_interval(secs => timeouts_ms[i] / 1000.0) THEN
            RAISE EXCEPTION 'an SQL action ran past its timeout_ms' USING ERRCODE = 'PGE02';
        END IF;
        done := pg_catalog.array_append(done, affected);
        started_at := pg_catalog.array_append(started_at, started);
        duration_ms := pg_catalog.array_append(duration_ms, pg_catalog.date_part('epoch', took) * 1000);
        results := pg_catalog.array_append(results, pg_catalog.concat(affected, ' rows'));
    END LOOP;
    PERFORM pgevents.record_action_successes(keys, work_items, actions, message_ids, event_tables, event_actions,
                                             recorded, started_at, duration_ms, results, worker);
    RETURN done;
END $$;
GRANT EXECUTE ON FUNCTION pgevents.run_sql_actions(text[], integer[], jsonb[], jsonb[], text[], text[], text[], text[], text[], text[], jsonb[], text) TO PUBLIC;
