//! `pgevents check`: validates the producer's settings and connectivity, reviews the risky
//! settings of the whole deployment (unsigned messages believed, HTTP actions allowed anywhere, TLS
//! that does not verify the server, a gateway or its sessions open to the network without
//! authentication) and what the database holds (rules without an owner or whose owners cannot
//! log in or are superusers, secrets granted to every rule owner, tables whose addressed rows'
//! deletes would reach nobody without REPLICA IDENTITY FULL), and prints, for each check, what
//! was found and how to fix a problem. Exit status 0 when nothing failed (warnings do not fail).

use std::io::Write as _;
use std::net::SocketAddr;

use pgevents_amqp::Brokers;
use pgevents_pg::{ConnectConfig, TlsMode};
use pgevents_producer::check::{run_checks, Finding, Verdict};

use crate::cli::CheckArgs;

pub async fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let config = super::producer::config(&args.producer)?;
    let mut findings = run_checks(&config).await;
    findings.extend(risky_settings(&Deployment {
        allow_unsigned_messages: config.allow_unsigned_messages,
        postgres: &config.postgres,
        rabbitmq: &config.amqp_url,
        http_allow: &args.http_allow,
        gateway_listen: args.gateway_listen,
        gateway_auth: args.jwt.jwt_secret_file.is_some() || args.jwt.jwt_public_key_file.is_some(),
        sessions: args.sessions,
        work_key: args.work_key_file.is_some(),
    }));
    findings.extend(database_review(&config.postgres, &args.subscriber_columns).await);
    let mut stdout = std::io::stdout().lock();
    for f in &findings {
        let mark = match f.verdict {
            Verdict::Pass => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        writeln!(stdout, "{mark}  {}: {}", f.what, f.detail)?;
    }
    let failed = findings.iter().filter(|f| f.verdict == Verdict::Fail).count();
    if failed == 0 {
        writeln!(stdout, "all checks passed; the producer can start")?;
    } else {
        writeln!(stdout, "{failed} check(s) failed")?;
    }
    Ok(failed == 0)
}

/// The settings of the deployment that weaken it.
struct Deployment<'a> {
    allow_unsigned_messages: bool,
    postgres: &'a ConnectConfig,
    rabbitmq: &'a Brokers,
    http_allow: &'a [String],
    gateway_listen: Option<SocketAddr>,
    gateway_auth: bool,
    sessions: bool,
    work_key: bool,
}

