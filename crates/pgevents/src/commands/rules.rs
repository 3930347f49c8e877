//! `pgevents rules install`: create or upgrade the rule tables.

use anyhow::Context;
use pgevents_pg::connect_driven;

use crate::cli::RulesInstallArgs;

pub async fn install(args: RulesInstallArgs) -> anyhow::Result<()> {
    let settings = args.pg.connect_config("pgevents rules")?;
    let mut client = connect_driven(&settings, "rules install").await?;
    let report = pgevents_rules::install(&mut client).await.context("pgevents rules install failed")?;
    if report.applied.is_empty() {
        println!("rule tables already at version {}; nothing to do", report.to);
    } else {
        for migration in &report.applied {
            println!("applied migration {migration}");
        }
        println!("rule tables now at version {} (were at {})", report.to, report.from);
    }
    Ok(())
}
