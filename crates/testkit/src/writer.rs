//! The write load of the delivery and fault tests and of the soak: rows with increasing ids
//! into tables `a` (even ids) and `b` (odd ids), mostly one row per transaction and every tenth
//! transaction five rows. It survives the database going away: it reconnects and retries, and a
//! retried transaction that had in fact committed (its key exists) counts as written.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// The SQL creating the two tables.
pub const AB_TABLES: &str = "CREATE TABLE a (id bigint PRIMARY KEY); CREATE TABLE b (id bigint PRIMARY KEY);";

async fn connect(port: u16) -> Client {
    loop {
        let config = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
        if let Ok((client, connection)) = tokio_postgres::connect(&config, NoTls).await {
            tokio::spawn(connection);
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes ids `first..=last` while `running`, storing the highest committed id in `written`.
pub async fn write_ab_rows(port: u16, first: i64, last: i64, running: &AtomicBool, written: &AtomicI64) {
    let mut client = connect(port).await;
    let mut next = first;
    while next <= last && running.load(Ordering::SeqCst) {
        let n = if next % 10 == 0 { 5 } else { 1 };
        let end = (next + n - 1).min(last);
        let mut sql = String::from("BEGIN;");
        for k in next..=end {
            sql.push_str(&format!("INSERT INTO {} VALUES ({k});", if k % 2 == 0 { "a" } else { "b" }));
        }
        sql.push_str("COMMIT;");
        match client.batch_execute(&sql).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {}
            Err(_) => {
                client = connect(port).await;
                continue;
            }
        }
        written.store(end, Ordering::SeqCst);
        next = end + 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Writes ids `1..=rows` (the whole sequence, whatever happens to the database meanwhile).
pub async fn write_ab_sequence(port: u16, rows: i64) {
    write_ab_rows(port, 1, rows, &AtomicBool::new(true), &AtomicI64::new(0)).await;
}
