//! The `tightwad proxy` BINARY as a user starts it (`tightwad -c tightwad.toml proxy`), a child
//! of the test, killed when dropped; its log in a file for the failure message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::test_env::{free_port, workspace_binary};

pub struct ProxyProcess {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl ProxyProcess {
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POST JSON to one of its routes: (status, body).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        crate::http::post_json(&format!("{}{path}", self.url), body).await
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/v1/tightwad/stats", self.url))
            .await
            .expect("stats reachable")
            .json()
            .await
            .expect("stats JSON")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
