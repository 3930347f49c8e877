//! The decode limit: a plain replication client (`pg_recvlogical`) that discards what it
//! receives, draining a slot up to a position. Nothing that reads the slot can be faster.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pgevents_testkit::{pg_bin_dir, PgCluster};

use crate::workload::PUBLICATION;

/// Drains `slot` up to `end_lsn` with pgoutput's options as the producer sets them; returns how
/// long it took.
pub async fn drain(pg: &PgCluster, slot: &str, end_lsn: &str) -> anyhow::Result<Duration> {
    let program = pg_bin_dir().join("pg_recvlogical");
    let started = Instant::now();
    let output = tokio::process::Command::new(&program)
        .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "-d", "postgres"])
        .args(["--slot", slot, "--start", "--no-loop", "-E", end_lsn, "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", &format!("publication_names={PUBLICATION}"), "-o", "messages=true"])
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {}", program.display()))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("pg_recvlogical failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(elapsed)
}
