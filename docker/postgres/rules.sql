-- The demo's rules, written after `pgevents rules install`: every new user gets a row in
-- welcome_log, written by `pgevents worker` (a sync SQL action).
INSERT INTO pgevents.event_table (table_schema, table_name) VALUES ('public', 'users')
    ON CONFLICT DO NOTHING;
INSERT INTO pgevents.action (name, kind, sql)
VALUES ('log_welcome', 'sql',
        'INSERT INTO public.welcome_log (user_id, email, label) VALUES (($1->>''id'')::bigint, $1->>''email'', $2->>''transaction_label'')')
    ON CONFLICT DO NOTHING;
INSERT INTO pgevents.work_item (name, table_name, trigger_actions, action, mode, transaction_label)
VALUES ('welcome', 'users', '{I}', 'log_welcome', 'sync', 'signup')
    ON CONFLICT DO NOTHING;
