//! The end-to-end harness: real `llama-server` processes built by `scripts/setup`, a real proxy on a
//! real port, real HTTP clients.
//!
//! Binaries and models come from the environment `eval "$(scripts/setup)"` prepares
//! (`LLAMA_SERVER`, `TIGHTWAD_MODELS`, `TIGHTWAD_SMOLLM2`); `./scripts/test` sets them. A missing
//! variable fails the test with a message saying so: a test that cannot run must not pass.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_serve::config::{PairingEntry, ProxyConfig};
use tightwad_serve::server::Proxy;

/// Where the real parts are.
pub struct TestEnv {
    pub llama_server: PathBuf,
    pub models: PathBuf,
    pub smollm2: Option<PathBuf>,
    pub rpc_server: Option<PathBuf>,
}

fn required_var(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "{name} is not set: run the tests through ./scripts/test, or eval \"$(scripts/setup)\" first"
        ),
    }
}

pub fn env() -> TestEnv {
    let llama_server = required_var("LLAMA_SERVER");
    let models = required_var("TIGHTWAD_MODELS");
    assert!(
        llama_server.exists(),
        "LLAMA_SERVER={} does not exist",
        llama_server.display()
    );
    assert!(
        models.join("target.gguf").exists(),
        "no target.gguf in TIGHTWAD_MODELS={}",
        models.display()
    );
    TestEnv {
        llama_server,
        models,
        smollm2: std::env::var_os("TIGHTWAD_SMOLLM2").map(PathBuf::from),
        rpc_server: std::env::var_os("RPC_SERVER").map(PathBuf::from),
    }
}

impl TestEnv {
    pub fn model(&self, name: &str) -> PathBuf {
        self.models.join(name)
    }

    /// The real SmolLM2 pair: (target F16, draft Q4_1).
    pub fn smollm2(&self) -> (PathBuf, PathBuf) {
        let dir = self
            .smollm2
            .clone()
            .unwrap_or_else(|| panic!("TIGHTWAD_SMOLLM2 is not set: run ./scripts/test"));
        (
            dir.join("smollm2-target.gguf"),
            dir.join("smollm2-draft.gguf"),
        )
    }
}

