//! The `tightwad proxy` BINARY as a user runs it: `tightwad -c tightwad.toml proxy` ([`ProxyProcess::start`]),
//! or in its own working folder (where it looks for `./tightwad.toml`) with its own environment
//! ([`ProxyProcess::spawn`]); its log in a file the test reads while it runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::get_json;
use crate::test_env::{free_port, workspace_binary};

/// A running `tightwad proxy`; killed when dropped.
pub struct ProxyProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, where the test reaches it.
    pub url: String,
    pub log: PathBuf,
}

/// The `tightwad` binary cargo built beside the tests (or `TIGHTWAD_BIN`).
pub fn tightwad_binary() -> PathBuf {
    workspace_binary("tightwad", "TIGHTWAD_BIN")
}

/// `tightwad ARGS` run to its end in `dir` with `env` added (nothing else of the test's
/// `TIGHTWAD_*` environment): its exit status, stdout and stderr.
pub fn run_tightwad(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(tightwad_binary());
    command.current_dir(dir).args(args);
    scrub(&mut command);
    command.envs(env.iter().copied());
    command.output().expect("tightwad runs")
}

/// No `TIGHTWAD_*` variable of the test's own environment reaches the binary: each test says
/// which it sets.
fn scrub(command: &mut Command) {
    for (name, _) in std::env::vars() {
        if name.starts_with("TIGHTWAD_") {
            command.env_remove(name);
        }
    }
}

impl ProxyProcess {
    /// Start `tightwad ARGS` (ARGS include `proxy`) in `dir` with `env`; `port` is where the test
    /// expects it to listen (the args or the config say so).
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)], port: u16) -> ProxyProcess {
        let log = dir.join(format!("proxy-{port}.log"));
        let file = std::fs::File::create(&log).expect("proxy log");
        let mut command = Command::new(tightwad_binary());
        command.current_dir(dir).args(args);
        scrub(&mut command);
        command
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let child = command.spawn().expect("tightwad proxy starts");
        ProxyProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// `tightwad -c CONFIG proxy --listen 127.0.0.1:PORT` on a free port, waited for until its
    /// `/health` answers 200 (every pairing's target reachable).
    pub async fn start(config: &Path, log: PathBuf) -> ProxyProcess {
        let port = free_port();
        let file = std::fs::File::create(&log).expect("proxy log file");
        let child = Command::new(workspace_binary("tightwad", "TIGHTWAD_BIN"))
            .arg("-c")
            .arg(config)
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("proxy log file"))
            .stderr(file)
            .spawn()
            .expect("tightwad proxy starts");
        let mut proxy = ProxyProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        proxy.wait_healthy(Duration::from_secs(60)).await;
        proxy
    }

    async fn wait_healthy(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the proxy exited ({status}):\n{}", self.log_text());
            }
            if let Ok(r) = reqwest::get(format!("{}/health", self.url)).await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the proxy at {} was not healthy within {limit:?}:\n{}",
                self.url,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// POST JSON to one of its routes: (status, body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        crate::http::post_json(&format!("{}{path}", self.url), body).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (panics with the log after `timeout`).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the proxy never logged {needle:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `/v1/models` answers.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/v1/models", self.url)).await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("the proxy exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the proxy at {} did not answer:\n{}",
                self.url,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its exit status, waiting at most `timeout`.
    pub async fn exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Send SIGHUP (what `systemctl reload` and `kill -HUP` do).
    pub fn hangup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGHUP delivered");
    }

    /// `GET /v1/tightwad/stats`.
    pub async fn stats(&self) -> serde_json::Value {
        get_json(&format!("{}/v1/tightwad/stats", self.url)).await
    }

    /// The model ids `/v1/models` lists.
    pub async fn models(&self) -> Vec<String> {
        let v: serde_json::Value = get_json(&format!("{}/v1/models", self.url)).await;
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
