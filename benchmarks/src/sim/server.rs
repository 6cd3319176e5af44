//! `sim-llama-server`: an HTTP server that speaks exactly the subset of llama-server the proxy uses,
//! with a deterministic model and configurable speeds. A SIMULATION, named so everywhere: it lets
//! the benchmarks sweep target speed, acceptance and network delay far beyond what two CPU cores
//! can run for real, and lets tests check the proxy's exactness against a known truth.
//!
//! Endpoints: `GET /health`, `GET /props`, `GET /v1/models`, `POST /tokenize`, `POST /detokenize`,
//! `POST /apply-template`, `POST /completion` (one prompt, streamed or not, or a list of prompts as
//! one batched "decode"), `POST /v1/chat/completions` (non-streamed, for direct measurements) and
//! `GET /metrics` (`llamacpp:n_decode_total`, `llamacpp:tokens_predicted_total`).
//!
//! Time model. The server has one compute unit: decodes run one at a time (a lock). A decode of a
//! batch of `b` sequences costs `T·(1 + β·(b − 1))` seconds, with `T` = seconds per token, so a
//! verification of `k` draft tokens (`k + 1` prompts, `n_predict: 1`) costs `T_v(k) = T·(1 + β·k)`;
//! a batch larger than the slots takes several decodes, as in llama-server. Every completion request
//! also pays a fixed `request_overhead` (HTTP, JSON, scheduling). Prompt processing is free: the
//! direct and the proxied path process the same prompt once, so it cancels out of the comparison.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{json, Value};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

use super::model::Speaker;
use super::tokenizer::{self, TokenId, EOS_TEXT, N_VOCAB};
use crate::clock;

/// How a simulated server behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The name at `/v1/models`.
    pub model_name: String,
    pub speaker: Speaker,
    /// Seconds one decode step of one sequence takes (1 / tokens per second).
    pub seconds_per_token: f64,
    /// Extra cost of each further sequence in a batched decode, as a share of a one-sequence step.
    pub batch_beta: f64,
    /// Fixed cost of every completion request (HTTP, JSON, scheduling).
    pub request_overhead: Duration,
    /// Parallel sequences (`-np`): a larger batch takes several decodes.
    pub slots: u32,
    /// Context size of one slot (`/props` `default_generation_settings.n_ctx`).
    pub n_ctx: u32,
}

impl SimConfig {
    /// A target generating `tokens_per_s` alone, with room to verify 8 draft tokens at once.
    pub fn target(tokens_per_s: f64, batch_beta: f64) -> Self {
        SimConfig {
            model_name: "sim-target".into(),
            speaker: Speaker::Target,
            seconds_per_token: 1.0 / tokens_per_s,
            batch_beta,
            request_overhead: Duration::from_millis(1),
            slots: 10,
            n_ctx: 16384,
        }
    }

    /// A draft generating `tokens_per_s` whose guesses the target accepts with probability `acceptance`.
    pub fn draft(tokens_per_s: f64, acceptance: f64, seed: u64) -> Self {
        SimConfig {
            model_name: "sim-draft".into(),
            speaker: Speaker::Draft { acceptance, seed },
            seconds_per_token: 1.0 / tokens_per_s,
            batch_beta: 0.0,
            request_overhead: Duration::from_millis(1),
            slots: 1,
            n_ctx: 16384,
        }
    }

    /// Seconds of one decode of `batch` sequences.
    pub fn decode_seconds(&self, batch: usize) -> f64 {
        self.seconds_per_token * (1.0 + self.batch_beta * batch.saturating_sub(1) as f64)
    }
}

#[derive(Debug, Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the server counts (the `/metrics` view).
#[derive(Debug, Default)]
pub struct SimCounters {
    pub decodes: AtomicU64,
    pub tokens_predicted: AtomicU64,
    pub completion_requests: AtomicU64,
}

struct SimState {
    config: SimConfig,
    /// One compute unit: decodes never overlap.
    compute: Mutex<()>,
    counters: Arc<SimCounters>,
}

impl SimState {
    /// Run one decode of `batch` sequences (waits for the compute unit, then for the decode time).
    async fn decode(&self, batch: usize) {
        let _unit = self.compute.lock().await;
        let cost = Duration::from_secs_f64(self.config.decode_seconds(batch));
        clock::sleep_until(Instant::now() + cost).await;
        self.counters.decodes.fetch_add(1, Ordering::Relaxed);
    }

