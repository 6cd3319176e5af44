//! `sim-llama-server`: a SIMULATION of llama-server (the subset the proxy uses) with set speed and,
//! for a draft, set acceptance. Not a model: see `tightwad_benchmarks::sim`.
//!
//! ```sh
//! sim-llama-server --listen 127.0.0.1:8080 --tok-s 10 --beta 0.05            # target
//! sim-llama-server --listen 127.0.0.1:8081 --tok-s 500 --draft-acceptance 0.8  # draft
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tightwad_benchmarks::sim::{serve_forever, SimConfig};

#[derive(Parser, Debug)]
#[command(
    about = "A SIMULATED llama-server (deterministic toy model, configurable speed) for benchmarks"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Decode speed of one sequence, tokens per second.
    #[arg(long, default_value_t = 10.0)]
    tok_s: f64,
    /// Extra cost of each further sequence in a batched decode (T_v(k) = T·(1 + β·k)).
    #[arg(long, default_value_t = 0.05)]
    beta: f64,
    /// Fixed cost of every completion request, milliseconds.
    #[arg(long, default_value_t = 1.0)]
    overhead_ms: f64,
    /// Parallel slots (-np).
    #[arg(long, default_value_t = 10)]
    slots: u32,
    /// Be a draft that agrees with the target with this probability per token.
    #[arg(long)]
    draft_acceptance: Option<f64>,
    /// Seed of the draft's disagreements (same seed, same run).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if !(args.tok_s.is_finite() && args.tok_s > 0.0) {
        anyhow::bail!("--tok-s must be positive, got {}", args.tok_s);
    }
    if !(args.overhead_ms.is_finite() && args.overhead_ms >= 0.0) {
        anyhow::bail!(
            "--overhead-ms must be non-negative, got {}",
            args.overhead_ms
        );
    }
    let mut config = match args.draft_acceptance {
        Some(a) if (0.0..=1.0).contains(&a) => SimConfig::draft(args.tok_s, a, args.seed),
        Some(a) => anyhow::bail!("--draft-acceptance must be within 0..=1, got {a}"),
        None => SimConfig::target(args.tok_s, args.beta),
    };
    config.batch_beta = args.beta;
    config.slots = args.slots.max(1);
    config.request_overhead = Duration::from_secs_f64(args.overhead_ms / 1e3);
    tracing::info!(listen = %args.listen, ?config, "SIMULATED llama-server");
    serve_forever(args.listen, config)
        .await
        .context("serving the simulation")
}