/// What the database holds that weakens the deployment: the rules' owners and secrets, and the
/// tables `--subscriber-column` addresses.
async fn database_review(postgres: &ConnectConfig, subscriber_columns: &[String]) -> Vec<Finding> {
    let client = match pgevents_pg::connect_driven(postgres, "check").await {
        Ok(client) => client,
        // The producer's checks above already report the connection.
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    match pgevents_rules::review(&client).await {
        Ok(concerns) if concerns.is_empty() => {}
        Ok(concerns) => out.extend(concerns.into_iter().map(|c| warn(c.what, c.detail))),
        Err(e) => out.push(warn("rules", format!("cannot review the rules: {e}"))),
    }
    match pgevents_gateway::tables_needing_full_identity(&client, subscriber_columns).await {
        Ok(tables) if tables.is_empty() => {}
        Ok(tables) => out.push(warn(
            "addressed rows",
            format!(
                "{} have the --subscriber-column column but not REPLICA IDENTITY FULL: a delete's old row holds only the key, so the gateway cannot tell whose row it was and sends it to nobody; run ALTER TABLE ... REPLICA IDENTITY FULL on them",
                tables.join(", ")
            ),
        )),
        Err(e) => out.push(warn("addressed rows", e.to_string())),
    }
    out
}

fn warn(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding { verdict: Verdict::Warn, what, detail: detail.into() }
}

fn pass(what: &'static str, detail: impl Into<String>) -> Finding {
    Finding { verdict: Verdict::Pass, what, detail: detail.into() }
}

/// Whether traffic to `host` stays on this machine.
fn is_local(host: &str) -> bool {
    host == "localhost" || host.starts_with('/') || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reviews the risky settings; no I/O.
fn risky_settings(d: &Deployment<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    out.push(if d.allow_unsigned_messages {
        warn("pgevents messages", "--allow-unsigned-messages is on: any role that can connect can attach context to its transactions and hide its changes from every consumer with pg_logical_emit_message(true, 'pgevents', '{\"skip\": true}'); move the applications to pgevents.context() and pgevents.skip() (GRANT EXECUTE) and turn it off")
    } else {
        pass("pgevents messages", "only signed ones are believed (pgevents.context(), pgevents.skip(), pgevents.outbox(): whoever has EXECUTE on them)")
    });
    out.push(if d.work_key {
        pass("work messages", "signed (--work-key-file)")
    } else {
        warn("work messages", "not signed (no --work-key-file): whoever may publish to the work exchange, or to the dead-letter exchange that requeue-dead reads, can make any action run on parameters of their choosing; give the workers, the action runners and requeue-dead one key (head -c 32 /dev/urandom > work.key)")
    });
    out.push(if d.http_allow.iter().all(|a| a.trim().is_empty()) {
        warn("HTTP actions", "no --http-allow: whoever writes rules can make the workers call any address, internal services included; set PGEVENTS_HTTP_ALLOW to the hosts and networks your actions call")
    } else {
        pass("HTTP actions", format!("limited to {}", d.http_allow.join(", ")))
    });
    let pg = d.postgres;
    out.push(match pg.tls {
        TlsMode::VerifyFull => pass("PostgreSQL TLS", "verify-full"),
        _ if is_local(&pg.host) => pass("PostgreSQL TLS", format!("sslmode={} to {} (this machine)", pg.tls.as_str(), pg.host)),
        TlsMode::VerifyCa => warn("PostgreSQL TLS", "verify-ca checks the certificate's chain, not the host name: any server with a certificate of that CA is accepted; use verify-full where the certificate names the host"),
        mode => warn("PostgreSQL TLS", format!("sslmode={} does not verify the server at {}: anyone in the middle can read the changes and the password; use --pgsslmode verify-full (with --pgsslrootcert for a private CA)", mode.as_str(), pg.host)),
    });
    for mq in d.rabbitmq.nodes() {
        out.push(match (mq.tls, mq.tls_options.verify) {
            (true, true) => pass("RabbitMQ TLS", format!("amqps:// to {}, broker certificate verified", mq.host)),
            (true, false) => warn("RabbitMQ TLS", format!("verify=verify_none for {}: the broker's certificate is not checked; remove it (and give --rabbitmq-ca-file for a private CA)", mq.host)),
            (false, _) if is_local(&mq.host) => pass("RabbitMQ TLS", format!("amqp:// to {} (this machine)", mq.host)),
            (false, _) => warn("RabbitMQ TLS", format!("amqp:// to {} is not encrypted: events and the password cross the network in the clear; use amqps://", mq.host)),
        });
    }
    if let Some(listen) = d.gateway_listen {
        out.push(match (listen.ip().is_loopback(), d.gateway_auth) {
            (_, true) => pass("gateway", format!("{listen}, JWT required")),
            (true, false) => pass("gateway", format!("{listen}, without authentication but only on this machine")),
            (false, false) => warn("gateway", format!("pgevents serve listens on {listen} without authentication: anyone who can reach it reads every event; set --jwt-secret-file or --jwt-public-key-file, or listen on 127.0.0.1 behind a proxy that authenticates")),
        });
        if d.sessions && !d.gateway_auth && !listen.ip().is_loopback() {
            out.push(warn("sessions", format!("--sessions on {listen} without JWT: a session's id is then all a client needs to read it, and ids travel in URLs (logs, history, Referer); require a token (its sub must own the session)")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(d: &Deployment<'_>) -> Vec<&'static str> {
        risky_settings(d).into_iter().filter(|f| f.verdict == Verdict::Warn).map(|f| f.what).collect()
    }

    #[test]
    fn risky_settings_are_warned_about_and_safe_ones_are_not() {
        let mut postgres = ConnectConfig {
            host: "db.example".into(),
            port: 5432,
            user: "u".into(),
            password: None,
            dbname: "d".into(),
            application_name: "t".into(),
            tls: TlsMode::Require,
            ssl_root_cert: None,
            ssl_cert: None,
            channel_binding: Default::default(),
            connect_timeout: std::time::Duration::from_secs(1),
            passfile: None,
            search_path: Default::default(),
        };
        let rabbitmq: Brokers = "amqp://u:p@mq.example/%2f".parse().unwrap();
        let open = Deployment {
            allow_unsigned_messages: true,
            postgres: &postgres,
            rabbitmq: &rabbitmq,
            http_allow: &[],
            gateway_listen: Some("0.0.0.0:8080".parse().unwrap()),
            gateway_auth: false,
            sessions: true,
            work_key: false,
        };
        assert_eq!(
            warnings(&open),
            [
                "pgevents messages",
                "work messages",
                "HTTP actions",
                "PostgreSQL TLS",
                "RabbitMQ TLS",
                "gateway",
                "sessions"
            ]
        );

        postgres.tls = TlsMode::VerifyFull;
        let verified: Brokers = "amqps://u:p@mq.example/%2f".parse().unwrap();
        let allow = ["api.example.com".to_owned()];
        let safe = Deployment {
            allow_unsigned_messages: false,
            postgres: &postgres,
            rabbitmq: &verified,
            http_allow: &allow,
            gateway_listen: Some("0.0.0.0:8080".parse().unwrap()),
            gateway_auth: true,
            sessions: true,
            work_key: true,
        };
        assert!(warnings(&safe).is_empty(), "{:?}", risky_settings(&safe));

        let unverified: Brokers = "amqps://u:p@localhost/%2f?verify=verify_none".parse().unwrap();
        let local = Deployment {
            rabbitmq: &unverified,
            gateway_listen: Some("127.0.0.1:8080".parse().unwrap()),
            gateway_auth: false,
            ..safe
        };
        assert_eq!(warnings(&local), ["RabbitMQ TLS"], "verify_none is warned about even locally");
    }
}