    /// One generation step for several sequences at once, in as many decodes as the slots need.
    async fn step(&self, sequences: usize) {
        let slots = self.config.slots.max(1) as usize;
        let mut left = sequences;
        while left > 0 {
            let batch = left.min(slots);
            self.decode(batch).await;
            left -= batch;
        }
        self.counters
            .tokens_predicted
            .fetch_add(sequences as u64, Ordering::Relaxed);
    }
}

/// A running simulated server; dropping it stops it.
pub struct SimServer {
    local_addr: SocketAddr,
    counters: Arc<SimCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl SimServer {
    /// Serve on `addr` (port 0 picks a free one).
    pub async fn start(addr: SocketAddr, config: SimConfig) -> Result<SimServer, SimError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let counters = Arc::new(SimCounters::default());
        let state = Arc::new(SimState {
            config,
            compute: Mutex::new(()),
            counters: counters.clone(),
        });
        let app = router(state);
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener.tap_io(no_delay), app).await {
                tracing::warn!(error = %e, "simulated llama-server stopped");
            }
        });
        Ok(SimServer {
            local_addr,
            counters,
            task,
        })
    }

    /// Serve on a free loopback port.
    pub async fn start_local(config: SimConfig) -> Result<SimServer, SimError> {
        Self::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    pub fn counters(&self) -> &SimCounters {
        &self.counters
    }
}

/// Send small writes at once (SSE events, short replies): with Nagle's algorithm a write waits for
/// the previous one's ACK, which delayed ACKs hold back by up to 40 ms.
fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Serve on `addr` in the foreground until the process ends (the binary's main loop).
pub async fn serve_forever(addr: SocketAddr, config: SimConfig) -> Result<(), SimError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })?;
    let state = Arc::new(SimState {
        config,
        compute: Mutex::new(()),
        counters: Arc::new(SimCounters::default()),
    });
    axum::serve(listener.tap_io(no_delay), router(state))
        .await
        .map_err(|source| SimError::Bind { addr, source })
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/props", get(props))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/apply-template", post(apply_template))
        .route("/completion", post(completion))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A llama-server-shaped error reply.
struct SimHttpError {
    status: StatusCode,
    message: String,
}

impl SimHttpError {
    fn bad_request(message: impl Into<String>) -> Self {
        SimHttpError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for SimHttpError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.status.as_u16(),
            "message": self.message,
            "type": "invalid_request_error",
        }});
        (self.status, Json(body)).into_response()
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn props(State(s): State<Arc<SimState>>) -> Json<Value> {
    Json(json!({
        "total_slots": s.config.slots,
        "build_info": concat!("sim-", env!("CARGO_PKG_VERSION")),
        "model_path": s.config.model_name,
        "chat_template": "simulation: <|role|>\\ncontent\\n per message, then <|assistant|>\\n",
        "bos_token": tokenizer::BOS_TEXT,
        "eos_token": EOS_TEXT,
        "default_generation_settings": {"n_ctx": s.config.n_ctx},
    }))
}

async fn models(State(s): State<Arc<SimState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": s.config.model_name,
        "object": "model",
        "owned_by": "llamacpp",
        "meta": {"vocab_type": 1, "n_vocab": N_VOCAB},
    }]}))
}

async fn tokenize(Json(body): Json<Value>) -> Result<Json<Value>, SimHttpError> {
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| SimHttpError::bad_request("`content` (a string) is required"))?;
    let add_special = body
        .get("add_special")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let parse_special = body
        .get("parse_special")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let tokens = tokenizer::tokenize(content, add_special, parse_special);
    Ok(Json(json!({ "tokens": tokens })))
}

async fn detokenize(Json(body): Json<Value>) -> Result<Json<Value>, SimHttpError> {
    let tokens = token_list(body.get("tokens").unwrap_or(&Value::Null))
        .ok_or_else(|| SimHttpError::bad_request("`tokens` (a list of token ids) is required"))?;
    Ok(Json(json!({ "content": tokenizer::detokenize(&tokens) })))
}

/// The simulation's chat template: `<|role|>\ncontent\n` per message, then `<|assistant|>\n`.
pub fn render_chat(messages: &Value) -> Result<String, String> {
    let list = messages
        .as_array()
        .ok_or_else(|| "`messages` must be a list".to_string())?;
    let mut out = String::new();
    for m in list {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        out.push_str(&format!("<|{role}|>\n{content}\n"));
    }
    out.push_str("<|assistant|>\n");
    Ok(out)
}

