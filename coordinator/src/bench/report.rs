//! What a bench run found: each prompt's measurements both ways, the totals, the proxy's counters
//! during the run, and the machine and commit they were measured on.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BenchPrompt;

/// The proxy's `tightwad` object of one response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Speculation {
    pub served_by: String,
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
}

/// One timed request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub seconds: f64,
    /// `usage.completion_tokens`.
    pub completion_tokens: u64,
    #[serde(skip)]
    pub text: String,
    pub speculation: Option<Speculation>,
}

/// One prompt's results, summed over its repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptResult {
    pub category: String,
    pub prompt: String,
    pub direct_seconds: f64,
    pub direct_tokens: u64,
    pub proxy_seconds: f64,
    pub proxy_tokens: u64,
    pub direct_tok_s: f64,
    pub proxy_tok_s: f64,
    /// Time per token direct ÷ time per token through the proxy (> 1: the proxy is faster).
    pub speedup: f64,
    /// Every repeat's proxy text equals the direct text.
    pub identical: bool,
    /// How the proxy served it (`speculative`, `target_only`, `passthrough`), per repeat.
    pub served_by: Vec<String>,
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
}

impl PromptResult {
    /// Accepted ÷ drafted draft tokens, when anything was drafted.
    pub fn acceptance(&self) -> Option<f64> {
        (self.drafted > 0).then(|| self.accepted as f64 / self.drafted as f64)
    }

    /// Tokens per round: the accepted drafts plus the target's own token each round.
    pub fn tokens_per_round(&self) -> Option<f64> {
        (self.rounds > 0).then(|| (self.accepted + self.rounds) as f64 / self.rounds as f64)
    }

    /// Sum one prompt's direct and proxied measurements (same length, in repeat order).
    pub fn from_measurements(
        prompt: &BenchPrompt,
        direct: &[Measurement],
        proxied: &[Measurement],
    ) -> Self {
        let direct_seconds: f64 = direct.iter().map(|m| m.seconds).sum();
        let proxy_seconds: f64 = proxied.iter().map(|m| m.seconds).sum();
        let direct_tokens: u64 = direct.iter().map(|m| m.completion_tokens).sum();
        let proxy_tokens: u64 = proxied.iter().map(|m| m.completion_tokens).sum();
        let spec = |f: fn(&Speculation) -> u64| -> u64 {
            proxied
                .iter()
                .filter_map(|m| m.speculation.as_ref())
                .map(f)
                .sum()
        };
        let identical = direct.len() == proxied.len()
            && direct.iter().zip(proxied).all(|(d, p)| d.text == p.text);
        PromptResult {
            category: prompt.category.clone(),
            prompt: prompt.prompt.clone(),
            direct_seconds,
            direct_tokens,
            proxy_seconds,
            proxy_tokens,
            direct_tok_s: rate(direct_tokens, direct_seconds),
            proxy_tok_s: rate(proxy_tokens, proxy_seconds),
            speedup: speedup(direct_tokens, direct_seconds, proxy_tokens, proxy_seconds),
            identical,
            served_by: proxied
                .iter()
                .map(|m| {
                    m.speculation
                        .as_ref()
                        .map_or_else(|| "unknown".to_string(), |s| s.served_by.clone())
                })
                .collect(),
            rounds: spec(|s| s.rounds),
            drafted: spec(|s| s.drafted),
            accepted: spec(|s| s.accepted),
        }
    }
}

