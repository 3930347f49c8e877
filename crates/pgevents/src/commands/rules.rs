//! `pgevents rules install`: create or upgrade the rule tables; `pgevents rules check`: report
//! every rule that cannot run, and why.

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

/// Loads every rule and checks it as the worker will run it; `Ok(false)` when one cannot run.
pub async fn check(args: RulesInstallArgs) -> anyhow::Result<bool> {
    let settings = args.pg.connect_config("pgevents rules")?;
    let mut client = connect_driven(&settings, "rules check").await?;
    let rules = pgevents_rules::load(&mut client).await.context("cannot read the rules")?;
    let sessions = pgevents_rules::OwnerSessions::new(settings.clone(), 1);
    let rules = pgevents_rules::validate(rules, &sessions, &mut pgevents_rules::Checked::default()).await;
    let problems = rules.problems();
    let total = rules.work_item_count() + rules.actions().count();
    for (what, problem) in &problems {
        println!("FAIL  {what}: {problem}");
    }
    if problems.is_empty() {
        println!("all {total} rules can run");
    } else {
        println!("{} of {total} rules cannot run", problems.len());
    }
    Ok(problems.is_empty())
}