async fn apply_template(Json(body): Json<Value>) -> Result<Json<Value>, SimHttpError> {
    let prompt = render_chat(body.get("messages").unwrap_or(&Value::Null))
        .map_err(SimHttpError::bad_request)?;
    Ok(Json(json!({ "prompt": prompt })))
}

fn token_list(v: &Value) -> Option<Vec<TokenId>> {
    v.as_array()?
        .iter()
        .map(|t| t.as_u64().and_then(|n| TokenId::try_from(n).ok()))
        .collect()
}

/// `prompt` of `/completion`: a string, one token list, or a list of either.
fn parse_prompts(prompt: &Value) -> Result<(Vec<Vec<TokenId>>, bool), SimHttpError> {
    let one = |p: &Value| -> Result<Vec<TokenId>, SimHttpError> {
        match p {
            Value::String(s) => Ok(tokenizer::tokenize(s, true, true)),
            Value::Array(_) => token_list(p).ok_or_else(|| {
                SimHttpError::bad_request("a prompt must be a string or a list of token ids")
            }),
            _ => Err(SimHttpError::bad_request(
                "a prompt must be a string or a list of token ids",
            )),
        }
    };
    match prompt {
        Value::Array(items) if items.first().is_some_and(|x| x.is_array() || x.is_string()) => {
            let prompts = items.iter().map(one).collect::<Result<Vec<_>, _>>()?;
            Ok((prompts, true))
        }
        other => Ok((vec![one(other)?], false)),
    }
}

fn piece(id: TokenId) -> Value {
    let bytes = tokenizer::token_bytes(id);
    json!({
        "id": id,
        "token": String::from_utf8_lossy(&bytes),
        "bytes": bytes,
    })
}

/// `completion_probabilities` for one generated token: the model is certain of its choice.
fn probabilities(id: TokenId, post_sampling: bool) -> Value {
    let mut entry = piece(id);
    let mut top = piece(id);
    if post_sampling {
        top["prob"] = json!(1.0);
        entry["prob"] = json!(1.0);
        entry["top_probs"] = json!([top]);
    } else {
        top["logprob"] = json!(0.0);
        entry["logprob"] = json!(0.0);
        entry["top_logprobs"] = json!([top]);
    }
    entry
}

/// Options of one `/completion` request that shape its reply.
struct CompletionOptions {
    n_predict: usize,
    n_probs: usize,
    post_sampling: bool,
}

fn result_json(
    opts: &CompletionOptions,
    prompt_len: usize,
    tokens: &[TokenId],
    elapsed: Duration,
) -> Value {
    let mut v = json!({
        "content": tokenizer::detokenize(tokens),
        "tokens": tokens,
        "stop": true,
        "stop_type": "limit",
        "tokens_predicted": tokens.len(),
        "tokens_evaluated": prompt_len,
        "timings": {
            "prompt_n": prompt_len,
            "prompt_ms": 0.0,
            "predicted_n": tokens.len(),
            "predicted_ms": elapsed.as_secs_f64() * 1e3,
        },
    });
    if opts.n_probs > 0 {
        v["completion_probabilities"] = tokens
            .iter()
            .map(|&t| probabilities(t, opts.post_sampling))
            .collect();
    }
    v
}

