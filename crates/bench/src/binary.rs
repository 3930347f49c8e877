//! The release `pgevents` binary the benchmark and the soak run, built when they start so that
//! the numbers are of the current code.

use std::path::PathBuf;

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
