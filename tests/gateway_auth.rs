//! `pgevents serve` with JWT authentication: every refusal with its reason, grants of tables and
//! rows applied alike to live and replayed events, the token's subject as the consumer id, the
//! stream ending when the token expires, RS256 and ES256 keys, CORS for the apps' origins.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::gateway::{hs256, now, Gateway};
use common::{stop, World, WAIT};
use pgevents_testkit::{unique_name, PgEventsProcess, SseClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHORT: Duration = Duration::from_millis(700);
const SECRET: &[u8] = b"a shared secret of 32 bytes, ok!";
const APP: &str = "https://app.example.com";

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).expect("write a key file");
    path.display().to_string()
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "user-42", "aud": "shop", "exp": now() + 600});
    if let (Some(base), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    claims
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A raw request (for CORS preflights): the response head.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut response)).await.expect("an answer").expect("read");
    String::from_utf8_lossy(&response[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_and_grants_apply_to_live_and_replayed_events() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total int);
             ALTER TABLE orders REPLICA IDENTITY FULL;
             CREATE TABLE users (id int PRIMARY KEY, name text);",
        )
        .await;
    let keys = tempfile::tempdir().unwrap();
    let secret_file = write_file(keys.path(), "secret", SECRET);
    let stream = unique_name("history");
    let gw = Gateway::start(
        &world,
        &stream,
        None,
        &[
            ("PGEVENTS_JWT_SECRET_FILE", &secret_file),
            ("PGEVENTS_JWT_AUDIENCE", "shop"),
            ("PGEVENTS_CORS_ORIGINS", APP),
            ("PGEVENTS_CLIENT_BUFFER", "300"),
        ],
    )
    .await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;

    // Refusals, each with its reason.
    let none = gw.refused("/events", &[]).await;
    assert_eq!(none.status, 401);
    assert!(none.body.contains("no token"), "{}", none.body);
    assert!(none.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{:?}", none.headers);
    let grant = json!({"pgevents": {"tables": ["public.orders"]}});
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims(grant.clone()),
        &jsonwebtoken::EncodingKey::from_secret(b"not the secret").unwrap(),
    )
    .unwrap();
    let cases = [
        (forged, "bad signature"),
        (
            hs256(SECRET, json!({"sub": "u", "aud": "shop", "exp": now() - 3600, "pgevents": {"tables": ["*"]}})),
            "expired",
        ),
        (
            hs256(SECRET, json!({"sub": "u", "aud": "crm", "exp": now() + 600, "pgevents": {"tables": ["*"]}})),
            "wrong audience",
        ),
        (hs256(SECRET, json!({"sub": "u", "aud": "shop", "pgevents": {"tables": ["*"]}})), "exp claim is missing"),
        ("not.a.token".to_owned(), "malformed"),
    ];
    for (token, reason) in cases {
        let refused = gw.refused("/events", &[("Authorization", &bearer(&token))]).await;
        assert_eq!(refused.status, 401, "{reason}: {}", refused.body);
        assert!(refused.body.contains(reason), "{reason}: {}", refused.body);
        let challenge = refused.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains("invalid_token"), "{challenge}");
    }
    let orders_only = hs256(SECRET, claims(grant.clone()));
    let ungranted = gw.refused("/events?table=public.users", &[("Authorization", &bearer(&orders_only))]).await;
    assert_eq!(ungranted.status, 403);
    assert!(ungranted.body.contains("table=public.users is not granted"), "{}", ungranted.body);
    let no_grant = gw.refused("/events", &[("Authorization", &bearer(&hs256(SECRET, claims(json!({})))))]).await;
    assert_eq!(no_grant.status, 403);
    assert!(no_grant.body.contains("grants no tables"), "{}", no_grant.body);
    assert!(gw.metric("pgevents_gateway_rejected_total{reason=\"unauthorized\"}").await >= 6.0);

    // Granted tables only; the token's sub names the subscriber; ?access_token= for EventSource.
    let mut tables =
        gw.subscribe("/events", &[("Authorization", &bearer(&orders_only)), ("X-Consumer-Id", "ignored")]).await;
    let rows_token =
        hs256(SECRET, claims(json!({"pgevents": {"tables": ["public.*"], "rows": {"customer_id": "42"}}})));
    let mut rows = gw.subscribe(&format!("/events?table=public.orders&access_token={rows_token}"), &[]).await;
    world.pg.execute("INSERT INTO users VALUES (1, 'ann')").await;
    world.pg.execute("INSERT INTO orders VALUES (1, 42, 10), (2, 7, 20)").await;
    world.pg.execute("UPDATE orders SET customer_id = 7 WHERE id = 1").await; // leaves customer 42
    world.pg.execute("UPDATE orders SET total = 21 WHERE id = 2").await; // never customer 42's
    world.pg.execute("DELETE FROM orders WHERE id = 1").await; // customer 7's by now
    world.pg.execute("INSERT INTO orders VALUES (3, 42, 30); DELETE FROM orders WHERE id = 3").await;
    let mut seen = Vec::new();
    while let Some(event) = tables.next(SHORT).await {
        seen.push((event.event.clone(), event.json()["table_name"].as_str().unwrap().to_owned()));
    }
    assert_eq!(seen.len(), 7, "every orders event: {seen:?}");
    assert!(seen.iter().all(|(_, table)| table == "public.orders"), "{seen:?}");
    let summary = |client_events: &[pgevents_testkit::SseMessage]| -> Vec<(String, i64)> {
        client_events.iter().map(|e| (e.event.clone(), e.json()["id"].as_i64().unwrap())).collect()
    };
    let mut live = Vec::new();
    while let Some(event) = rows.next(SHORT).await {
        live.push(event);
    }
    let expected = vec![("insert".to_owned(), 1), ("update".into(), 1), ("insert".into(), 3), ("delete".into(), 3)];
    assert_eq!(summary(&live), expected, "rows whose new or old row is customer 42's");
    let log = gw.process.stderr();
    assert!(
        log.contains("subscriber connected subscriber=\"user-42\""),
        "the token's sub names the subscriber:\n{log}"
    );

    // Replayed from the stream (older than the in-memory feed), the same rows and no others.
    drop((tables, rows));
    world.pg.execute("INSERT INTO orders SELECT i, 1, 0 FROM generate_series(100, 1000) i").await;
    let mut sentinel = gw.subscribe("/events?pk=1001", &[("Authorization", &bearer(&orders_only))]).await;
    world.pg.execute("INSERT INTO orders VALUES (1001, 1, 0)").await;
    sentinel.next(WAIT).await.expect("the gateway has read every row");
    let before = live[0].id.clone().unwrap();
    let before: i64 = before.parse::<i64>().unwrap() - 1;
    let mut replay = gw
        .subscribe(&format!("/events?table=public.orders&access_token={rows_token}&last_event_id={before}"), &[])
        .await;
    let mut replayed = Vec::new();
    while let Some(event) = replay.next(Duration::from_secs(2)).await {
        replayed.push(event);
    }
    assert_eq!(summary(&replayed), expected, "the grant applies to the replay exactly as to live events");
    assert!(gw.metric("pgevents_gateway_replays_total").await >= 1.0, "it was a replay from the stream");

    // CORS: the app's origin may read /events; another may not.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /events HTTP/1.1\r\nHost: gw\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization, last-event-id\r\nConnection: close\r\n\r\n"
        )
    };
    let allowed = raw(gw.addr, &preflight(APP)).await.to_ascii_lowercase();
    assert!(allowed.contains(&format!("access-control-allow-origin: {APP}")), "{allowed}");
    assert!(allowed.contains("last-event-id") && allowed.contains("authorization"), "{allowed}");
    let other = raw(gw.addr, &preflight("https://evil.example")).await.to_ascii_lowercase();
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    let simple = SseClient::connect(gw.addr, &format!("/events?access_token={orders_only}"), &[("Origin", APP)]).await;
    assert_eq!(simple.header("access-control-allow-origin"), Some(APP));

    stop(producer).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_ends_when_its_token_expires() {
    let world = World::new().await;
    let keys = tempfile::tempdir().unwrap();
    let secret_file = write_file(keys.path(), "secret", SECRET);
    let stream = unique_name("history");
    let gw = Gateway::start(&world, &stream, None, &[("PGEVENTS_JWT_SECRET_FILE", &secret_file)]).await;
    // Expired 27 s ago: still within the 30 s tolerance for clock differences, for 3 s more.
    let token = hs256(SECRET, json!({"sub": "short", "exp": now() - 27, "pgevents": {"tables": ["*"]}}));
    let mut client = gw.subscribe(&format!("/events?access_token={token}"), &[]).await;
    // The README's shell way to make a token works too.
    let script = Command::new("scripts/gateway-token.sh")
        .args([secret_file.as_str(), "from-shell", r#"["public.*"]"#, r#"{"customer_id": "42"}"#, "60"])
        .output()
        .expect("scripts/gateway-token.sh");
    assert!(script.status.success(), "{}", String::from_utf8_lossy(&script.stderr));
    let shell_token = String::from_utf8(script.stdout).unwrap();
    let mut from_shell = gw.subscribe("/events", &[("Authorization", &bearer(shell_token.trim()))]).await;
    assert!(from_shell.next(Duration::from_millis(300)).await.is_none());
    assert!(gw.process.stderr().contains("subscriber=\"from-shell\""), "{}", gw.process.stderr());
    let last = client.next(Duration::from_secs(10)).await.expect("a last event before the end");
    assert_eq!(last.event, "expired");
    assert!(client.closed_within(Duration::from_secs(5)).await, "then the stream ends");
    assert!(gw.process.stderr().contains("the token expired"));
    gw.stop().await;
}

/// `openssl` with these arguments, in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl").args(args).current_dir(dir).status().expect("openssl");
    assert!(status.success(), "openssl {args:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_and_es256_tokens_are_checked_with_the_public_key() {
    let world = World::new().await;
    let keys = tempfile::tempdir().unwrap();
    openssl(keys.path(), &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "rsa.pem"]);
    openssl(keys.path(), &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa.pub"]);
    openssl(keys.path(), &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.pem"]);
    openssl(keys.path(), &["pkey", "-in", "ec.pem", "-pubout", "-out", "ec.pub"]);
    let read = |name: &str| std::fs::read(keys.path().join(name)).unwrap();
    let grant = json!({"sub": "signed", "exp": now() + 600, "pgevents": {"tables": ["*"]}});
    for (public, private, algorithm) in
        [("rsa.pub", "rsa.pem", jsonwebtoken::Algorithm::RS256), ("ec.pub", "ec.pem", jsonwebtoken::Algorithm::ES256)]
    {
        let stream = unique_name("history");
        let public_file = keys.path().join(public).display().to_string();
        let gw = Gateway::start(&world, &stream, None, &[("PGEVENTS_JWT_PUBLIC_KEY_FILE", &public_file)]).await;
        let key = match algorithm {
            jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&read(private)).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_ec_pem(&read(private)).unwrap(),
        };
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &grant, &key).unwrap();
        gw.subscribe("/events", &[("Authorization", &bearer(&token))]).await;
        // A token signed with the public key's bytes as an HS256 secret must not pass.
        let confused = hs256(&read(public), grant.clone());
        let refused = gw.refused("/events", &[("Authorization", &bearer(&confused))]).await;
        assert_eq!(refused.status, 401, "{algorithm:?}");
        assert!(refused.body.contains("HS256 is not accepted"), "{}", refused.body);
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_settings_are_refused_or_warned_about_at_start() {
    let world = World::new().await;
    let keys = tempfile::tempdir().unwrap();
    let secret_file = write_file(keys.path(), "secret", SECRET);
    let bad_key =
        write_file(keys.path(), "bad.pem", b"-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n");
    let base = |extra: &[(&str, &str)]| {
        let mut env = vec![
            ("RABBITMQ_URL".to_owned(), pgevents_testkit::amqp_url()),
            ("RABBITMQ_EXCHANGE".to_owned(), world.exchange.clone()),
            ("PGEVENTS_HISTORY_STREAM".to_owned(), unique_name("history")),
            ("PGEVENTS_LISTEN".to_owned(), pgevents_testkit::free_local_addr().to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    for (extra, expected) in [
        (
            vec![("PGEVENTS_JWT_SECRET_FILE", secret_file.as_str()), ("PGEVENTS_CORS_ORIGINS", "*")],
            "'*' is not allowed with authentication",
        ),
        (vec![("PGEVENTS_CORS_ORIGINS", "https://app.example.com/path")], "is not an origin"),
        (vec![("PGEVENTS_JWT_PUBLIC_KEY_FILE", bad_key.as_str())], "neither an RSA nor an EC"),
        (vec![("PGEVENTS_JWT_SECRET_FILE", "/nonexistent/secret")], "cannot read --jwt-secret-file"),
    ] {
        let mut process = PgEventsProcess::spawn(&["serve"], &base(&extra));
        let code = process.wait(WAIT).await;
        let log = process.stderr();
        assert_eq!(code, Some(1), "{log}");
        assert!(log.contains(expected), "{expected}: {log}");
    }
    let port = pgevents_testkit::free_local_addr().port().to_string();
    let mut open = PgEventsProcess::spawn(&["serve"], &base(&[("PGEVENTS_LISTEN", &format!("0.0.0.0:{port}"))]));
    open.wait_for_log("without authentication", WAIT).await;
    open.terminate();
    assert_eq!(open.wait(WAIT).await, Some(0));
}