async fn completion(
    State(s): State<Arc<SimState>>,
    Json(body): Json<Value>,
) -> Result<Response, SimHttpError> {
    let (prompts, is_list) = parse_prompts(body.get("prompt").unwrap_or(&Value::Null))?;
    if prompts.is_empty() {
        return Err(SimHttpError::bad_request("empty prompt list"));
    }
    let n_predict = body
        .get("n_predict")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    // -1 means "until the context is full"; cap it so a mistaken request cannot run for hours.
    let n_predict = usize::try_from(n_predict).unwrap_or(4096);
    let opts = CompletionOptions {
        n_predict,
        n_probs: body.get("n_probs").and_then(Value::as_u64).unwrap_or(0) as usize,
        post_sampling: body
            .get("post_sampling_probs")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let n_ctx = s.config.n_ctx as usize;
    if let Some(p) = prompts.iter().find(|p| p.len() + n_predict.min(1) > n_ctx) {
        return Err(SimHttpError::bad_request(format!(
            "the request exceeds the available context size ({} tokens, n_ctx {n_ctx})",
            p.len()
        )));
    }
    s.counters
        .completion_requests
        .fetch_add(1, Ordering::Relaxed);
    let streamed = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if streamed {
        if is_list {
            return Err(SimHttpError::bad_request(
                "the simulation streams one prompt at a time",
            ));
        }
        let prompt = prompts.into_iter().next().unwrap_or_default();
        return Ok(stream_completion(s, prompt, opts));
    }
    let started = Instant::now();
    clock::sleep(s.config.request_overhead).await;
    let mut contexts = prompts.clone();
    for _ in 0..opts.n_predict {
        s.step(contexts.len()).await;
        for ctx in &mut contexts {
            let next = s.config.speaker.next(ctx);
            ctx.push(next);
        }
    }
    let elapsed = started.elapsed();
    let results: Vec<Value> = prompts
        .iter()
        .zip(&contexts)
        .map(|(p, all)| result_json(&opts, p.len(), &all[p.len()..], elapsed))
        .collect();
    let reply = if is_list {
        Value::Array(results)
    } else {
        results.into_iter().next().unwrap_or(Value::Null)
    };
    Ok(Json(reply).into_response())
}

/// A streamed completion: one SSE event per decoded token, then a final `stop: true` event.
fn stream_completion(s: Arc<SimState>, prompt: Vec<TokenId>, opts: CompletionOptions) -> Response {
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let started = Instant::now();
        clock::sleep(s.config.request_overhead).await;
        let mut ctx = prompt.clone();
        for i in 0..opts.n_predict {
            s.step(1).await;
            let id = s.config.speaker.next(&ctx);
            ctx.push(id);
            let mut event = json!({
                "index": 0,
                "content": tokenizer::detokenize(&[id]),
                "tokens": [id],
                "stop": false,
                "id_slot": 0,
                "tokens_predicted": i + 1,
                "tokens_evaluated": prompt.len(),
            });
            if opts.n_probs > 0 {
                event["completion_probabilities"] = json!([probabilities(id, opts.post_sampling)]);
            }
            if tx.send(Ok(format!("data: {event}\n\n"))).await.is_err() {
                return; // The client went away: stop decoding for nobody.
            }
        }
        let generated = ctx.len() - prompt.len();
        let last = json!({
            "index": 0,
            "content": "",
            "tokens": [],
            "stop": true,
            "stop_type": "limit",
            "tokens_predicted": generated,
            "tokens_evaluated": prompt.len(),
            "timings": {
                "prompt_n": prompt.len(),
                "predicted_n": generated,
                "predicted_ms": started.elapsed().as_secs_f64() * 1e3,
            },
        });
        // Nothing to do when the client has gone before the last event.
        let _ = tx.send(Ok(format!("data: {last}\n\n"))).await;
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A receiver as a `Stream` (what `Body::from_stream` wants).
fn tokio_stream_from(
    rx: mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// OpenAI chat, non-streamed: what a client talking to the target directly gets. Same template,
/// same tokenizer, same greedy model and the same time per token as `/completion`.
async fn chat_completions(
    State(s): State<Arc<SimState>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, SimHttpError> {
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return Err(SimHttpError::bad_request(
            "the simulation answers /v1/chat/completions without streaming only",
        ));
    }
    let rendered = render_chat(body.get("messages").unwrap_or(&Value::Null))
        .map_err(SimHttpError::bad_request)?;
    let prompt = tokenizer::tokenize(&rendered, true, true);
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(256) as usize;
    s.counters
        .completion_requests
        .fetch_add(1, Ordering::Relaxed);
    clock::sleep(s.config.request_overhead).await;
    let mut ctx = prompt.clone();
    for _ in 0..max_tokens {
        s.step(1).await;
        let next = s.config.speaker.next(&ctx);
        ctx.push(next);
    }
    let generated = &ctx[prompt.len()..];
    Ok(Json(json!({
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": 0,
        "model": s.config.model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": tokenizer::detokenize(generated)},
            "finish_reason": "length",
        }],
        "usage": {
            "prompt_tokens": prompt.len(),
            "completion_tokens": generated.len(),
            "total_tokens": prompt.len() + generated.len(),
        },
    })))
}

async fn metrics(State(s): State<Arc<SimState>>) -> Response {
    let c = &s.counters;
    let text = format!(
        "# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n\
         # TYPE llamacpp:n_decode_total counter\n\
         llamacpp:n_decode_total {}\n\
         # HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n\
         # TYPE llamacpp:tokens_predicted_total counter\n\
         llamacpp:tokens_predicted_total {}\n",
        c.decodes.load(Ordering::Relaxed),
        c.tokens_predicted.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
