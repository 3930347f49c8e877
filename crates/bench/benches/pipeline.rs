//! `cargo bench -p pgevents-bench [-- --scenarios batched,single --queue-types classic,quorum,stream --changes 200000 --json out.json]`
//!
//! Builds the release `pgevents` binary, then runs each scenario on a throwaway PostgreSQL
//! cluster and the local RabbitMQ, and prints the table (see `pgevents_bench`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pgevents_bench::{binary_or_release, report, run_main, scenario, BenchArgs};

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let binary = binary_or_release(args.binary.as_deref())?;
    let mut results = Vec::new();
    for scenario in &args.scenarios {
        let measured =
            scenario::run(&args, &binary, *scenario).await.with_context(|| format!("scenario {scenario:?}"))?;
        report::print(&measured);
        results.extend(measured);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    run_main(run(BenchArgs::parse()))
}
