//! The work-item and action stages end to end: rules in PostgreSQL, `pgevents worker` and
//! `pgevents action-runner` as processes, a real producer, RabbitMQ, and a real HTTP server
//! in the test that records every call.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{run_to_end, World, WAIT};
use pgevents_testkit::{
    amqp_url, consistent_hash_exchange, delete_exchange, delete_queue, http_get, metric_value, publish_raw,
    unique_name, wait_for, EventQueue, HttpRecorder, PgEventsProcess, RabbitNode, RecordedRequest, Reply, TestCa,
};
use serde_json::{json, Value};

/// A world with rule tables, subscribed tables, a producer and names of its own.
struct Stage {
    world: World,
    producer: PgEventsProcess,
    work_exchange: String,
    work_queue: String,
    dead_exchange: String,
    dead_queue: String,
    worker_queue: String,
}

const TABLES: &str = "
    CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, full_name text);
    CREATE TABLE orders (id serial PRIMARY KEY, items int NOT NULL);
    CREATE TABLE numbers (id serial PRIMARY KEY, n int NOT NULL);
    CREATE TABLE audit (id serial PRIMARY KEY, note text, amount numeric, label text, uid text);";

impl Stage {
    /// Tables, `pgevents rules install`, the rules in `rules_sql`, and a producer.
    async fn new(rules_sql: &str) -> Stage {
        let world = World::new().await;
        world.pg.execute(TABLES).await;
        let install = run_to_end(&["rules", "install"], &world.pg.env()).await;
        assert!(install.contains("now at version 5"), "{install}");
        world.pg.execute(rules_sql).await;
        Self::with_world(world, &[]).await
    }

    /// A producer on the world's tables (with `extra` environment), and names of its own.
    async fn with_world(world: World, extra: &[(&str, &str)]) -> Stage {
        let mut env = vec![("PGTABLES", "users,orders,numbers")];
        env.extend_from_slice(extra);
        Stage {
            producer: world.producer(&env).await,
            world,
            work_exchange: unique_name("work"),
            work_queue: unique_name("actions"),
            dead_exchange: unique_name("dead"),
            dead_queue: unique_name("deadq"),
            worker_queue: unique_name("worker"),
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.world.producer_env(&[]);
        for (name, value) in [
            ("PGEVENTS_WORK_EXCHANGE", &self.work_exchange),
            ("PGEVENTS_WORK_QUEUE", &self.work_queue),
            ("PGEVENTS_DEAD_LETTER_EXCHANGE", &self.dead_exchange),
            ("PGEVENTS_DEAD_LETTER_QUEUE", &self.dead_queue),
            ("RABBITMQ_QUEUE_NAME", &self.worker_queue),
        ] {
            env.push((name.into(), value.clone()));
        }
        env.push(("PGEVENTS_CONCURRENCY".into(), "1".into()));
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    async fn start(&self, command: &str, extra: &[(&str, &str)]) -> PgEventsProcess {
        let mut process = PgEventsProcess::spawn(&[command], &self.env(extra));
        process.wait_for_log("consuming", WAIT).await;
        process
    }

    async fn worker(&self) -> PgEventsProcess {
        self.start("worker", &[]).await
    }

    /// `action_run` rows of a work item as JSON, in insertion order.
    async fn runs(&self, work_item: &str) -> Vec<Value> {
        let sql = format!(
            "SELECT coalesce(json_agg(r ORDER BY r.id), '[]')::text FROM pgevents.action_run r WHERE work_item = '{work_item}'"
        );
        serde_json::from_str(&self.world.pg.query_text(&sql).await.unwrap_or_default()).unwrap_or_default()
    }

    /// Waits until the work item has `n` rows, the last with a final status.
    async fn wait_runs(&self, work_item: &str, n: usize) -> Vec<Value> {
        wait_for(&format!("{n} action_run rows of {work_item}"), WAIT, || async {
            let runs = self.runs(work_item).await;
            (runs.len() >= n).then_some(runs)
        })
        .await
    }

    async fn cleanup(self, processes: Vec<PgEventsProcess>) {
        for process in processes.into_iter().chain([self.producer]) {
            common::stop(process).await;
        }
        for queue in [&self.work_queue, &self.dead_queue, &self.worker_queue] {
            delete_queue(queue).await;
        }
        for exchange in [&self.work_exchange, &self.dead_exchange, &self.world.exchange] {
            delete_exchange(exchange).await;
        }
    }
}

fn statuses(runs: &[Value]) -> Vec<&str> {
    runs.iter().map(|r| r["status"].as_str().unwrap_or("?")).collect()
}

fn paths(requests: &[RecordedRequest], path: &str) -> Vec<RecordedRequest> {
    requests.iter().filter(|r| r.path == path).cloned().collect()
}

/// The README's example: a welcome mail webhook on user insert, with a filter, a query using
/// the transaction context and label, static parameters under the query's, and an SQL action
/// fed by a query of 3 rows. Rule changes apply without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_sql_actions_follow_the_rules() {
    let http = HttpRecorder::always(200).await;
    let rules = format!(
        r#"
        INSERT INTO pgevents.setting (name, value) VALUES ('base_url', '{base}');
        INSERT INTO pgevents.event_table (table_schema, table_name) VALUES ('public', 'users'), ('public', 'orders');
        INSERT INTO pgevents.action (name, kind, url, headers, body_template, static_parameters)
        VALUES ('welcome_mail', 'http', '{{base_url}}/mail/welcome', '{{"X-Api-Key": "s3cret"}}',
                '{{"to": "{{{{email}}}}", "subject": "Welcome {{{{name}}}}!", "template": "{{{{template}}}}", "uid": "{{{{uid}}}}"}}',
                '{{"template": "welcome-v1", "name": "friend"}}');
        INSERT INTO pgevents.action (name, kind, sql)
        VALUES ('audit', 'sql', 'INSERT INTO public.audit (note, amount, label) VALUES ($1->>''note'', ($1->>''amount'')::numeric, $2->>''transaction_label'')');
        INSERT INTO pgevents.work_item (name, table_name, trigger_actions, filter, work_item_query, action, transaction_label)
        VALUES ('welcome', 'users', '{{I}}', $$($1->'new'->>'email') LIKE '%@example.com'$$,
                $$SELECT jsonb_build_object('email', $1->'new'->>'email', 'name', $1->'new'->>'full_name',
                                            'uid', $1->'context'->>'uid', 'label', $1->>'transaction_label') AS parameters$$,
                'welcome_mail', 'signup'),
               ('order_lines', 'orders', '{{I}}', NULL,
                $$SELECT jsonb_build_object('note', format('order %s line %s', $1->'new'->>'id', n), 'amount', n * 1.5) AS parameters
                  FROM generate_series(1, ($1->'new'->>'items')::int) AS n$$,
                'audit', 'orders');
        "#,
        base = http.base_url()
    );
    let stage = Stage::new(&rules).await;
    let metrics_addr = pgevents_testkit::free_local_addr().to_string();
    let mut worker = stage.start("worker", &[("PGEVENTS_METRICS_ADDR", &metrics_addr)]).await;

    // The filter leaves bob out; ann's insert carries an application context.
    stage.world.pg.execute("INSERT INTO users (email, full_name) VALUES ('bob@other.org', 'Bob')").await;
    stage
        .world
        .pg
        .execute(
            "BEGIN;
             SELECT pgevents.context('{\"uid\": \"u-42\"}');
             INSERT INTO users (email, full_name) VALUES ('ann@example.com', 'Ann');
             COMMIT;",
        )
        .await;
    let runs = stage.wait_runs("welcome", 1).await;
    let requests = http.requests();
    assert_eq!(requests.len(), 1, "exactly one call, none for the filtered-out insert: {requests:?}");
    let call = &requests[0];
    assert_eq!((call.method.as_str(), call.path.as_str()), ("POST", "/mail/welcome"));
    assert_eq!(
        call.json(),
        json!({"to": "ann@example.com", "subject": "Welcome Ann!", "template": "welcome-v1", "uid": "u-42"}),
        "query parameters win over static ones"
    );
    assert_eq!(call.header("x-api-key"), Some("s3cret"));
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.header("x-pgevents-table"), Some("public.users"));
    assert_eq!(call.header("x-pgevents-action"), Some("I"));
    let message_id = call.header("x-pgevents-message-id").expect("message id header").to_owned();
    assert!(call.header("x-pgevents-lsn").is_some() && call.header("x-pgevents-commit-time").is_some());
    assert_eq!(call.header("idempotency-key"), Some(format!("{message_id}/welcome/0").as_str()));

    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(
        (run["status"].as_str(), run["attempt"].as_i64(), run["response_code"].as_i64()),
        (Some("succeeded"), Some(1), Some(200))
    );
    assert_eq!(run["idempotency_key"], format!("{message_id}/welcome/0"));
    assert_eq!(run["event_message_id"], message_id);
    assert_eq!((run["event_table"].as_str(), run["event_action"].as_str()), (Some("public.users"), Some("I")));
    assert_eq!(run["parameters"]["label"], "signup", "the work item's transaction_label reaches the query");
    assert_eq!(run["parameters"]["template"], "welcome-v1");
    assert_eq!(run["result"], "{\"status\":200}", "the response is kept");

