//! The `pgevents` binary as a child process.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The `pgevents` binary next to the test executable (`target/<profile>/pgevents`); build it
/// first (`cargo build -p pgevents`, which the test script does).
pub fn pgevents_binary() -> PathBuf {
    if let Ok(path) = std::env::var("PGEVENTS_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>");
    let bin = profile_dir.join("pgevents");
    assert!(bin.exists(), "{} not found: run `cargo build -p pgevents` before the tests", bin.display());
    bin
}

/// A running `pgevents` process; stderr goes to a log file, stdout to another.
pub struct PgEventsProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl PgEventsProcess {
    /// Starts `pgevents <args>` with these environment variables (nothing inherited that could
    /// leak settings from the developer's shell except PATH and RUST_LOG).
    pub fn spawn(args: &[&str], env: &[(String, String)]) -> PgEventsProcess {
        Self::spawn_binary(&pgevents_binary(), args, env)
    }

    /// As [`PgEventsProcess::spawn`], with another build of the binary (the benchmark uses the
    /// release build).
    pub fn spawn_binary(binary: &std::path::Path, args: &[&str], env: &[(String, String)]) -> PgEventsProcess {
        let dir = tempfile::Builder::new().prefix("pgevents-test-proc-").tempdir().expect("temp dir");
        let stdout = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut cmd = Command::new(binary);
        cmd.args(args).env_clear().stdin(Stdio::null()).stdout(stdout).stderr(stderr).kill_on_drop(true);
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn pgevents");
        PgEventsProcess { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let pid = self.pid();
        if pid != 0 {
            let _ = std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status();
        }
    }

    /// SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGKILL (no chance to clean up).
    pub fn kill(&self) {
        self.signal("KILL");
    }

    /// Waits for the exit; returns the exit code (`None` when killed by a signal). Panics after
    /// `timeout` with the process's stderr.
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for pgevents").code(),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!("pgevents did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
        }
    }

    /// Waits until stderr contains `text` (panics with stderr after `timeout`).
    pub async fn wait_for_log(&mut self, text: &str, timeout: Duration) {
        self.wait_for_logs(text, 1, timeout).await
    }

    /// How many times stderr contains `text` so far.
    pub fn log_count(&self, text: &str) -> usize {
        self.stderr().matches(text).count()
    }

    /// Waits until stderr contains `text` at least `count` times (panics with stderr after
    /// `timeout`): to wait for the next of a line logged before, `log_count` + 1.
    pub async fn wait_for_logs(&mut self, text: &str, count: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.log_count(text) >= count {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgevents exited ({status}) before logging {text:?}; stderr:\n{}", self.stderr());
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("pgevents did not log {text:?} within {timeout:?}; stderr:\n{}", self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
