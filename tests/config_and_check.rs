//! `pgevents check` (what is wrong and how to fix it) and `--config` files (precedence flags >
//! environment > file; unknown keys rejected).

mod common;

use common::{World, WAIT};
use pgevents_testkit::{PgCluster, PgEventsProcess, PgOptions};

/// Runs `pgevents <args>` to completion: (exit code, stdout, stderr).
async fn run(args: &[&str], env: &[(String, String)]) -> (Option<i32>, String, String) {
    let mut p = PgEventsProcess::spawn(args, env);
    let code = p.wait(WAIT).await;
    (code, p.stdout(), p.stderr())
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_on_a_good_setup_and_explains_each_problem() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE nokey (v text);").await;

    let (code, out, err) = run(&["check"], &world.producer_env(&[("PGTABLES", "public.t")])).await;
    assert_eq!(code, Some(0), "{out}{err}");
    for line in
        ["ok    wal_level: logical", "ok    role: superuser", "ok    tables: 1 listed", "ok    RabbitMQ: connected"]
    {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    assert!(out.contains("warn  replication slot: \"pgevents_test\" does not exist yet"), "{out}");
    assert!(out.contains("all checks passed"), "{out}");
    assert_eq!(world.pg.query_text("SELECT count(*)::text FROM pg_replication_slots").await.as_deref(), Some("0"));
    assert_eq!(
        world.pg.query_text("SELECT count(*)::text FROM pg_publication").await.as_deref(),
        Some("0"),
        "check changes nothing"
    );

    let (code, out, err) = run(
        &["check"],
        &world.producer_env(&[
            ("PGTABLES", "public.t,public.nokey"),
            ("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ]),
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("FAIL  replica identity: public.nokey has no primary key")
            && out.contains("REPLICA IDENTITY FULL"),
        "{out}"
    );
    assert!(out.contains("FAIL  RabbitMQ: could not connect to RabbitMQ"), "{out}");
    assert!(out.contains("2 check(s) failed"), "{out}");
    assert!(err.contains("error: the checks above failed"), "{err}");

    let (code, out, _) = run(&["check"], &world.producer_env(&[("PGPORT", "1")])).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("FAIL  PostgreSQL connection: cannot connect to PostgreSQL at 127.0.0.1:1"), "{out}");

    let replica = PgCluster::start_with(PgOptions { wal_level: Some("replica".into()), ..Default::default() }).await;
    let world = World::with_cluster(replica).await;
    let (code, out, _) = run(&["check"], &world.producer_env(&[])).await;
    assert_eq!(code, Some(1));
    assert!(
        out.contains("FAIL  wal_level: wal_level is 'replica'") && out.contains("ALTER SYSTEM SET wal_level = logical"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn config_file_settings_yield_to_environment_and_flags() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgevents.toml");
    let port = world.producer_env(&[]).iter().find(|(k, _)| k == "PGPORT").unwrap().1.clone();
    std::fs::write(
        &path,
        "pgport = 1\n[check]\npgslot = \"from_file\"\npgtables = [\"public.t\"]\n# a comment\n[producer]\npghost = \"elsewhere\"\n",
    )
    .unwrap();
    let path_text = path.to_str().unwrap();
    let mut env: Vec<(String, String)> = world.producer_env(&[]);
    env.retain(|(k, _)| k != "PGSLOT" && k != "PGPORT");

    // The file alone: its port is wrong.
    let (code, out, _) = run(&["check", "--config", path_text], &env).await;
    assert_eq!(code, Some(1));
    assert!(out.contains("127.0.0.1:1"), "the file's pgport is used: {out}");

    // The environment wins over the file; the file's slot and tables apply.
    env.push(("PGPORT".into(), port));
    let (code, out, err) = run(&["check", "--config", path_text], &env).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"from_file\" does not exist yet") && out.contains("tables: 1 listed"), "{out}");

    // A flag wins over both; PGEVENTS_CONFIG names the file too.
    env.push(("PGEVENTS_CONFIG".into(), path_text.into()));
    let (code, out, _) = run(&["check", "--pgslot", "from_flag"], &env).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"from_flag\" does not exist yet"), "{out}");

    std::fs::write(&path, "[check]\npgslott = \"x\"\n").unwrap();
    let (code, _, err) = run(&["check"], &env).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown key \"pgslott\" in section [check]"), "{err}");
    std::fs::write(&path, "pgport = [\n").unwrap();
    let (code, _, err) = run(&["check"], &env).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("invalid TOML"), "{err}");
}