    // A query of 3 rows: 3 runs of the SQL action, each writing its row.
    stage.world.pg.execute("INSERT INTO orders (items) VALUES (3)").await;
    let runs = stage.wait_runs("order_lines", 3).await;
    assert_eq!(statuses(&runs), ["succeeded"; 3]);
    let keys: Vec<&str> = runs.iter().map(|r| r["idempotency_key"].as_str().unwrap_or_default()).collect();
    assert!(keys[0].ends_with("/order_lines/0") && keys[2].ends_with("/order_lines/2"), "{keys:?}");
    let audit = stage
        .world
        .pg
        .query_text("SELECT string_agg(format('%s|%s|%s', note, amount, label), ';' ORDER BY id) FROM audit")
        .await;
    assert_eq!(audit.as_deref(), Some("order 1 line 1|1.5|orders;order 1 line 2|3.0|orders;order 1 line 3|4.5|orders"));

    // Change the filter while the worker runs: the next events follow the new rule.
    let reloads = worker.log_count("rules reloaded");
    stage
        .world
        .pg
        .execute("UPDATE pgevents.work_item SET filter = $$($1->'new'->>'email') LIKE '%@other.org'$$ WHERE name = 'welcome'")
        .await;
    worker.wait_for_logs("rules reloaded", reloads + 1, WAIT).await;
    stage
        .world
        .pg
        .execute(
            "BEGIN;
             SELECT pgevents.context('{\"uid\": \"u-7\"}');
             INSERT INTO users (email, full_name) VALUES ('zoe@example.com', 'Zoe'), ('carl@other.org', 'Carl');
             COMMIT;",
        )
        .await;
    let runs = stage.wait_runs("welcome", 2).await;
    let requests = http.requests();
    assert_eq!(requests.len(), 2, "{requests:?} {runs:?}");
    assert_eq!(requests[1].json()["to"], "carl@other.org");
    assert_eq!(statuses(&runs), ["succeeded", "succeeded"]);

    let (_, text) = http_get(metrics_addr.parse().unwrap(), "/metrics").await.expect("metrics");
    assert_eq!(
        metric_value(&text, "pgevents_action_runs_total{action=\"audit\",status=\"succeeded\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "pgevents_action_runs_total{action=\"welcome_mail\",status=\"succeeded\"}"),
        Some(2.0)
    );
    stage.cleanup(vec![worker]).await;
}

/// Retries with backoff, then success or the dead-letter queue; a 4xx is not retried; a
/// message that is not an event is dead-lettered, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered() {
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let calls = flaky_calls.clone();
    let http = HttpRecorder::start(move |_, request| match request.path.as_str() {
        "/flaky" if calls.fetch_add(1, Ordering::SeqCst) < 2 => Reply::status(503),
        "/flaky" => Reply::status(200),
        "/gone" => Reply::status(410),
        _ => Reply::status(500),
    })
    .await;
    let rules = format!(
        r#"
        INSERT INTO pgevents.event_table (table_name) VALUES ('users');
        INSERT INTO pgevents.action (name, kind, url, max_attempts, backoff_ms) VALUES
            ('flaky', 'http', '{base}/flaky', 5, 50),
            ('broken', 'http', '{base}/broken', 3, 50),
            ('gone', 'http', '{base}/gone', 5, 50);
        INSERT INTO pgevents.work_item (name, table_name, filter, action) VALUES
            ('flaky', 'users', $$$1->'new'->>'email' LIKE 'flaky%'$$, 'flaky'),
            ('broken', 'users', $$$1->'new'->>'email' LIKE 'broken%'$$, 'broken'),
            ('gone', 'users', $$$1->'new'->>'email' LIKE 'gone%'$$, 'gone');
        "#,
        base = http.base_url()
    );
    let stage = Stage::new(&rules).await;
    let worker = stage.worker().await;

