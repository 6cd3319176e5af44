//! The shapes of the result files: what `bench-suite` ([`crate::suite`]) writes and the report and
//! plots ([`crate::report`], [`crate::plot`]) read.

use serde::{Deserialize, Serialize};

use crate::bench::{BenchReport, Environment};

/// One cell of the simulation grid.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimCellResult {
    pub acceptance: f64,
    pub rtt_ms: f64,
    pub target_tok_s: f64,
    pub draft_tok_s: f64,
    pub beta: f64,
    /// `pinned` (speculation every round with `k`) or `adaptive` (the controller, `k` ≤ cap).
    pub mode: String,
    pub k: usize,
    pub tokens: u64,
    pub direct_tok_s: f64,
    pub proxy_tok_s: f64,
    pub speedup: f64,
    /// The analytic limits at `limit_k` (pinned: `k`; adaptive: the best `k` ≤ cap).
    pub limit_k: usize,
    pub limit_sequential_tok_s: f64,
    pub limit_pipelined_tok_s: f64,
    pub of_sequential_limit: f64,
    pub of_pipelined_limit: f64,
    /// Of the sequential limit recomputed with the tokens per round this run actually drew (a
    /// short run's agreements scatter around α): what the proxy's machinery leaves on the table.
    pub of_sequential_limit_at_measured_acceptance: Option<f64>,
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
    pub measured_acceptance: Option<f64>,
    pub identical: bool,
    pub served_by: Vec<String>,
}

/// A simulation scenario's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimScenario {
    pub name: String,
    pub description: String,
    pub draft_tok_s: f64,
    pub beta: f64,
    pub request_overhead_ms: f64,
    pub seconds: f64,
    pub environment: Environment,
    pub cells: Vec<SimCellResult>,
}

/// A real-server scenario's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealScenario {
    pub name: String,
    pub description: String,
    pub target_model: String,
    pub draft_model: Option<String>,
    pub rtt_ms: Option<f64>,
    pub adaptive: bool,
    pub draft_tokens: usize,
    /// How the target verified drafts: `one_pass` (the patched llama-server) or `multi_prompt`
    /// (results from before the patch have none).
    #[serde(default)]
    pub verification: Option<String>,
    pub seconds: f64,
    pub report: BenchReport,
}