/// A free TCP port on loopback (bound then released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

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

    pub async fn start_on(
        env: &TestEnv,
        model: &Path,
        opts: ServerOptions,
        port: u16,
    ) -> LlamaServer {
        let log = std::env::temp_dir().join(format!("tightwad-test-llama-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("create server log");
        let mut cmd = Command::new(&env.llama_server);
        cmd.args(opts.llama_server_args(model, "127.0.0.1", port))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env.llama_server.display()));
        let mut server = LlamaServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        server.wait_ready(Duration::from_secs(90)).await;
        server
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("llama-server exited early ({status}):\n{}", self.log_tail());
            }
            if let Ok(r) = client.get(format!("{}/health", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "llama-server not ready after {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kill the server now (a crash, as far as the proxy can tell).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One counter from its Prometheus `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics text");
        tightwad_serve::backend::llamacpp::parse_metric(&text, name)
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
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
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Merge the keys of `extra` (an object) into `body`.
pub fn merge(body: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (body, extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// POST JSON and return (status, parsed body); a body that is not JSON is returned as a string.
pub async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.expect("response body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// A proxy running in this process on a real loopback port, stopped when dropped.
pub struct RunningProxy {
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    /// The pairing the tests use: speculation pinned on (on these CPU-only machines the
    /// controller would rightly switch it off, and the speculation paths would go untested).
    pub fn entry(target: &str, draft: Option<&str>, draft_tokens: usize) -> PairingEntry {
        let mut entry = PairingEntry::new(target.to_string(), draft.map(str::to_string));
        entry.draft_tokens = draft_tokens;
        entry.name = Some("tightwad-test".into());
        entry.draft_timeout_s = 5;
        entry.target_timeout_s = 30;
        entry.adaptive = false;
        entry
    }

    pub async fn start(target: &str, draft: Option<&str>, draft_tokens: usize) -> RunningProxy {
        Self::start_entry(Self::entry(target, draft, draft_tokens)).await
    }

    pub async fn start_entry(entry: PairingEntry) -> RunningProxy {
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            pairings: vec![entry],
            ..ProxyConfig::default()
        };
        Self::start_with(config).await
    }

    pub async fn start_with(config: ProxyConfig) -> RunningProxy {
        let proxy = Proxy::bind(&config).await.expect("proxy binds");
        tightwad_coordinator::hosts_view::attach(&proxy, &config);
        let addr = proxy.local_addr().expect("proxy address");
        proxy.probe().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = proxy
                .serve(async {
                    let _ = rx.await;
                })
                .await;
        });
        RunningProxy {
            url: format!("http://{addr}"),
            shutdown: Some(tx),
            task,
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post_json(&format!("{}{}", self.url, path), body).await
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/v1/tightwad/stats", self.url))
            .await
            .expect("stats reachable")
            .json()
            .await
            .expect("stats JSON")
    }

    /// A streamed request: the `data:` payloads in order (the last one is `[DONE]`).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = reqwest::Client::new()
            .post(format!("{}{}", self.url, path))
            .json(body)
            .send()
            .await
            .expect("stream request");
        assert_eq!(r.status(), 200);
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        let text = r.text().await.expect("stream body");
        text.split("\n\n")
            .filter_map(|e| {
                let data: Vec<&str> = e
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                (!data.is_empty()).then(|| data.join("\n"))
            })
            .collect()
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// Prompts of every kind: short, long, code, lists, non-Latin scripts, numbers, whitespace.
pub fn prompts() -> Vec<String> {
    let base = [
        "Once upon a time",
        "The capital of France is",
        "def quicksort(arr):",
        "1, 2, 3, 4, 5,",
        "Dear Sir or Madam,",
        "In 1969, the first humans",
        "Ingredients:\n- 2 eggs\n-",
        "The quick brown fox",
        "Q: What is the speed of light?\nA:",
        "东京の天気は",
        "Москва — столица",
        "#include <stdio.h>\nint main() {",
        "SELECT name FROM users WHERE",
        "Translate to German: good morning",
        "🙂 emoji test:",
        "   leading spaces and\ttabs",
        "The mitochondria is the",
        "Step 1: preheat the oven.\nStep 2:",
        "<html><body><h1>",
        "To be or not to be,",
        "import numpy as np\nx = np.",
        "Roses are red, violets are",
        "The theory of relativity states that",
        "Once",
        "a",
        "Write a haiku about the sea:",
        "JSON: {\"name\": \"Ada\", \"age\":",
        "The year 2026 will be remembered for",
        "Chapter 1\n\nIt was a bright cold day in April, and the clocks were striking thirteen.",
        "A long prompt: ",
    ];
    let mut out: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    // Make the last one really long, so prompts span several hundred tokens.
    if let Some(last) = out.last_mut() {
        for i in 0..60 {
            last.push_str(&format!(
                "sentence number {i} talks about lighthouses and tides. "
            ));
        }
    }
    out
}

/// What the target alone produced for a prompt, with what is needed to judge a divergence.
#[derive(Debug, Clone)]
pub struct Reference {
    pub tokens: Vec<u64>,
    pub text: String,
    /// Per position: log-probability gap between the target's first and second choice.
    pub margins: Vec<f64>,
    /// Per position: the target's second choice.
    pub runner_up: Vec<u64>,
    pub stop_type: String,
}

/// Below this top-two gap, two different CPU kernels (one-token decode vs batched verification)
/// may legitimately pick different tokens: the target's own choice is a numerical tie there.
pub const TIE_MARGIN: f64 = 0.05;

/// How a proxied generation compared with the target alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Agreement {
    Identical,
    /// Identical up to this position, where the target's top two choices were a numerical tie and
    /// the proxy took the runner-up; nothing after it can be compared.
    TieAt(usize),
}

impl LlamaServer {
    /// The target alone, greedy, from a fresh prompt evaluation (no prompt cache), with the top-two
    /// margin at every position.
    pub async fn reference(&self, prompt: Value, max_tokens: usize) -> Reference {
        let body = json!({
            "prompt": prompt, "n_predict": max_tokens, "temperature": 0, "n_probs": 2,
            "return_tokens": true, "cache_prompt": false,
        });
        let (status, v) = post_json(&format!("{}/completion", self.url), &body).await;
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

    /// A chat rendered with this server's template, as the prompt string the target would see.
    pub async fn render_chat(&self, messages: &Value) -> String {
        let v = self
            .openai("/apply-template", &json!({"messages": messages}))
            .await;
        v["prompt"].as_str().expect("rendered prompt").to_string()
    }
}

/// Compare a proxied generation with the target alone, token by token. A divergence is allowed only
/// where the target's own top two choices were a numerical tie and the proxy took the runner-up.
pub fn compare(proxy: &[u64], reference: &Reference, label: &str) -> Agreement {
    let first_difference = proxy
        .iter()
        .zip(&reference.tokens)
        .position(|(a, b)| a != b);
    match first_difference {
        None => {
            assert_eq!(
                proxy.len(),
                reference.tokens.len(),
                "{label}: the proxy produced {} tokens, the target alone {}",
                proxy.len(),
                reference.tokens.len()
            );
            Agreement::Identical
        }
        Some(i) => {
            let margin = reference.margins.get(i).copied().unwrap_or(f64::INFINITY);
            assert!(
                margin < TIE_MARGIN,
                "{label}: the proxy diverged from the target at token {i} (proxy {}, target {}) where the target's top-two margin was {margin:.4} — not a numerical tie, a real difference",
                proxy[i],
                reference.tokens[i]
            );
            assert_eq!(
                Some(&proxy[i]),
                reference.runner_up.get(i),
                "{label}: at the tie at token {i} the proxy took neither of the target's two choices"
            );
            Agreement::TieAt(i)
        }
    }
}

/// Assert ties are the rare exception they must be (a systematic error would diverge everywhere).
pub fn assert_ties_are_rare(outcomes: &[Agreement]) {
    let ties = outcomes
        .iter()
        .filter(|o| **o != Agreement::Identical)
        .count();
    assert!(
        ties * 5 <= outcomes.len(),
        "{ties} of {} generations ended at numerical ties: too many to be ties",
        outcomes.len()
    );
    if ties > 0 {
        eprintln!(
            "note: {ties} of {} generations diverged at a numerical tie",
            outcomes.len()
        );
    }
}

/// The `token_ids` a proxy response carries (`return_token_ids: true`).
pub fn proxy_token_ids(v: &Value) -> Vec<u64> {
    v["choices"][0]["token_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no token_ids in {v}"))
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}
/// A streamed request read part-way: the response to read on, and the SSE text so far. Tests that
/// break something mid-answer (kill a server, send a signal) start one, act, then finish it.
pub struct OpenStream {
    pub resp: reqwest::Response,
    pub body: String,
}

impl OpenStream {
    /// POST `request` to `url` and read until `events` `data:` events have arrived.
    pub async fn start(url: &str, request: &Value, events: usize) -> OpenStream {
        let mut resp = reqwest::Client::new()
            .post(url)
            .json(request)
            .send()
            .await
            .expect("stream starts");
        let mut body = String::new();
        while body.matches("data:").count() < events {
            let chunk = resp.chunk().await.expect("chunk").expect("more data");
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
        OpenStream { resp, body }
    }

    /// Read the rest of the stream; the whole SSE text.
    pub async fn finish(mut self) -> String {
        while let Some(chunk) = self.resp.chunk().await.expect("the stream continues") {
            self.body.push_str(&String::from_utf8_lossy(&chunk));
        }
        self.body
    }
}

/// The token ids of a streamed completion's body (raw SSE text): the final chunk carries them.
pub fn stream_token_ids(body: &str) -> Vec<u64> {
    body.split("\n\n")
        .filter_map(|e| e.trim_start().strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c["choices"][0]["token_ids"].as_array().cloned())
        .unwrap_or_else(|| panic!("no chunk carries token_ids in {body}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// The user's story behind most exactness tests: greedy completions through the proxy, each
/// answered by speculation, compared token by token with the target alone.
pub async fn greedy_through_proxy_matches_target(
    proxy: &RunningProxy,
    target: &LlamaServer,
    prompts: &[String],
    max_tokens: usize,
) -> Vec<Agreement> {
    let mut outcomes = Vec::new();
    for prompt in prompts {
        let (s, through) = proxy
            .post(
                "/v1/completions",
                &serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
        let reference = target
            .reference(serde_json::json!(prompt), max_tokens)
            .await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
    }
    outcomes
}

impl ServerOptions {
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
        ];
        opts
    }
}

pub mod faults;
pub mod vllm;
pub mod vllm_sim;