    stage.world.pg.execute("INSERT INTO users (email) VALUES ('flaky@x')").await;
    let runs = stage.wait_runs("flaky", 3).await;
    assert_eq!(statuses(&runs), ["failed", "failed", "succeeded"]);
    let attempts: Vec<i64> = runs.iter().map(|r| r["attempt"].as_i64().unwrap_or(0)).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let codes: Vec<i64> = runs.iter().map(|r| r["response_code"].as_i64().unwrap_or(0)).collect();
    assert_eq!(codes, [503, 503, 200]);
    assert_eq!(runs[0]["error"], "HTTP status 503 Service Unavailable");
    let calls = paths(&http.requests(), "/flaky");
    assert_eq!(calls.len(), 3);
    let key = runs[0]["idempotency_key"].as_str().unwrap_or_default();
    assert!(calls.iter().all(|c| c.header("idempotency-key") == Some(key)), "one key for every attempt");

    stage.world.pg.execute("INSERT INTO users (email) VALUES ('broken@x')").await;
    let runs = stage.wait_runs("broken", 3).await;
    assert_eq!(statuses(&runs), ["failed", "failed", "dead"]);
    assert_eq!(paths(&http.requests(), "/broken").len(), 3);
    let mut dead = EventQueue::reattach(&amqp_url(), &stage.dead_queue).await;
    let letter = dead.next_raw(WAIT).await.expect("the dead job in the dead-letter queue");
    let job: Value = serde_json::from_slice(&letter.body).expect("a work message");
    assert_eq!((job["work_item"].as_str(), job["action"].as_str()), (Some("broken"), Some("broken")));
    assert_eq!(job["idempotency_key"], runs[2]["idempotency_key"]);
    assert_eq!(job["parameters"]["email"], "broken@x");
    assert_eq!(letter.header("error").as_deref(), Some("HTTP status 500 Internal Server Error"));

    // A 410 will not get better: one attempt, then dead.
    stage.world.pg.execute("INSERT INTO users (email) VALUES ('gone@x')").await;
    let runs = stage.wait_runs("gone", 1).await;
    assert_eq!(statuses(&runs), ["dead"]);
    assert_eq!(runs[0]["response_code"], 410);
    let letter = dead.next_raw(WAIT).await.expect("the 410 job in the dead-letter queue");
    assert_eq!(letter.header("work_item").as_deref(), Some("gone"));

    // Not an event: the worker rejects it to the dead-letter exchange and goes on.
    publish_raw(&stage.world.exchange, "public.users", "junk-1", b"not json").await;
    let letter = dead.next_raw(WAIT).await.expect("the malformed message in the dead-letter queue");
    assert_eq!(letter.body, b"not json");
    stage.world.pg.execute("INSERT INTO users (email) VALUES ('flaky2@x')").await;
    let runs = stage.wait_runs("flaky", 4).await;
    assert_eq!(runs[3]["status"], "succeeded");
    dead.close().await;
    stage.cleanup(vec![worker]).await;
}

/// Async work items go through the work exchange to an action runner; a worker killed during a
/// call re-runs the job with the same key and the action succeeds once; a redelivered event
/// runs nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_jobs_and_crashes_never_repeat_a_success() {
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let calls = slow_calls.clone();
    let http = HttpRecorder::start(move |_, request| match request.path.as_str() {
        // The first call hangs: the worker is killed while waiting for it.
        "/slow" if calls.fetch_add(1, Ordering::SeqCst) == 0 => {
            Reply { delay: Duration::from_secs(120), ..Reply::status(200) }
        }
        _ => Reply::status(200),
    })
    .await;
    let rules = format!(
        r#"
        INSERT INTO pgevents.event_table (table_name) VALUES ('users'), ('orders');
        INSERT INTO pgevents.action (name, kind, url, timeout_ms) VALUES
            ('notify', 'http', '{base}/notify', 5000),
            ('slow', 'http', '{base}/slow', 300000);
        INSERT INTO pgevents.work_item (name, table_name, action, mode) VALUES
            ('notify', 'users', 'notify', 'async'),
            ('slow', 'orders', 'slow', 'sync');
        "#,
        base = http.base_url()
    );
    let stage = Stage::new(&rules).await;
    let mut events = stage.world.queue(&["public.orders"]).await;
    let runner = stage.start("action-runner", &[]).await;
    let worker = stage.worker().await;

    stage.world.pg.execute("INSERT INTO users (email) VALUES ('a@x')").await;
    let runs = stage.wait_runs("notify", 1).await;
    assert_eq!(statuses(&runs), ["succeeded"]);
    assert!(runs[0]["worker"].as_str().unwrap_or_default().starts_with("action-runner@"), "{runs:?}");
    assert_eq!(paths(&http.requests(), "/notify").len(), 1);

    stage.world.pg.execute("INSERT INTO orders (items) VALUES (1)").await;
    http.wait_for(2, WAIT).await;
    worker.kill();
    let mut killed = worker;
    killed.wait(WAIT).await;
    let worker = stage.worker().await;
    let runs = stage.wait_runs("slow", 1).await;
    assert_eq!(statuses(&runs), ["succeeded"]);
    let slow = paths(&http.requests(), "/slow");
    assert_eq!(slow.len(), 2, "run again after the crash: {slow:?}");
    assert_eq!(slow[0].header("idempotency-key"), slow[1].header("idempotency-key"));
    assert_eq!(slow.iter().filter(|r| r.answered == Some(200)).count(), 1, "one successful call: {slow:?}");

    // The same event again (as after a lost acknowledgement): nothing runs.
    let original = events.next(WAIT).await.expect("the order event");
    publish_raw(&stage.world.exchange, "public.orders", &original.message_id(), &original.body).await;
    // The worker (concurrency 1) handles its queue in order: once this later event is done, so
    // is the duplicate.
    stage.world.pg.execute("INSERT INTO users (email) VALUES ('b@x')").await;
    stage.wait_runs("notify", 2).await;
    assert_eq!(paths(&http.requests(), "/slow").len(), 2, "a redelivered event repeats no call");
    assert_eq!(stage.runs("slow").await.len(), 1);
    events.close().await;
    stage.cleanup(vec![worker, runner]).await;
}

