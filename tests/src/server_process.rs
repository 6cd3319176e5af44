//! What every test server process shares: a log file of its own, and a wait until it answers
//! `GET /health` (or dies, or runs out of time, each failing the test with the log's tail).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Start `cmd` with stdin closed and stdout and stderr into a fresh log file at `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path, what: &str) -> Child {
    let log_file = std::fs::File::create(log).expect("create server log");
    cmd.stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone log handle"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

/// The last `lines` lines of a log file.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How to wait for one server: its name in messages, its log, and how often to ask.
pub struct Readiness<'a> {
    pub what: &'a str,
    pub log: &'a PathBuf,
    pub tail_lines: usize,
    pub poll: Duration,
    pub timeout: Duration,
}

impl Readiness<'_> {
    /// Poll `{url}/health` until it answers 2xx; panic with the log's tail if the process exits
    /// first or the time runs out.
    pub async fn wait(&self, child: &mut Child, url: &str) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} exited early ({status}):\n{}",
                    self.what,
                    log_tail(self.log, self.tail_lines)
                );
            }
            if let Ok(r) = client.get(format!("{url}/health")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "{} not ready after {:?}:\n{}",
                    self.what,
                    self.timeout,
                    log_tail(self.log, self.tail_lines)
                );
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
