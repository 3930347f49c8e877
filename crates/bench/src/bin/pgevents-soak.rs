//! `cargo run -p pgevents-bench --bin pgevents-soak -- --rounds 100`: randomized faults under
//! load (see `pgevents_bench::soak`).

use std::process::ExitCode;

use clap::Parser;
use pgevents_bench::soak::{run, SoakArgs};

fn main() -> ExitCode {
    let args = SoakArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let binary = match &args.binary {
            Some(path) => path.clone(),
            None => pgevents_bench::release_binary()?,
        };
        run(args, binary).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