/// Bad rules are refused when written, or end in a `dead` row with the reason, and never stop
/// the worker; the worker refuses to start without the rule tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_or_reported() {
    let world = World::new().await;
    world.pg.execute(TABLES).await;
    let mut early = PgEventsProcess::spawn(&["worker"], &world.producer_env(&[]));
    assert_eq!(early.wait(WAIT).await, Some(1));
    assert!(early.stderr().contains("run `pgevents rules install` first"), "{}", early.stderr());
    let first = run_to_end(&["rules", "install"], &world.pg.env()).await;
    assert!(first.contains("applied migration 1"), "{first}");
    let again = run_to_end(&["rules", "install"], &world.pg.env()).await;
    assert!(again.contains("already at version 5"), "{again}");

    let client = world.pg.client().await;
    client.batch_execute("INSERT INTO pgevents.event_table (table_name) VALUES ('users'), ('numbers');
        INSERT INTO pgevents.action (name, kind, url) VALUES ('hook', 'http', '{base_url}/hook');
        INSERT INTO pgevents.action (name, kind, sql) VALUES ('record', 'sql', 'INSERT INTO public.audit (note) VALUES ($1->>''x'')');").await.unwrap();
    let refused = |sql: &'static str| {
        let client = &client;
        async move {
            let err = client.batch_execute(sql).await.expect_err(sql);
            let db = err.as_db_error().expect("a server error");
            format!("{} {}", db.message(), db.detail().unwrap_or_default())
        }
    };
    // Refused when written: what the database itself can tell.
    let unknown =
        refused("INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('w', 'users', 'no_such_action')")
            .await;
    assert!(unknown.contains("Key (action)=(no_such_action) is not present in table \"action\""), "{unknown}");
    let table = refused("INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('w', 'nope', 'hook')").await;
    assert!(
        table.contains("is not present in table \"event_table\"") || table.contains("there is no table"),
        "{table}"
    );
    let url = refused("INSERT INTO pgevents.action (name, kind, url) VALUES ('a', 'http', 'htp:/nowhere')").await;
    assert!(url.contains("action_url_is_http"), "{url}");
    // Text is checked by parsing it in its owner's session, never by the database building a
    // statement around it: `pgevents rules check` reports it, and the worker runs none of it.
    client
        .batch_execute(
            "INSERT INTO pgevents.action (name, kind, sql) VALUES ('bad_sql', 'sql', 'INSERT INTO missing_table VALUES ($1)');
             INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES ('bad_syntax', 'users', 'hook', '$1->>''a'' =');
             INSERT INTO pgevents.work_item (name, table_name, action, work_item_query) VALUES ('no_parameters', 'users', 'hook', 'SELECT 1 AS p');
             INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('uses_bad_sql', 'users', 'bad_sql');",
        )
        .await
        .unwrap();
    let mut check = PgEventsProcess::spawn(&["rules", "check"], &world.pg.env());
    assert_eq!(check.wait(WAIT).await, Some(1), "rules check fails: {}", check.stdout());
    let report = check.stdout();
    assert!(
        report.contains(
            "FAIL  work item \"bad_syntax\": filter of work item \"bad_syntax\": invalid filter: syntax error"
        ),
        "{report}"
    );
    assert!(
        report.contains("FAIL  work item \"no_parameters\"") && report.contains("column q.parameters does not exist"),
        "{report}"
    );
    assert!(
        report.contains("FAIL  action \"bad_sql\"") && report.contains("relation \"missing_table\" does not exist"),
        "{report}"
    );
    assert!(report.contains("3 of 6 rules cannot run"), "{report}");

    // Rules that pass the checks but fail for some events, and an unset {base_url}.
    client
        .batch_execute(
            "INSERT INTO pgevents.work_item (name, table_name, action, work_item_query) VALUES
                ('divide', 'numbers', 'record', $$SELECT jsonb_build_object('x', 10 / ($1->'new'->>'n')::int) AS parameters$$),
                ('hook', 'users', 'hook', NULL);
             INSERT INTO pgevents.action (name, kind, sql, timeout_ms, max_attempts)
             VALUES ('sleepy', 'sql', 'SELECT pg_sleep(2)', 100, 1);
             INSERT INTO pgevents.work_item (name, table_name, action, filter)
             VALUES ('sleepy', 'numbers', 'sleepy', $$($1->'new'->>'n')::int = 99$$);",
        )
        .await
        .unwrap();
    let stage = Stage::with_world(world, &[]).await;
    let worker = stage.worker().await;
    stage.world.pg.execute("INSERT INTO numbers (n) VALUES (0)").await;
    let runs = stage.wait_runs("divide", 1).await;
    assert_eq!(statuses(&runs), ["dead"]);
    let error = runs[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("work_item_query of work item \"divide\" failed: division by zero"), "{error}");
    assert!(runs[0]["idempotency_key"].as_str().unwrap_or_default().ends_with("/divide/rule"));

    stage.world.pg.execute("INSERT INTO users (email) VALUES ('x@y')").await;
    let runs = stage.wait_runs("hook", 1).await;
    assert_eq!(statuses(&runs), ["dead"]);
    assert!(runs[0]["error"].as_str().unwrap_or_default().contains("no base_url is set"), "{runs:?}");
    for (work_item, reason) in [
        ("bad_syntax", "invalid filter: syntax error"),
        ("no_parameters", "column q.parameters does not exist"),
        ("uses_bad_sql", "relation \"missing_table\" does not exist"),
    ] {
        let runs = stage.wait_runs(work_item, 1).await;
        assert_eq!(statuses(&runs), ["dead"], "{work_item}");
        assert!(runs[0]["error"].as_str().unwrap_or_default().contains(reason), "{work_item}: {runs:?}");
    }

    // timeout_ms is the statement's timeout.
    stage.world.pg.execute("INSERT INTO numbers (n) VALUES (99)").await;
    let runs = stage.wait_runs("sleepy", 1).await;
    assert_eq!(statuses(&runs), ["dead"]);
    assert!(runs[0]["error"].as_str().unwrap_or_default().contains("statement timeout"), "{runs:?}");
    assert!(runs[0]["duration_ms"].as_f64().unwrap_or(0.0) < 1500.0, "{runs:?}");

    // The worker is still at work.
    stage.world.pg.execute("INSERT INTO numbers (n) VALUES (5)").await;
    let runs = stage.wait_runs("divide", 3).await;
    assert_eq!(statuses(&runs), ["dead", "succeeded", "succeeded"]);
    let notes = stage.world.pg.query_text("SELECT string_agg(note, ',' ORDER BY id) FROM audit").await;
    assert_eq!(notes.as_deref(), Some("0,2"), "10 / 99 and 10 / 5");
    stage.cleanup(vec![worker]).await;
}

