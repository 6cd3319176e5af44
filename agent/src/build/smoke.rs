//! The smoke test a new build must pass before any supervised process runs it: start its
//! llama-server on a free loopback port with a small model, generate a few tokens, stop it.

use super::BuildError;
use crate::models::ModelFolders;
use crate::readiness;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TOKENS: u32 = 4;
const LOAD_TIMEOUT: Duration = Duration::from_secs(180);

/// The model for the smoke test: the configured one, else the smallest GGUF in the model folders.
pub fn pick_model(configured: Option<&Path>, models: &ModelFolders) -> Result<PathBuf, BuildError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(BuildError::SmokeTest(format!(
                "[build] smoke_model {} does not exist",
                path.display()
            )))
        };
    }
    models
        .list()
        .into_iter()
        .filter(|m| m.gguf.is_some() && m.file_name.ends_with(".gguf"))
        .min_by_key(|m| m.size_bytes)
        .map(|m| PathBuf::from(m.path))
        .ok_or_else(|| {
            BuildError::SmokeTest(
                "no GGUF model in this agent's model folders to smoke-test the build with: add a small one or set [build] smoke_model in agent.toml".into(),
            )
        })
}

fn free_port() -> Result<u16, BuildError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BuildError::SmokeTest(format!("no free port: {e}")))
}

/// Runs the smoke test; returns what it did, for the report.
pub async fn run(llama_server: &Path, model: &Path) -> Result<String, BuildError> {
    let started = Instant::now();
    let port = free_port()?;
    let mut child = Command::new(llama_server)
        .args(["-m"])
        .arg(model)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-c",
            "256",
            "-np",
            "1",
            "-t",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            BuildError::SmokeTest(format!("cannot execute {}: {e}", llama_server.display()))
        })?;
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let mut pumps = Vec::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tail = tail.clone();
        pumps.push(tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == 15 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        }));
    }
    let last_output = || {
        tail.lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    };
    let result = async {
        let deadline = Instant::now() + LOAD_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("llama-server exited during start-up ({status})"));
            }
            if readiness::health_ok("127.0.0.1", port).await {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "llama-server did not load {} within {}s",
                    model.display(),
                    LOAD_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let body = serde_json::json!({
            "prompt": "Once upon a time",
            "n_predict": TOKENS,
            "temperature": 0,
        })
        .to_string();
        let (status, reply) = readiness::http_call(
            "127.0.0.1",
            port,
            "POST",
            "/completion",
            Some(&body),
            Duration::from_secs(120),
        )
        .await
        .ok_or_else(|| "POST /completion got no answer".to_string())?;
        let json: serde_json::Value = serde_json::from_str(&reply)
            .map_err(|e| format!("POST /completion answered {status} with no JSON ({e})"))?;
        let predicted = json
            .get("tokens_predicted")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if status != 200 || predicted == 0 {
            return Err(format!(
                "POST /completion answered {status} and generated {predicted} tokens: {}",
                reply.chars().take(300).collect::<String>()
            ));
        }
        Ok(predicted)
    }
    .await;
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    // The last lines (why it exited) are only complete once both pipes reached their end.
    for pump in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    }
    match result {
        Ok(tokens) => Ok(format!(
            "generated {tokens} tokens with {} in {:.1}s",
            model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            started.elapsed().as_secs_f64()
        )),
        Err(reason) => Err(BuildError::SmokeTest(format!(
            "{reason}; last output:\n{}",
            last_output()
        ))),
    }
}