/// Tokens per second (0 when nothing was timed).
pub fn rate(tokens: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// Time per token direct ÷ time per token through the proxy; for equal token counts this is
/// direct time ÷ proxy time. 0 when either side produced nothing.
pub fn speedup(
    direct_tokens: u64,
    direct_seconds: f64,
    proxy_tokens: u64,
    proxy_seconds: f64,
) -> f64 {
    let d = rate(direct_tokens, direct_seconds);
    let p = rate(proxy_tokens, proxy_seconds);
    if d > 0.0 {
        p / d
    } else {
        0.0
    }
}

/// The whole run, summed over prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub direct_seconds: f64,
    pub proxy_seconds: f64,
    pub direct_tokens: u64,
    pub proxy_tokens: u64,
    pub direct_tok_s: f64,
    pub proxy_tok_s: f64,
    /// Wall-clock speedup (see [`speedup`]).
    pub speedup: f64,
    /// Both sides generated the same number of tokens (then `speedup` is a plain time ratio).
    pub equal_token_counts: bool,
    pub identical_prompts: usize,
    pub prompts: usize,
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
    /// accepted ÷ drafted.
    pub acceptance: Option<f64>,
    /// Tokens each round emitted: the accepted drafts plus the target's own token.
    pub tokens_per_round: Option<f64>,
}

impl Totals {
    pub fn of(results: &[PromptResult]) -> Self {
        let direct_seconds: f64 = results.iter().map(|r| r.direct_seconds).sum();
        let proxy_seconds: f64 = results.iter().map(|r| r.proxy_seconds).sum();
        let direct_tokens: u64 = results.iter().map(|r| r.direct_tokens).sum();
        let proxy_tokens: u64 = results.iter().map(|r| r.proxy_tokens).sum();
        let rounds: u64 = results.iter().map(|r| r.rounds).sum();
        let drafted: u64 = results.iter().map(|r| r.drafted).sum();
        let accepted: u64 = results.iter().map(|r| r.accepted).sum();
        Totals {
            direct_seconds,
            proxy_seconds,
            direct_tokens,
            proxy_tokens,
            direct_tok_s: rate(direct_tokens, direct_seconds),
            proxy_tok_s: rate(proxy_tokens, proxy_seconds),
            speedup: speedup(direct_tokens, direct_seconds, proxy_tokens, proxy_seconds),
            equal_token_counts: direct_tokens == proxy_tokens,
            identical_prompts: results.iter().filter(|r| r.identical).count(),
            prompts: results.len(),
            rounds,
            drafted,
            accepted,
            acceptance: (drafted > 0).then(|| accepted as f64 / drafted as f64),
            tokens_per_round: (rounds > 0).then(|| (accepted + rounds) as f64 / rounds as f64),
        }
    }
}

/// What `/v1/tightwad/stats` counted for the pairing during the measured requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsDelta {
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
    pub speculative_requests: u64,
    pub target_only_requests: u64,
    pub passthrough_requests: u64,
    /// The controller's view after the run (state, estimates), as the proxy reports it.
    pub controller_after: Option<Value>,
}

/// The difference of two `/v1/tightwad/stats` pairing objects.
pub fn stats_delta(before: &Value, after: &Value) -> StatsDelta {
    let get = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let diff = |p: &str| get(after, p).saturating_sub(get(before, p));
    StatsDelta {
        rounds: diff("/rounds"),
        drafted: diff("/drafted"),
        accepted: diff("/accepted"),
        speculative_requests: diff("/requests/speculative"),
        target_only_requests: diff("/requests/target_only"),
        passthrough_requests: diff("/requests/passthrough"),
        controller_after: after.get("controller").cloned(),
    }
}

/// Where the numbers were measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub commit: Option<String>,
    pub dirty: Option<bool>,
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub os: String,
    pub unix_time: u64,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the report was made: on a shared machine a high
    /// load means noisy timings.
    #[serde(default)]
    pub load_average: Option<String>,
}

impl Environment {
    pub fn detect() -> Self {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        Environment {
            commit: git(&["rev-parse", "HEAD"]),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            os: std::env::consts::OS.to_string(),
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")),
        }
    }
}

/// Everything one comparison measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub proxy: String,
    pub target: String,
    pub model: String,
    pub max_tokens: u32,
    pub repeats: u32,
    pub warmup: u32,
    pub environment: Environment,
    pub prompts: Vec<PromptResult>,
    pub totals: Totals,
    /// `None` when the proxy has no `/v1/tightwad/stats` (not a tightwad proxy).
    pub proxy_stats: Option<StatsDelta>,
}