/// Workers on one queue share the events (competing consumers), and each event's SQL action
/// runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_on_one_queue_share_the_load() {
    let rules = "
        INSERT INTO pgevents.event_table (table_name) VALUES ('numbers');
        INSERT INTO pgevents.action (name, kind, sql)
        VALUES ('record', 'sql', 'INSERT INTO public.audit (note, amount) SELECT $1->>''id'', (($1->>''n'')::int) FROM pg_sleep(0.02)');
        INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('record', 'numbers', 'record');";
    let stage = Stage::new(rules).await;
    let first = stage.start("worker", &[("PGEVENTS_CONCURRENCY", "2")]).await;
    let second = stage.start("worker", &[("PGEVENTS_CONCURRENCY", "2")]).await;
    stage.world.pg.execute("INSERT INTO numbers (n) SELECT g FROM generate_series(1, 40) g").await;
    let runs = stage.wait_runs("record", 40).await;
    assert_eq!(statuses(&runs), ["succeeded"; 40]);
    let workers: std::collections::BTreeSet<&str> = runs.iter().filter_map(|r| r["worker"].as_str()).collect();
    assert_eq!(workers.len(), 2, "both workers took events: {workers:?}");
    let audit = stage.world.pg.query_text("SELECT count(DISTINCT note) || '/' || count(*) FROM audit").await;
    assert_eq!(audit.as_deref(), Some("40/40"), "each event's action ran exactly once");
    stage.cleanup(vec![first, second]).await;
}

/// A database restart under a running worker: jobs wait and then run, the rule cache reconnects
/// and still follows changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_rides_out_a_database_restart() {
    let rules = "
        INSERT INTO pgevents.event_table (table_name) VALUES ('numbers');
        INSERT INTO pgevents.action (name, kind, sql, backoff_ms, max_attempts)
        VALUES ('record', 'sql', 'INSERT INTO public.audit (note) VALUES ($1->>''n'')', 200, 50);
        INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('record', 'numbers', 'record');";
    let stage = Stage::new(rules).await;
    let mut worker = stage.worker().await;
    stage.world.pg.execute("INSERT INTO numbers (n) VALUES (1)").await;
    stage.wait_runs("record", 1).await;

    stage.world.pg.restart();
    worker.wait_for_log("rules reloaded after reconnecting", WAIT).await;
    stage.world.pg.execute("INSERT INTO numbers (n) VALUES (2)").await;
    wait_for("the action after the restart", WAIT, || async {
        let runs = stage.runs("record").await;
        runs.iter().any(|r| r["status"] == "succeeded" && r["parameters"]["n"] == 2).then_some(())
    })
    .await;

    // The reconnected rule cache still hears about changes (the reload after reconnecting logged
    // the same line: wait for one more).
    let reloads = worker.log_count("rules reloaded work_items");
    stage.world.pg.execute("UPDATE pgevents.work_item SET filter = $$($1->'new'->>'n')::int > 10$$").await;
    worker.wait_for_logs("rules reloaded work_items", reloads + 1, WAIT).await;
    stage.world.pg.execute("INSERT INTO numbers (n) VALUES (3), (30)").await;
    let notes = wait_for("the row of 30", WAIT, || async {
        let notes = stage.world.pg.query_text("SELECT string_agg(note, ',' ORDER BY id) FROM audit").await;
        notes.filter(|n| n.ends_with("30"))
    })
    .await;
    assert_eq!(notes, "1,2,30", "3 is filtered out by the changed rule");
    assert!(!worker.stderr().contains("panicked"));
    stage.cleanup(vec![worker]).await;
}

/// A RabbitMQ restart while events flow: the worker, its work-message publisher and the action
/// runner reconnect, and every event's SQL action runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_ride_out_a_broker_restart() {
    const ROWS: usize = 300;
    let node = RabbitNode::start().await;
    let url = node.url();
    let world = World::new().await;
    world.pg.execute(TABLES).await;
    common::install_audit_rule(&world.pg).await;
    let stage = Stage::with_world(world, &[("RABBITMQ_URL", &url)]).await;
    let runner = stage.start("action-runner", &[("RABBITMQ_URL", &url)]).await;
    let metrics_addr = pgevents_testkit::free_local_addr();
    let metrics = metrics_addr.to_string();
    let worker = stage.start("worker", &[("RABBITMQ_URL", &url), ("PGEVENTS_METRICS_ADDR", &metrics)]).await;
    let ready = move || http_get(metrics_addr, "/readyz");
    assert_eq!(ready().await.map(|r| r.0), Some(200));
    let writer = common::insert_paced(&stage.world.pg, "INSERT INTO numbers (n) VALUES ($1)", ROWS as i32);
    let fault = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        node.stop_app().await;
        // Not ready while the broker is away, with the reason.
        let (_, reason) =
            wait_for("/readyz to say 503", WAIT, || async { ready().await.filter(|(status, _)| *status == 503) }).await;
        node.start_app().await;
        reason
    };
    let ((), reason) = tokio::join!(writer, fault);
    assert!(reason.contains("RabbitMQ connection lost"), "{reason}");
    let counts = wait_for("every action", Duration::from_secs(90), || async {
        let counts = stage.world.pg.query_text("SELECT count(DISTINCT note) || '/' || count(*) FROM audit").await;
        counts.filter(|c| c.starts_with(&format!("{ROWS}/")))
    })
    .await;
    assert_eq!(counts, format!("{ROWS}/{ROWS}"), "each event's action ran exactly once");
    let succeeded =
        stage.world.pg.query_text("SELECT count(*)::text FROM pgevents.action_run WHERE status = 'succeeded'").await;
    assert_eq!(succeeded, Some(ROWS.to_string()));
    wait_for("/readyz to say 200 again", WAIT, || async { ready().await.filter(|(status, _)| *status == 200) }).await;
    for process in [&worker, &runner] {
        assert!(process.stderr().contains("reconnecting"), "it noticed the restart:\n{}", process.stderr());
    }
    for process in [worker, runner, stage.producer] {
        common::stop(process).await;
    }
}

