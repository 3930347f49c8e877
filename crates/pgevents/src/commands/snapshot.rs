//! `pgevents snapshot`: asks for backfills (`--table`), shows them (`--status`), cancels one
//! (`--cancel`), through the SQL functions, with the rights of the role it logs in as.

use std::io::Write as _;

use anyhow::Context;
use pgevents_pg::connect_driven;
use pgevents_producer::backfill::requests;

use crate::cli::SnapshotArgs;

pub async fn run(args: SnapshotArgs) -> anyhow::Result<()> {
    let settings = args.pg.connect_config("pgevents snapshot")?;
    let client = connect_driven(&settings, "snapshot").await?;
    let mut out = std::io::stdout().lock();
    if !args.table.is_empty() {
        let ids = requests::request(&client, &args.table, args.slot.as_deref(), args.r#where.as_deref())
            .await
            .context("cannot ask for the backfill (is the producer's schema installed, and may this role call pgevents.snapshot()?)")?;
        for (id, table) in ids.iter().zip(&args.table) {
            writeln!(out, "backfill {id} of {table} queued; see it with pgevents snapshot --status")?;
        }
    }
    if let Some(id) = args.cancel {
        let cancelled = requests::cancel(&client, id).await.context("cannot cancel the backfill")?;
        if !cancelled {
            anyhow::bail!("no queued or running backfill {id} that this role may cancel");
        }
        writeln!(out, "backfill {id} cancelled")?;
    }
    if args.status {
        let backfills = requests::status(&client, 50).await.context("cannot read pgevents.backfill")?;
        writeln!(
            out,
            "{:<6} {:<32} {:<9} {:>10} {:>10} {:>9} {:>8} {:>7} {:<16} error",
            "id", "table", "status", "rows", "estimate", "rows/s", "left", "retried", "requested by"
        )?;
        for b in backfills {
            let number = |n: Option<f64>| n.map(|n| format!("{n:.0}")).unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "{:<6} {:<32} {:<9} {:>10} {:>10} {:>9} {:>8} {:>7} {:<16} {}",
                b.id,
                b.table,
                b.status,
                b.rows_done,
                b.rows_estimate.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                number(b.rate),
                b.eta_seconds.map(|s| format!("{s:.0}s")).unwrap_or_else(|| "-".into()),
                b.chunks_retried,
                b.requested_by,
                b.error.as_deref().map(|e| e.escape_debug().to_string()).unwrap_or_default(),
            )?;
        }
    }
    Ok(())
}
