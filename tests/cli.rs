//! The command line: `--help` names every environment variable, and the original pgevents'
//! spellings (underscored flags, PGREPLICATIONSLOT, `event_logger`) are accepted.

use std::process::{Command, Output};

use pgevents_testkit::pgevents_binary;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(pgevents_binary());
    cmd.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pgevents")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_every_environment_variable() {
    let help = stdout(&run(&["producer", "--help"], &[]));
    for var in [
        "PGHOST",
        "PGPORT",
        "PGDATABASE",
        "PGUSER",
        "PGPASSWORD",
        "PGSLOT",
        "PGREPLICATIONSLOT",
        "PGTABLES",
        "PGPUBLICATION",
        "PGOUTPUTPLUGIN",
        "DATABASE_URL",
        "RABBITMQ_URL",
        "RABBITMQ_EXCHANGE",
    ] {
        assert!(help.contains(var), "producer --help names {var}:\n{help}");
    }
    let help = stdout(&run(&["consumer_debug", "--help"], &[]));
    for var in ["RABBITMQ_URL", "RABBITMQ_EXCHANGE", "RABBITMQ_QUEUE_NAME", "RABBITMQ_BINDING_KEYS"] {
        assert!(help.contains(var), "consumer_debug --help names {var}:\n{help}");
    }
}

#[test]
fn secrets_are_not_shown_in_help() {
    let help =
        stdout(&run(&["producer", "--help"], &[("PGPASSWORD", "hunter2"), ("RABBITMQ_URL", "amqp://u:hunter2@h")]));
    assert!(!help.contains("hunter2"), "{help}");
}

#[test]
fn original_spellings_are_accepted() {
    // Underscored flags reach the same settings: the error names the host and port given.
    let out = run(
        &[
            "producer",
            "--pg_host",
            "127.0.0.1",
            "--pg_port",
            "1",
            "--pg_user",
            "u",
            "--pg_database",
            "d",
            "--pg_password",
            "p",
            "--pg_tables",
            "public.t",
            "--pg_publication_name",
            "pub",
            "--pg_output_plugin",
            "wal2json",
            "--rabbitmq_url",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "--rabbitmq_exchange",
            "x",
            "--pg_replication_slot",
            "s",
            "--pgsslmode",
            "disable",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot connect to PostgreSQL at 127.0.0.1:1 as \"u\""), "{}", stderr(&out));

    // PGREPLICATIONSLOT is read when PGSLOT is not set (here with a name PostgreSQL would refuse).
    let out = run(&["producer"], &[("PGREPLICATIONSLOT", "Not-Valid")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid slot name \"Not-Valid\""), "{}", stderr(&out));

    // event_logger is consumer_debug.
    let out = run(&["event_logger", "--help"], &[]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("--binding-keys"));
}

#[test]
fn unknown_values_are_usage_errors() {
    let out = run(&["producer", "--plugin", "decoderbufs"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid value 'decoderbufs'"), "{}", stderr(&out));
    assert!(stderr(&out).contains("pgoutput, wal2json"), "{}", stderr(&out));
}

#[test]
fn worker_commands_name_their_environment_variables() {
    let help = stdout(&run(&["worker", "--help"], &[]));
    for var in [
        "PGHOST",
        "DATABASE_URL",
        "RABBITMQ_URL",
        "RABBITMQ_EXCHANGE",
        "RABBITMQ_QUEUE_NAME",
        "PGEVENTS_CONCURRENCY",
        "PGEVENTS_BASE_URL",
        "PGEVENTS_WORK_EXCHANGE",
        "PGEVENTS_DEAD_LETTER_QUEUE",
        "PGEVENTS_RULES_REFRESH",
        "PGEVENTS_METRICS_ADDR",
    ] {
        assert!(help.contains(&format!("env: {var}")), "worker --help does not name {var}:\n{help}");
    }
    let help = stdout(&run(&["action-runner", "--help"], &[]));
    assert!(help.contains("env: PGEVENTS_WORK_QUEUE") && help.contains("env: RABBITMQ_URL"), "{help}");
    let help = stdout(&run(&["rules", "install", "--help"], &[]));
    assert!(help.contains("env: PGHOST"), "{help}");
}

#[test]
fn workers_explain_unreachable_servers() {
    // Nothing listens on port 1: a clear error and exit 1, never a panic.
    let out = run(&["worker"], &[("PGHOST", "127.0.0.1"), ("PGPORT", "1"), ("PGCONNECT_TIMEOUT", "2")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot load the rules") && err.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = run(&["action-runner", "--rabbitmq-url", "not a url"], &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("RABBITMQ_URL / --rabbitmq-url"), "{}", stderr(&out));
    let out = run(&["rules", "install"], &[("PGHOST", "127.0.0.1"), ("PGPORT", "1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot connect to PostgreSQL"), "{}", stderr(&out));
}
