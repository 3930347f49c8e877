//! `pgevents`: the single binary. Parses the command line, sets up logging and signal handling,
//! and hands over to the subcommand.

mod cli;
mod commands;
mod config_file;
mod logging;
mod pg_args;
mod pretty_json;
mod secret_arg;
mod signals;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// mimalloc instead of glibc's allocator: profiling the producer showed a fifth of its CPU time
/// in glibc malloc/free (events, AMQP frames and batches are many short-lived allocations).
/// Built without transparent huge pages (the crate's `no_thp` feature): with them, a transaction
/// held until its commit faulted in and zeroed whole 2 MiB pages, a tenth of the producer's CPU
/// in a profile, and its peak RSS fell from 57-67 to 42-46 MiB without them (README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = config_file::apply(&args) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(args);
    logging::init(cli.log_format);
    // rustls has two crypto providers linked in; pick one for anything using the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let shutdown = signals::shutdown_token()?;
    match command {
        Command::Producer(args) => commands::producer::run(args, shutdown).await,
        Command::ConsumerDebug(args) => commands::consumer_debug::run(args, shutdown).await,
        Command::Serve(args) => commands::serve::run(args, shutdown).await,
        Command::Rules(cli::RulesCommand::Install(args)) => commands::rules::install(args).await,
        Command::Rules(cli::RulesCommand::Check(args)) => match commands::rules::check(args).await? {
            true => Ok(()),
            false => {
                Err(anyhow::anyhow!("some rules cannot run (above); fix them and run `pgevents rules check` again"))
            }
        },
        Command::Worker(args) => commands::worker::run_worker(args, shutdown).await,
        Command::ActionRunner(args) => commands::worker::run_action_runner(args, shutdown).await,
        Command::RequeueDead(args) => commands::worker::requeue_dead(args).await,
        Command::Snapshot(args) => commands::snapshot::run(args).await,
        Command::Check(args) => match commands::check::run(args).await? {
            true => Ok(()),
            false => Err(anyhow::anyhow!("the checks above failed; fix them and run `pgevents check` again")),
        },
    }
}
