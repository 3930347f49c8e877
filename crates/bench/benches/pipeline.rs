//! `cargo bench -p pgevents-bench [-- --scenarios batched,single --changes 200000 --json out.json]`
//!
//! Builds the release `pgevents` binary, then runs each scenario on a throwaway PostgreSQL
//! cluster and the local RabbitMQ, and prints the table (see `pgevents_bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use pgevents_bench::{report, scenario, BenchArgs};

/// The release binary, built now so that the numbers are of the current code. It has a target
/// directory of its own: built alone, `pgevents` resolves its dependencies' features differently
/// than this benchmark does, and sharing a directory would rebuild both every time.
fn release_binary() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = target.join("bench-binary");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "-p", "pgevents", "--target-dir"])
        .arg(&target)
        .current_dir(&root)
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p pgevents failed");
    }
    Ok(target.join("release").join("pgevents"))
}

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