/// Once the cause is fixed, `pgevents requeue-dead` sends dead jobs back to the action runners:
/// they run again with a fresh attempt budget; what is not a job stays in the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_can_be_requeued() {
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_fixed = fixed.clone();
    let http =
        HttpRecorder::start(move |_, _| Reply::status(if is_fixed.load(Ordering::SeqCst) { 200 } else { 503 })).await;
    let rules = format!(
        r#"
        INSERT INTO pgevents.event_table (table_name) VALUES ('users');
        INSERT INTO pgevents.action (name, kind, url, max_attempts, backoff_ms) VALUES ('hook', 'http', '{base}/hook', 2, 50);
        INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('hook', 'users', 'hook');
        "#,
        base = http.base_url()
    );
    let stage = Stage::new(&rules).await;
    let worker = stage.worker().await;
    stage.world.pg.execute("INSERT INTO users (email) VALUES ('a@x')").await;
    let runs = stage.wait_runs("hook", 2).await;
    assert_eq!(statuses(&runs), ["failed", "dead"]);
    publish_raw(&stage.dead_exchange, "public.users", "junk", b"not a job").await;

    fixed.store(true, Ordering::SeqCst);
    let runner = stage.start("action-runner", &[]).await;
    let requeue = |work_item: &'static str| {
        let env = stage.env(&[]);
        async move { run_to_end(&["requeue-dead", "--work-item", work_item], &env).await }
    };
    let out = requeue("hook").await;
    assert!(out.contains("requeued 1 dead jobs") && out.contains("left 1 other messages"), "{out}");
    let runs = stage.wait_runs("hook", 3).await;
    assert_eq!(statuses(&runs), ["failed", "dead", "succeeded"]);
    assert_eq!(runs[2]["attempt"], 1, "a fresh attempt budget");
    assert_eq!(runs[2]["idempotency_key"], runs[0]["idempotency_key"]);
    assert!(runs[2]["worker"].as_str().unwrap_or_default().starts_with("action-runner@"), "{runs:?}");
    let calls = http.requests();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.header("idempotency-key") == calls[0].header("idempotency-key")));

    // Nothing more to requeue; the message that is not a job is still there.
    let out = requeue("hook").await;
    assert!(out.contains("requeued 0 dead jobs") && out.contains("left 1 other messages"), "{out}");
    stage.cleanup(vec![worker, runner]).await;
}

/// `{{secret.NAME}}` fills URLs and headers from the worker's environment and
/// `--secrets-dir`, and no secret value is ever recorded: not in `action_run` (parameters,
/// error, the response body that echoes one), not in the dead-letter header, not in the log;
/// recorded URLs lose their query values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_used_but_never_recorded() {
    const API: &str = "tok-123456-secret";
    const HOOK: &str = "hook-abcdef-secret";
    const FILE: &str = "file-zyxwv-secret";
    let http = HttpRecorder::start(|_, request| {
        // A server that echoes the credentials it got (in the body that action_run keeps).
        let echo = request.header("authorization").unwrap_or_default().to_owned();
        Reply::with_body(500, &json!({"you_sent": echo}).to_string())
    })
    .await;
    let rules = format!(
        r#"
        INSERT INTO pgevents.event_table (table_name) VALUES ('users');
        INSERT INTO pgevents.secret_grant VALUES ('HOOK_TOKEN', 'postgres'), ('API_TOKEN', 'postgres'), ('FILE_TOKEN', 'postgres');
        INSERT INTO pgevents.action (name, kind, url, headers, max_attempts, backoff_ms) VALUES
            ('notify', 'http', '{base}/hook?key={{{{secret.HOOK_TOKEN}}}}',
             '{{"Authorization": "Bearer {{{{secret.API_TOKEN}}}}", "X-File": "{{{{secret.FILE_TOKEN}}}}"}}', 2, 50),
            ('down', 'http', 'http://127.0.0.1:1/x?key={{{{secret.HOOK_TOKEN}}}}', '{{}}', 1, 50);
        INSERT INTO pgevents.work_item (name, table_name, action) VALUES
            ('notify', 'users', 'notify'), ('down', 'users', 'down');
        "#,
        base = http.base_url()
    );
    let stage = Stage::new(&rules).await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("FILE_TOKEN"), format!("{FILE}\n")).unwrap();
    let dir = secrets.path().display().to_string();
    let worker = stage
        .start(
            "worker",
            &[("PGEVENTS_SECRET_API_TOKEN", API), ("PGEVENTS_SECRET_HOOK_TOKEN", HOOK), ("PGEVENTS_SECRETS_DIR", &dir)],
        )
        .await;
    stage.world.pg.execute(&format!("INSERT INTO users (email) VALUES ('{API}@example.com')")).await;
    let runs = stage.wait_runs("notify", 2).await;
    assert_eq!(statuses(&runs), ["failed", "dead"]);
    let down = stage.wait_runs("down", 1).await;

    // The secrets reached the server.
    let calls = paths(&http.requests(), &format!("/hook?key={HOOK}"));
    assert_eq!(calls.len(), 2, "{:?}", http.requests());
    assert_eq!(calls[0].header("authorization"), Some(format!("Bearer {API}").as_str()));
    assert_eq!(calls[0].header("x-file"), Some(FILE));

    // ... and nowhere else.
    let recorded = serde_json::to_string(&[&runs[..], &down[..]].concat()).unwrap();
    for secret in [API, HOOK, FILE] {
        assert!(!recorded.contains(secret), "{secret} recorded in action_run: {recorded}");
    }
    assert_eq!(runs[1]["result"], r#"{"you_sent":"Bearer [secret API_TOKEN]"}"#);
    assert_eq!(runs[0]["parameters"]["email"], "[secret API_TOKEN]@example.com", "parameters are cleaned too");
    let error = down[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("http://127.0.0.1:1/x?key={{secret.HOOK_TOKEN}} (http://127.0.0.1:1): cannot connect"),
        "the URL template, never the rendered URL: {error}"
    );
    let mut dead = EventQueue::reattach(&amqp_url(), &stage.dead_queue).await;
    for _ in 0..2 {
        let letter = dead.next_raw(WAIT).await.expect("a dead job");
        let header = letter.header("error").unwrap_or_default();
        assert!(![API, HOOK, FILE].iter().any(|s| header.contains(s)), "{header}");
    }
    dead.close().await;
    let log = worker.stderr();
    assert!(![API, HOOK, FILE].iter().any(|s| log.contains(s)), "a secret in the log:\n{log}");
    assert!(log.contains("API_TOKEN") && log.contains("FILE_TOKEN"), "the log names the secrets it has:\n{log}");
    stage.cleanup(vec![worker]).await;
}

