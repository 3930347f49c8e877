//! `cargo bench -p pgevents-bench [-- --scenarios batched,single --changes 200000 --json out.json]`
//!
//! Builds the release `pgevents` binary, then runs each scenario on a throwaway PostgreSQL
//! cluster and the local RabbitMQ, and prints the table (see `pgevents_bench`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pgevents_bench::{release_binary, report, scenario, BenchArgs};

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let binary = match &args.binary {
        Some(path) => path.clone(),
        None => release_binary()?,
    };
    let mut results = Vec::new();
    for scenario in &args.scenarios {
        let result =
            scenario::run(&args, &binary, *scenario).await.with_context(|| format!("scenario {scenario:?}"))?;
        report::print(std::slice::from_ref(&result));
        results.push(result);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
