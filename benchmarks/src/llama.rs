//! Real `llama-server` processes for the benchmark scenarios (binaries and models from
//! `scripts/setup`: `LLAMA_SERVER`, `TIGHTWAD_MODELS`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LlamaError {
    #[error("{0} is not set: run eval \"$(scripts/setup)\" first")]
    MissingEnv(&'static str),
    #[error("{0} does not exist")]
    Missing(String),
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loopback port: {0}")]
    Port(std::io::Error),
    #[error("llama-server for {model} {what}; last log lines:\n{log}")]
    NotReady {
        model: String,
        what: String,
        log: String,
    },
}

/// Where llama.cpp and the generated models are.
#[derive(Debug, Clone)]
pub struct LlamaEnv {
    pub llama_server: PathBuf,
    pub models: PathBuf,
}

impl LlamaEnv {
    pub fn from_env() -> Result<Self, LlamaError> {
        let var = |name: &'static str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or(LlamaError::MissingEnv(name))
        };
        let env = LlamaEnv {
            llama_server: var("LLAMA_SERVER")?,
            models: var("TIGHTWAD_MODELS")?,
        };
        if !env.llama_server.exists() {
            return Err(LlamaError::Missing(env.llama_server.display().to_string()));
        }
        Ok(env)
    }

    pub fn model(&self, name: &str) -> Result<PathBuf, LlamaError> {
        let path = self.models.join(name);
        if path.exists() {
            Ok(path)
        } else {
            Err(LlamaError::Missing(path.display().to_string()))
        }
    }
}

/// How one server is started.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub threads: u32,
    pub slots: u32,
    pub ctx: u32,
}

impl ServerSpec {
    /// A target able to verify up to 5 draft tokens in one pass: `-np 6 --kv-unified -c 16384`.
    pub fn target() -> Self {
        ServerSpec {
            threads: 1,
            slots: 6,
            ctx: 16384,
        }
    }

    /// A draft: two slots (a pipelined proxy may have a prefetch in flight).
    pub fn draft() -> Self {
        ServerSpec {
            threads: 1,
            slots: 2,
            ctx: 8192,
        }
    }
}

/// A running llama-server, killed when dropped.
pub struct RunningServer {
    child: Child,
    url: String,
    log: PathBuf,
    model: String,
}

fn free_port() -> Result<u16, LlamaError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(LlamaError::Port)
}

impl RunningServer {
    /// Start `model` with `spec` (always `--cache-ram 0 --metrics`, see ARCHITECTURE.md) and wait
    /// until `/health` says it is ready.
    pub async fn start(
        env: &LlamaEnv,
        model: &Path,
        spec: &ServerSpec,
    ) -> Result<RunningServer, LlamaError> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("tightwad-bench-llama-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|source| LlamaError::Spawn {
            binary: log.display().to_string(),
            source,
        })?;
        let log_err = log_file.try_clone().map_err(|source| LlamaError::Spawn {
            binary: log.display().to_string(),
            source,
        })?;
        let child = Command::new(&env.llama_server)
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-t", &spec.threads.to_string()])
            .args(["-np", &spec.slots.to_string()])
            .args(["-c", &spec.ctx.to_string()])
            .args([
                "--kv-unified",
                "--cache-ram",
                "0",
                "--metrics",
                "--no-webui",
                // A patched target verifies client drafts of up to 8 tokens in one pass.
                "--spec-draft-n-max",
                "8",
            ])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|source| LlamaError::Spawn {
                binary: env.llama_server.display().to_string(),
                source,
            })?;
        let mut server = RunningServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            model: model.display().to_string(),
        };
        server.wait_ready(Duration::from_secs(120)).await?;
        Ok(server)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), LlamaError> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.not_ready(format!("exited early ({status})")));
            }
            if let Ok(r) = http.get(format!("{}/health", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(format!("not ready after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn not_ready(&self, what: String) -> LlamaError {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        LlamaError::NotReady {
            model: self.model.clone(),
            what,
            log: lines[lines.len().saturating_sub(20)..].join("\n"),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Already gone is fine: there is nothing else to clean up.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