/// With `--http-allow`, a call to an address outside the list is refused before any
/// connection and recorded as dead with the reason; redirects are followed only to the same
/// host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outside_http_allow_and_redirects_to_other_hosts_are_refused() {
    let http = HttpRecorder::start(|_, request| match request.path.as_str() {
        "/jump" => {
            let port = request.header("host").and_then(|h| h.rsplit(':').next()).unwrap_or("1");
            Reply::redirect(302, &format!("http://localhost:{port}/landed"))
        }
        "/same" => Reply::redirect(307, "/landed"),
        _ => Reply::status(200),
    })
    .await;
    let rules = format!(
        r#"
        INSERT INTO pgevents.event_table (table_name) VALUES ('users');
        INSERT INTO pgevents.action (name, kind, url, max_attempts, backoff_ms) VALUES
            ('outside', 'http', 'http://10.1.2.3:9/x', 3, 50),
            ('jump', 'http', '{base}/jump', 3, 50),
            ('same', 'http', '{base}/same', 3, 50);
        INSERT INTO pgevents.work_item (name, table_name, action) VALUES
            ('outside', 'users', 'outside'), ('jump', 'users', 'jump'), ('same', 'users', 'same');
        "#,
        base = http.base_url()
    );
    let stage = Stage::new(&rules).await;
    let worker = stage.start("worker", &[("PGEVENTS_HTTP_ALLOW", "127.0.0.0/8,localhost")]).await;
    stage.world.pg.execute("INSERT INTO users (email) VALUES ('a@example.com')").await;

    let outside = stage.wait_runs("outside", 1).await;
    assert_eq!(statuses(&outside), ["dead"], "refused for good, at the first attempt");
    assert_eq!(
        outside[0]["error"],
        "refused to call http://10.1.2.3:9/x (http://10.1.2.3:9): 10.1.2.3 is not allowed by --http-allow"
    );

    let jump = stage.wait_runs("jump", 1).await;
    assert_eq!(statuses(&jump), ["dead"]);
    let error = jump[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("a redirect to another host (localhost) was refused"), "{error}");

    let same = stage.wait_runs("same", 1).await;
    assert_eq!(statuses(&same), ["succeeded"], "a redirect on the same host is followed");
    assert_eq!(paths(&http.requests(), "/landed").len(), 1, "only the same-host redirect landed");
    stage.cleanup(vec![worker]).await;
}

/// An API behind a private CA: refused (dead, the certificate named) until the worker trusts
/// that CA with `--http-ca-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_actions_trust_a_private_ca_given_with_http_ca_file() {
    let ca = TestCa::new("pgevents API CA");
    let http = HttpRecorder::start_tls(&ca.server("api", &["localhost", "127.0.0.1"]), |_, _| Reply::status(200)).await;
    let rules = format!(
        r#"
        INSERT INTO pgevents.event_table (table_name) VALUES ('users');
        INSERT INTO pgevents.action (name, kind, url, max_attempts, backoff_ms) VALUES ('secure', 'http', '{base}/ok', 1, 50);
        INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('secure', 'users', 'secure');
        "#,
        base = http.base_url()
    );
    let stage = Stage::new(&rules).await;
    let untrusting = stage.worker().await;
    stage.world.pg.execute("INSERT INTO users (email) VALUES ('a@example.com')").await;
    let runs = stage.wait_runs("secure", 1).await;
    assert_eq!(statuses(&runs), ["dead"]);
    let error = runs[0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("UnknownIssuer") || error.contains("certificate"), "{error}");
    common::stop(untrusting).await;

    let ca_file = ca.cert().display().to_string();
    let trusting = stage.start("worker", &[("PGEVENTS_HTTP_CA_FILE", &ca_file)]).await;
    stage.world.pg.execute("INSERT INTO users (email) VALUES ('b@example.com')").await;
    let runs = stage.wait_runs("secure", 2).await;
    assert_eq!(statuses(&runs), ["dead", "succeeded"]);
    assert_eq!(paths(&http.requests(), "/ok").len(), 1, "only the trusting worker's call got through");
    stage.cleanup(vec![trusting]).await;
}

/// Per-row order at any parallelism: four workers with `--concurrency 4` each, fed through a
/// consistent-hash exchange on the producer's `--pk-hash-header`, while 50 rows are each updated
/// three times per transaction, ten times over. Every row's SQL action sees its versions in
/// commit order (the lanes keep them in order inside a worker; the hash keeps a row on one
/// worker), and each event's action runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_workers_keep_each_rows_order() {
    const ROWS: i32 = 50;
    const ROUNDS: i32 = 10;
    let node = RabbitNode::start_with_plugins("rabbitmq_consistent_hash_exchange").await;
    let url = node.url();
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE users (id serial PRIMARY KEY, email text); CREATE TABLE orders (id serial PRIMARY KEY);
             CREATE TABLE numbers (id int PRIMARY KEY, version int NOT NULL);
             CREATE TABLE seen (seq bigserial PRIMARY KEY, item int, version int);",
        )
        .await;
    run_to_end(&["rules", "install"], &world.pg.env()).await;
    world
        .pg
        .execute(
            "INSERT INTO pgevents.event_table (table_name) VALUES ('numbers');
             INSERT INTO pgevents.action (name, kind, sql)
             VALUES ('see', 'sql', 'INSERT INTO public.seen (item, version) VALUES (($1->>''id'')::int, ($1->>''version'')::int)');
             INSERT INTO pgevents.work_item (name, table_name, action, trigger_actions) VALUES ('see', 'numbers', 'see', '{I,U}');",
        )
        .await;
    let rows_exchange = unique_name("rows");
    consistent_hash_exchange(&url, &rows_exchange, "pk", &world.exchange).await;
    let stage = Stage::with_world(world, &[("RABBITMQ_URL", &url), ("PGEVENTS_PK_HASH_HEADER", "pk")]).await;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let queue = unique_name("lane");
        let env = [
            ("RABBITMQ_URL", url.as_str()),
            ("RABBITMQ_EXCHANGE", rows_exchange.as_str()),
            ("RABBITMQ_QUEUE_NAME", queue.as_str()),
            // The weight of the queue on the consistent-hash exchange.
            ("RABBITMQ_BINDING_KEYS", "1"),
            ("PGEVENTS_CONCURRENCY", "4"),
        ];
        workers.push(stage.start("worker", &env).await);
    }
    let client = stage.world.pg.client().await;
    client.execute("INSERT INTO numbers SELECT id, 0 FROM generate_series(1, $1) id", &[&ROWS]).await.expect("insert");
    for _ in 0..ROUNDS {
        for id in 1..=ROWS {
            let bump = format!("UPDATE numbers SET version = version + 1 WHERE id = {id};");
            client.batch_execute(&format!("BEGIN; {bump} {bump} {bump} COMMIT;")).await.expect("update");
        }
    }
    let events = ROWS * (1 + 3 * ROUNDS);
    wait_for("every action", Duration::from_secs(120), || async {
        let count = stage.world.pg.query_text("SELECT count(*)::text FROM seen").await;
        count.filter(|c| c.parse::<i32>().is_ok_and(|n| n >= events))
    })
    .await;
    let out_of_order = stage
        .world
        .pg
        .query_text(
            "SELECT coalesce(string_agg(item || ': ' || versions::text, '; '), '') FROM (
                 SELECT item, array_agg(version ORDER BY seq) AS versions FROM seen GROUP BY item
             ) s WHERE versions <> ARRAY(SELECT generate_series(0, 30))",
        )
        .await
        .unwrap_or_default();
    assert_eq!(out_of_order, "", "rows whose actions saw their versions out of order (or not once each)");
    let busy = stage.world.pg.query_text("SELECT count(DISTINCT worker)::text FROM pgevents.action_run").await;
    assert_eq!(busy.as_deref(), Some("4"), "the rows were shared by the four workers");
    stage.cleanup(workers).await;
}

