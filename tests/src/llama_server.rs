//! Real `llama-server` and `ggml-rpc-server` processes: on loopback, or inside a network namespace
//! ([`LlamaServer::start_in_namespace`]), each killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::exactness::Reference;
use crate::http::{merge, post_json};
use crate::netns::Namespace;
use crate::server_process::{log_tail, spawn_logged, Readiness};
use crate::test_env::{free_port, TestEnv};

/// How to start one llama-server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub slots: u32,
    pub threads: u32,
    pub ctx: u32,
    pub extra: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            slots: 1,
            threads: 1,
            ctx: 4096,
            extra: vec![],
        }
    }
}

impl ServerOptions {
    /// The llama-server command line every test server gets (loopback or in a namespace).
    pub fn llama_server_args(
        &self,
        model: &Path,
        host: &str,
        port: u16,
    ) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["-m".into(), model.into()];
        for a in [
            "--host".to_string(),
            host.to_string(),
            "--port".to_string(),
            port.to_string(),
            "-np".to_string(),
            self.slots.to_string(),
            "-t".to_string(),
            self.threads.to_string(),
            "-c".to_string(),
            self.ctx.to_string(),
            // `--cache-ram 0`: llama-server's host-RAM prompt cache swaps slot contents between
            // requests, which makes every verification slot re-process its whole context (5x slower).
            "--kv-unified".to_string(),
            "--cache-ram".to_string(),
            "0".to_string(),
            "--metrics".to_string(),
            "--no-webui".to_string(),
            // Client drafts of up to 16 tokens (the patched server's one-pass verification; a
            // stock server and one without a draft model reserve only output room with it).
            "--spec-draft-n-max".to_string(),
            "16".to_string(),
        ] {
            args.push(a.into());
        }
        args.extend(self.extra.iter().map(Into::into));
        args
    }

    /// A target able to verify `k` draft tokens in one pass (k + 1 slots, one shared KV pool).
    pub fn target(k: u32) -> Self {
        ServerOptions {
            slots: k + 2,
            // k + 1 copies of each context live in the shared KV cache at once.
            ctx: 16384,
            ..Default::default()
        }
    }

    /// A target with llama.cpp's own speculation: `draft_model` loaded on the rpc-server at
    /// `rpc_port` (native pairing, the draft's weights on another "host").
    pub fn native_target(k: u32, draft_model: &Path, rpc_port: u16) -> Self {
        let mut opts = ServerOptions::target(k);
        opts.extra = vec![
            "-md".into(),
            draft_model.display().to_string(),
            "--spec-type".into(),
            "draft-simple".into(),
            "--rpc".into(),
            format!("127.0.0.1:{rpc_port}"),
            "--spec-draft-device".into(),
            "RPC0".into(),
            "-ngld".into(),
            "99".into(),
            // The target's own layers stay on this host: without it llama.cpp offloads them to
            // every device it has, the rpc-server included, and the "target" runs remotely too.
            "--device".into(),
            "none".into(),
        ];
        opts
    }

    /// A natively paired target whose OWN layers sit on the rpc-server at `target_rpc_port` and
    /// whose draft model sits on the one at `draft_rpc_port`: with a relay that adds latency in
    /// front of the first, every forward pass of the target pays that round trip, a SIMULATION of
    /// a target several times slower than its draft (the case native speculation exists for).
    pub fn native_target_on_rpc(
        k: u32,
        draft_model: &Path,
        target_rpc_port: u16,
        draft_rpc_port: u16,
    ) -> Self {
        let mut opts = ServerOptions::target(k);
        opts.extra = [
            "-md",
            &draft_model.display().to_string(),
            "--spec-type",
            "draft-simple",
            "--rpc",
            &format!("127.0.0.1:{target_rpc_port},127.0.0.1:{draft_rpc_port}"),
            // RPC0 and RPC1 are the two rpc-servers in `--rpc` order.
            "--device",
            "RPC0",
            "-ngl",
            "99",
            "--spec-draft-device",
            "RPC1",
            "-ngld",
            "99",
        ]
        .map(str::to_string)
        .to_vec();
        opts
    }
}

/// A running `ggml-rpc-server` (a remote device for llama.cpp), killed when dropped.
pub struct RpcServer {
    child: Child,
    pub port: u16,
}

