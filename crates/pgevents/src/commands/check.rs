//! `pgevents check`: validates the producer's settings and connectivity and prints, for each
//! check, what was found and how to fix a problem. Exit status 0 when nothing failed.

use std::io::Write as _;

use pgevents_producer::check::{run_checks, Verdict};

use crate::cli::ProducerArgs;

pub async fn run(args: ProducerArgs) -> anyhow::Result<bool> {
    let config = super::producer::config(&args)?;
    let findings = run_checks(&config).await;
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