/// With a backlog the worker hands its events to PostgreSQL several at a time (`--batch-size`):
/// one call for the filters and queries of an owner's work items, one transaction for their SQL
/// actions and success rows. All or nothing: an event whose statement fails runs alone (and dies
/// alone: the other events of its batch run once), and after a crash in the middle of the backlog
/// the redelivered events whose jobs had committed are found done. Every action runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_runs_together_and_what_fails_runs_alone() {
    const ROWS: usize = 600;
    // n = id % 50: 12 rows with n = 7 are filtered out, 12 with n = 0 divide by zero.
    const SUCCEEDED: usize = ROWS - 12 - 12;
    let rules = "
        INSERT INTO pgevents.event_table (table_name) VALUES ('numbers');
        INSERT INTO pgevents.action (name, kind, sql, max_attempts) VALUES ('tally', 'sql',
            'INSERT INTO audit (note, amount) VALUES ($1->>''id'', 100 / ($1->>''n'')::int)', 1);
        INSERT INTO pgevents.work_item (name, table_name, action, filter, work_item_query)
        VALUES ('tally', 'numbers', 'tally', $$($1->'new'->>'n')::int <> 7$$,
                $$SELECT jsonb_build_object('id', $1->'new'->'id', 'n', $1->'new'->'n') AS parameters$$);";
    let stage = Stage::new(rules).await;
    let mut events = stage.world.queue(&["public.numbers"]).await;
    // The worker declares its queue, then the events pile up while it is away.
    common::stop(stage.worker().await).await;
    stage.world.pg.execute(&format!("INSERT INTO numbers (n) SELECT id % 50 FROM generate_series(1, {ROWS}) id")).await;
    assert_eq!(events.take(ROWS, WAIT).await.len(), ROWS);
    let count = |status: &'static str| {
        let pg = &stage.world.pg;
        async move {
            let sql = format!("SELECT count(*)::text FROM pgevents.action_run WHERE status = '{status}'");
            pg.query_text(&sql).await.and_then(|n| n.parse::<usize>().ok()).unwrap_or(0)
        }
    };
    let addr = pgevents_testkit::free_local_addr().to_string();
    let extra = [("PGEVENTS_CONCURRENCY", "2"), ("PGEVENTS_METRICS_ADDR", addr.as_str())];
    let worker = stage.start("worker", &extra).await;
    wait_for("a third of the actions", WAIT, || async { (count("succeeded").await >= ROWS / 3).then_some(()) }).await;
    worker.kill();
    let mut killed = worker;
    killed.wait(WAIT).await;
    let worker = stage.start("worker", &extra).await;
    wait_for("every job ended", Duration::from_secs(120), || async {
        (count("succeeded").await + count("dead").await >= SUCCEEDED + 12).then_some(())
    })
    .await;
    let pg = &stage.world.pg;
    let audit = pg.query_text("SELECT count(*) || ' ' || count(DISTINCT note) FROM audit").await;
    assert_eq!(audit, Some(format!("{SUCCEEDED} {SUCCEEDED}")), "each action ran once");
    assert_eq!(count("succeeded").await, SUCCEEDED);
    assert_eq!(count("failed").await, 0);
    let dead = pg
        .query_text(
            "SELECT string_agg(DISTINCT (parameters->>'n') || ': ' || error, '; ') FROM pgevents.action_run WHERE status = 'dead'",
        )
        .await;
    assert_eq!(
        dead.as_deref(),
        Some("0: division by zero (SQLSTATE 22012)"),
        "the failing jobs died alone, with their error"
    );
    assert_eq!(count("dead").await, 12);
    let keys = pg.query_text("SELECT count(DISTINCT idempotency_key)::text FROM pgevents.action_run").await;
    assert_eq!(keys, Some((SUCCEEDED + 12).to_string()));
    let metrics =
        http_get(addr.parse().expect("an address"), "/metrics").await.map(|(_, text)| text).unwrap_or_default();
    let together = metric_value(&metrics, "pgevents_worker_batch_events_sum").unwrap_or(0.0);
    let alone = metric_value(&metrics, "pgevents_worker_events_alone_total").unwrap_or(0.0);
    assert!(together >= 100.0, "events handed over in batches: {together}");
    assert!(alone >= 1.0 && alone < together, "events of a batch that ran alone: {alone} of {together}");
    events.close().await;
    stage.cleanup(vec![worker]).await;
}

/// A rule owner's session dropped inside a transaction (a job cut short between the statement
/// and its commit) is closed, not lent again: the next job in that session would otherwise
/// commit what the first one left. One that ended its transaction goes back to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_session_dropped_inside_a_transaction_is_not_lent_again() {
    let pg = pgevents_testkit::PgCluster::start().await;
    pg.execute("CREATE TABLE left_behind (id int)").await;
    let config = pgevents_pg::ConnectConfig {
        host: "127.0.0.1".into(),
        port: common::pg_port(&pg),
        user: "postgres".into(),
        password: None,
        dbname: "postgres".into(),
        application_name: "owner sessions test".into(),
        tls: pgevents_pg::TlsMode::Disable,
        ssl_root_cert: None,
        ssl_cert: None,
        channel_binding: Default::default(),
        connect_timeout: Duration::from_secs(5),
        passfile: None,
        search_path: Default::default(),
    };
    // One connection: whatever the second job gets is what the first one gave back.
    let sessions = pgevents_rules::OwnerSessions::new(config, 1);
    async fn pid(client: &tokio_postgres::Client) -> i32 {
        client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0)
    }

    let mut first = sessions.get("postgres").await.unwrap();
    let first_pid = pid(&first).await;
    first.begin();
    first.batch_execute("BEGIN; INSERT INTO left_behind VALUES (1)").await.unwrap();
    drop(first);

    let mut second = sessions.get("postgres").await.unwrap();
    assert_ne!(pid(&second).await, first_pid, "the session left inside a transaction was lent again");
    second.begin();
    second.batch_execute("BEGIN; INSERT INTO left_behind VALUES (2); COMMIT").await.unwrap();
    second.ended();
    let second_pid = pid(&second).await;
    drop(second);
    let third = sessions.get("postgres").await.unwrap();
    assert_eq!(pid(&third).await, second_pid, "a session whose transaction ended was not lent again");
    wait_for("the left transaction rolled back", WAIT, || async {
        (pg.query_text("SELECT string_agg(id::text, ',') FROM left_behind").await.as_deref() == Some("2")).then_some(())
    })
    .await;
}