impl RpcServer {
    pub async fn start(env: &TestEnv) -> RpcServer {
        let binary = env
            .rpc_server
            .clone()
            .unwrap_or_else(|| panic!("RPC_SERVER is not set: run ./scripts/test"));
        let port = free_port();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-t", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "rpc-server did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        RpcServer { child, port }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port llama-servers listen on inside their namespaces (each namespace has its own ports).
pub const NAMESPACE_PORT: u16 = 8080;

/// A running `llama-server`, killed when dropped.
pub struct LlamaServer {
    child: Child,
    pub url: String,
    pub port: u16,
    log: PathBuf,
}

impl LlamaServer {
    pub async fn start(env: &TestEnv, model: &Path, opts: ServerOptions) -> LlamaServer {
        Self::start_on(env, model, opts, free_port()).await
    }

    /// The test models' pairing, each its own llama-server: `target.gguf` verifying drafts of up
    /// to `k` tokens ([`ServerOptions::target`]) and `draft.gguf` with `draft_slots` slots.
    pub async fn target_and_draft(
        env: &TestEnv,
        k: usize,
        draft_slots: u32,
    ) -> (LlamaServer, LlamaServer) {
        let target = Self::start(
            env,
            &env.model("target.gguf"),
            ServerOptions::target(k as u32),
        )
        .await;
        let draft_opts = ServerOptions {
            slots: draft_slots,
            ..Default::default()
        };
        let draft = Self::start(env, &env.model("draft.gguf"), draft_opts).await;
        (target, draft)
    }

    pub async fn start_on(
        env: &TestEnv,
        model: &Path,
        opts: ServerOptions,
        port: u16,
    ) -> LlamaServer {
        let log = std::env::temp_dir().join(format!("tightwad-test-llama-{port}.log"));
        let mut cmd = Command::new(&env.llama_server);
        cmd.args(opts.llama_server_args(model, "127.0.0.1", port));
        let what = env.llama_server.display().to_string();
        Self::run(cmd, &what, format!("http://127.0.0.1:{port}"), port, log).await
    }

    /// Start a llama-server inside `ns`, listening on the namespace's address, with the same flags
    /// as [`LlamaServer::start`]. `ip netns exec` execs the server, so killing the child kills it.
    pub async fn start_in_namespace(
        env: &TestEnv,
        ns: &Namespace,
        model: &Path,
        opts: ServerOptions,
    ) -> LlamaServer {
        let port = NAMESPACE_PORT;
        let log = std::env::temp_dir().join(format!("tightwad-test-llama-{}.log", ns.name));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(&env.llama_server)
            .args(opts.llama_server_args(model, &ns.ip, port));
        let what = format!("llama-server in {}", ns.name);
        Self::run(cmd, &what, format!("http://{}:{port}", ns.ip), port, log).await
    }

    async fn run(mut cmd: Command, what: &str, url: String, port: u16, log: PathBuf) -> Self {
        let mut child = spawn_logged(&mut cmd, &log, what);
        let readiness = Readiness {
            what: "llama-server",
            log: &log,
            tail_lines: 30,
            poll: Duration::from_millis(100),
            timeout: Duration::from_secs(90),
        };
        readiness.wait(&mut child, &url).await;
        LlamaServer {
            child,
            url,
            port,
            log,
        }
    }

    /// The server's whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (up to `limit`) until the server's log contains `needle` (llama.cpp writes its log
    /// from a thread of its own, a little after the event); the whole log then.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the llama-server log within {limit:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 30)
    }

    /// Stop (`SIGSTOP`) or resume (`SIGCONT`) the server: stopped, it accepts connections (the
    /// kernel does) and answers nothing, a hung target as far as the proxy can tell.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Kill the server now (a crash, as far as the proxy can tell).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One counter from its Prometheus `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_at(&self.url, name).await
    }

    /// The target alone: greedy (or seeded) generation through its native endpoint.
    pub async fn complete(&self, prompt: &str, max_tokens: usize, extra: Value) -> Value {
        let mut body = json!({
            "prompt": prompt, "n_predict": max_tokens, "temperature": 0,
            "return_tokens": true, "cache_prompt": true,
        });
        merge(&mut body, extra);
        post_json(&format!("{}/completion", self.url), &body)
            .await
            .1
    }

    /// The target alone through its own OpenAI endpoint.
    pub async fn openai(&self, path: &str, body: &Value) -> Value {
        let (status, v) = post_json(&format!("{}{}", self.url, path), body).await;
        assert_eq!(status, 200, "target answered {status}: {v}");
        v
    }

    /// The target alone, greedy, from a fresh prompt evaluation (no prompt cache), with the top-two
    /// margin at every position.
    pub async fn reference(&self, prompt: Value, max_tokens: usize) -> Reference {
        reference_at(&self.url, prompt, max_tokens).await
    }

    /// A chat rendered with this server's template, as the prompt string the target would see.
    pub async fn render_chat(&self, messages: &Value) -> String {
        let v = self
            .openai("/apply-template", &json!({"messages": messages}))
            .await;
        v["prompt"].as_str().expect("rendered prompt").to_string()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One counter from the Prometheus `/metrics` of the llama-server at `url` (started with
/// `--metrics`), wherever it runs (a namespace, an agent's child).
pub async fn metric_at(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics text");
    tightwad_serve::backend::llamacpp::parse_metric(&text, name)
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// What the llama-server at `url` alone generates, greedy, from a fresh prompt evaluation (no
/// prompt cache), with the top-two margin at every position (see [`crate::compare`]).
pub async fn reference_at(url: &str, prompt: Value, max_tokens: usize) -> Reference {
    let body = json!({
        "prompt": prompt, "n_predict": max_tokens, "temperature": 0, "n_probs": 2,
        "return_tokens": true, "cache_prompt": false,
    });
    let (status, v) = post_json(&format!("{url}/completion"), &body).await;
    assert_eq!(status, 200, "reference failed: {v}");
    let tokens: Vec<u64> = v["tokens"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let probs = v["completion_probabilities"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut margins = Vec::new();
    let mut runner_up = Vec::new();
    for p in &probs {
        let top = p["top_logprobs"].as_array().cloned().unwrap_or_default();
        let lp = |i: usize| {
            top.get(i)
                .and_then(|c| c["logprob"].as_f64())
                .unwrap_or(f64::NEG_INFINITY)
        };
        margins.push(lp(0) - lp(1));
        runner_up.push(
            top.get(1)
                .and_then(|c| c["id"].as_u64())
                .unwrap_or(u64::MAX),
        );
    }
    Reference {
        tokens,
        text: v["content"].as_str().unwrap_or_default().to_string(),
        margins,
        runner_up,
        stop_type: v["stop_type"].as_str().unwrap_or_default().to_string(),
    }
}