/// `pgevents check` reviews the deployment's risky settings: skip requests honoured, HTTP
/// actions allowed anywhere, TLS that does not verify, a gateway open to the network without
/// authentication; warnings, not failures, each with the fix.
#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_risky_settings() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE t (id int PRIMARY KEY)").await;
    // What the database holds: addressed tables with and without REPLICA IDENTITY FULL, rules
    // without an owner (written before owners existed), owners that cannot log in or are
    // superusers, and a secret granted to every owner.
    world
        .pg
        .execute(
            "CREATE TABLE inbox (id int PRIMARY KEY, recipient text);
             CREATE TABLE outbox (id int PRIMARY KEY, recipient text);
             ALTER TABLE outbox REPLICA IDENTITY FULL;
             CREATE ROLE team NOLOGIN; GRANT SELECT ON t TO team;",
        )
        .await;
    let mut install = PgEventsProcess::spawn(&["rules", "install"], &world.pg.env());
    assert_eq!(install.wait(WAIT).await, Some(0), "{}", install.stderr());
    world
        .pg
        .execute(
            "INSERT INTO pgevents.event_table (table_name) VALUES ('t');
             INSERT INTO pgevents.action (name, kind, sql) VALUES ('a', 'sql', 'SELECT 1');
             INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('old', 't', 'a');
             ALTER TABLE pgevents.work_item DISABLE TRIGGER work_item_owner;
             UPDATE pgevents.work_item SET owner = NULL WHERE name = 'old';
             ALTER TABLE pgevents.work_item ENABLE TRIGGER work_item_owner;
             GRANT USAGE ON SCHEMA pgevents TO team; GRANT INSERT ON pgevents.action TO team;
             SET ROLE team; INSERT INTO pgevents.action (name, kind, sql) VALUES ('team_a', 'sql', 'SELECT 1'); RESET ROLE;
             INSERT INTO pgevents.secret_grant VALUES ('PAY_KEY', 'PUBLIC');",
        )
        .await;
    let risky = world.producer_env(&[
        ("PGTABLES", "public.t"),
        ("PGEVENTS_ALLOW_UNSIGNED_MESSAGES", "true"),
        ("PGEVENTS_LISTEN", "0.0.0.0:8080"),
        ("PGEVENTS_SESSIONS", "true"),
        ("PGEVENTS_SUBSCRIBER_COLUMN", "recipient"),
    ]);
    let (code, out, err) = run(&["check"], &risky).await;
    assert_eq!(code, Some(0), "warnings do not fail the check: {out}{err}");
    for line in [
        "warn  pgevents messages: --allow-unsigned-messages is on",
        "warn  HTTP actions: no --http-allow",
        "warn  gateway: pgevents serve listens on 0.0.0.0:8080 without authentication",
        "warn  sessions: --sessions on 0.0.0.0:8080 without JWT",
        "ok    PostgreSQL TLS: sslmode=disable to 127.0.0.1 (this machine)",
        "warn  rules without an owner: work item 'old' do not run",
        "warn  rule owners: role \"team\" owns rules but cannot log in",
        "warn  rule owners: role \"postgres\" is a superuser",
        "warn  secrets: PAY_KEY granted to PUBLIC",
        "warn  addressed rows: public.inbox have the --subscriber-column column but not REPLICA IDENTITY FULL",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    assert!(!out.contains("public.outbox"), "a table with REPLICA IDENTITY FULL is fine:\n{out}");

    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "a secret of at least thirty-two bytes!!").unwrap();
    let careful = world.producer_env(&[
        ("PGTABLES", "public.t"),
        ("PGEVENTS_HTTP_ALLOW", "api.example.com,10.0.0.0/8"),
        ("PGEVENTS_LISTEN", "0.0.0.0:8080"),
        ("PGEVENTS_JWT_SECRET_FILE", secret.path().to_str().unwrap()),
    ]);
    let (code, out, err) = run(&["check"], &careful).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ok    HTTP actions: limited to api.example.com, 10.0.0.0/8"), "{out}");
    assert!(out.contains("ok    gateway: 0.0.0.0:8080, JWT required"), "{out}");
    assert!(out.contains("ok    pgevents messages: only signed ones are believed"), "{out}");
    assert!(!out.contains("warn  pgevents") && !out.contains("warn  HTTP") && !out.contains("warn  gateway"), "{out}");

    // The option signed skip requests replaced fails with the way forward, never silently.
    let old = world.producer_env(&[("PGTABLES", "public.t"), ("PGEVENTS_ALLOW_SKIP", "true")]);
    let (code, out, err) = run(&["check"], &old).await;
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(err.contains("--allow-skip (PGEVENTS_ALLOW_SKIP) was removed") && err.contains("pgevents.skip()"), "{err}");
}
