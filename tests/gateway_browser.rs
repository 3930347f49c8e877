//! `pgevents serve` with a real browser: headless Chromium (driven over WebDriver by
//! chromedriver) runs an `EventSource` on a page of another origin, with a token in the query
//! string as browsers must, and reconnects on its own across a restart of the gateway, resuming
//! exactly where it left off. The gateway's own live-tail page is tried too.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::gateway::{hs256, now, Gateway};
use common::{stop, World, WAIT};
use fantoccini::{Client, ClientBuilder, Locator};
use pgevents_testkit::{free_local_addr, unique_name, wait_for};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const SECRET: &[u8] = b"browser test secret, 32 bytes ok";

/// chromedriver and a headless Chromium session.
struct Browser {
    client: Client,
    _driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_local_addr().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            }
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_for("chromedriver and Chromium to start", WAIT, || {
            let (url, capabilities) = (url.clone(), capabilities.clone());
            async move {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector).capabilities(capabilities).connect(&url).await.ok()
            }
        })
        .await;
        Browser { client, _driver: driver }
    }

    /// Evaluates a JavaScript expression in the page.
    async fn eval(&self, expression: &str) -> Value {
        self.client.execute(&format!("return {expression};"), vec![]).await.expect("run JavaScript in the page")
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Serves `html` at every path of `addr`: an origin of its own (another port than the gateway's).
async fn serve_page(addr: SocketAddr, html: String) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind the page's origin");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    })
}

/// Inserts of the page's EventSource so far: (event id, row id).
async fn received(browser: &Browser) -> Vec<(String, i64)> {
    let list = browser.eval("window.received").await;
    list.as_array()
        .map(|items| {
            items.iter().map(|i| (i["id"].as_str().unwrap_or("").to_owned(), i["row"].as_i64().unwrap_or(-1))).collect()
        })
        .unwrap_or_default()
}

async fn wait_for_rows(browser: &Browser, rows: usize) -> Vec<(String, i64)> {
    wait_for(&format!("{rows} events in the browser"), Duration::from_secs(60), || async {
        let got = received(browser).await;
        (got.len() >= rows).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_on_another_origin_follows_the_feed_across_a_gateway_restart() {
    let world = World::new().await;
    world.pg.execute("CREATE TABLE users (id int PRIMARY KEY, name text)").await;
    let keys = tempfile::tempdir().unwrap();
    let secret_file = keys.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let secret_file = secret_file.display().to_string();
    let token = hs256(SECRET, json!({"sub": "browser", "exp": now() + 3600, "pgevents": {"tables": ["public.users"]}}));

    // The page's origin must be known before the gateway starts (CORS), so bind it first.
    let page_addr = free_local_addr();
    let stream = unique_name("history");
    let mut gw = Gateway::start(
        &world,
        &stream,
        None,
        &[
            ("PGEVENTS_JWT_SECRET_FILE", &secret_file),
            ("PGEVENTS_CORS_ORIGINS", &format!("http://{page_addr}")),
            ("PGEVENTS_SSE_RETRY_MS", "300"),
        ],
    )
    .await;
    let producer = world.producer(&[("PGEVENTS_HISTORY_STREAM", &stream)]).await;
    let html = format!(
        r#"<!doctype html><meta charset="utf-8"><title>app</title><script>
window.received = []; window.opens = 0; window.errors = 0;
const source = new EventSource("http://{gateway}/events?table=public.users&access_token={token}");
source.onopen = () => window.opens++;
source.onerror = () => window.errors++;
source.addEventListener("insert", e => window.received.push({{id: e.lastEventId, row: JSON.parse(e.data).id}}));
</script>"#,
        gateway = gw.addr
    );
    let page = serve_page(page_addr, html).await;

    let browser = Browser::start().await;
    browser.client.goto(&format!("http://{page_addr}/")).await.expect("open the page");
    wait_for("the EventSource to open", WAIT, || async {
        (browser.eval("window.opens").await.as_i64() >= Some(1)).then_some(())
    })
    .await;
    world
        .pg
        .execute(
            "INSERT INTO users VALUES (1, 'a'); INSERT INTO users VALUES (2, 'b'); INSERT INTO users VALUES (3, 'c')",
        )
        .await;
    let first = wait_for_rows(&browser, 3).await;
    assert_eq!(first.iter().map(|(_, row)| *row).collect::<Vec<_>>(), vec![1, 2, 3]);

    // The gateway restarts; rows written meanwhile arrive once the browser reconnects by itself
    // (it sends Last-Event-ID), then live ones, each exactly once and in order.
    gw.process.terminate();
    assert_eq!(gw.process.wait(WAIT).await, Some(0));
    world.pg.execute("INSERT INTO users VALUES (4, 'd'); INSERT INTO users VALUES (5, 'e')").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    gw.restart().await;
    world.pg.execute("INSERT INTO users VALUES (6, 'f')").await;
    let all = wait_for_rows(&browser, 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = if received(&browser).await.len() > all.len() { received(&browser).await } else { all };
    assert_eq!(all.iter().map(|(_, row)| *row).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6], "{all:?}");
    let ids: Vec<i64> = all.iter().map(|(id, _)| id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids increase: {ids:?}");
    assert!(browser.eval("window.opens").await.as_i64() >= Some(2), "the browser reconnected by itself");
    let log = gw.process.stderr();
    assert!(log.contains(&format!("resume=After({})", ids[2])), "it resumed after its last event:\n{log}");

    // The gateway's own live-tail page, in the same browser.
    browser.client.goto(&format!("http://{}/", gw.addr)).await.expect("open the live tail");
    browser.client.find(Locator::Css("input[name=table]")).await.unwrap().send_keys("public.users").await.unwrap();
    browser.client.find(Locator::Css("input[name=access_token]")).await.unwrap().send_keys(&token).await.unwrap();
    browser.client.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for("the live tail to connect", WAIT, || async {
        let status = browser.client.find(Locator::Id("status")).await.ok()?.text().await.ok()?;
        (status == "live").then_some(())
    })
    .await;
    world.pg.execute("INSERT INTO users VALUES (7, 'tail')").await;
    // One expression: a row may be in the table a moment before its cells are.
    let shown = wait_for("the event in the live tail", WAIT, || async {
        let text = browser.eval("(document.querySelector('#events tr td.data') || {}).textContent || null").await;
        text.as_str().filter(|text| !text.is_empty()).map(str::to_owned)
    })
    .await;
    assert!(shown.contains("\"tail\""), "{shown}");

    browser.close().await;
    page.abort();
    stop(producer).await;
    gw.stop().await;
}
