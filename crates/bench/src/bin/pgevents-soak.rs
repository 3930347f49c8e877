//! `cargo run -p pgevents-bench --bin pgevents-soak -- --rounds 100`: randomized faults under
//! load (see `pgevents_bench::soak`).

use std::process::ExitCode;

use clap::Parser;
use pgevents_bench::soak::{run, SoakArgs};
use pgevents_bench::{binary_or_release, run_main};

fn main() -> ExitCode {
    let args = SoakArgs::parse();
    run_main(async {
        let binary = binary_or_release(args.binary.as_deref())?;
        run(args, binary).await
    })
}
