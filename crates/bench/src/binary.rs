//! The release `pgevents` binary the benchmark and the soak run, built when they start so that
//! the numbers are of the current code.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

/// Builds `pgevents` in release mode and returns its path. It has a target directory of its own:
/// built alone, `pgevents` resolves its dependencies' features differently than this crate does,
/// and sharing a directory would rebuild both every time.
pub fn release_binary() -> anyhow::Result<PathBuf> {
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

/// The binary given on the command line, or a release build made now.
pub fn binary_or_release(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path.to_path_buf()),
        None => release_binary(),
    }
}

/// Runs a command's main future on a multi-threaded runtime: `error: ...` on stderr and a
/// failure exit code if it fails.
pub fn run_main(main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
