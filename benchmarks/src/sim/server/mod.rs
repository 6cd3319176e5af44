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
//!
//! Files: this one holds the configuration, the time model (`SimState`), the server's lifecycle
//! and its routes; `endpoints.rs` the small endpoints, the error reply and the OpenAI chat;
//! `completion.rs` `/completion`, batched, whole or streamed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use super::model::Speaker;
use crate::clock;

mod completion;
mod endpoints;

use completion::completion;
pub use endpoints::render_chat;
use endpoints::{
    apply_template, chat_completions, detokenize, health, metrics, models, props, tokenize,
};

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
