//! `tightwad bench`: is the proxy faster than the target alone, and is its answer the same?
//!
//! Every prompt is sent to the target directly (its own `/v1/chat/completions`) and through the
//! proxy, alternating in one run (warm-up first, then A/B/A/B) so both sides see the same machine
//! state; greedy, same `max_tokens`. Each prompt is first put into the target's prompt cache with
//! an unmeasured one-token request, so the side that happens to go first is not charged the prompt
//! processing the other then skips. Tokens are counted from `usage.completion_tokens` (never words
//! or chunks) and the speedup is the ratio of time per token, which for equal token counts is the
//! ratio of total times. The proxy's per-response `tightwad` object and `/v1/tightwad/stats` give
//! rounds, drafted and accepted tokens. The result is a table, and optionally JSON and Markdown
//! files that carry the commit and the hardware they were measured on.
//!
//! This module depends on nothing else in the crate, so the benchmarks crate reuses it
//! ([`compare`], [`BenchReport`]) for its scenarios.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// Command-line arguments of `tightwad bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The tightwad proxy to measure, e.g. http://127.0.0.1:8088.
    #[arg(long, value_name = "URL")]
    pub proxy: String,
    /// The target llama-server the proxy speaks for, reached directly, e.g. http://10.0.0.2:8080.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// The model name sent in requests (the proxy's pairing name).
    #[arg(long, default_value = "tightwad")]
    pub model: String,
    /// A prompt file: a JSON list of {"category", "prompt"}, or one prompt per line
    /// (blank lines and lines starting with # are skipped). Default: the built-in set.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Tokens to generate per request (both ways).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Measured requests per prompt and side.
    #[arg(long, default_value_t = 1)]
    pub repeats: u32,
    /// Unmeasured requests per side before measuring (caches, connection pools, the controller).
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// The full report as JSON instead of the table (on stdout, or in --out's file); no
    /// progress lines while the JSON goes to stdout.
    #[arg(long)]
    pub json: bool,
    /// Write the report to this file (JSON with --json, else the table); the table still goes to
    /// stdout, the progress to stderr.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the report as a Markdown table here.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Also put each prompt into this server's prompt cache before measuring it (repeatable):
    /// the server the proxy forwards to when it is not `--target`, or the server measured as
    /// `--proxy` when that is a plain llama-server. `--target` is always primed.
    #[arg(long, value_name = "URL")]
    pub prime: Vec<String>,
}

/// One prompt of the set, with the kind of text it asks for (acceptance depends on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchPrompt {
    pub category: String,
    pub prompt: String,
}

impl BenchPrompt {
    fn new(category: &str, prompt: &str) -> Self {
        BenchPrompt {
            category: category.to_string(),
            prompt: prompt.to_string(),
        }
    }
}

/// The built-in set: the field report's kinds of prompt (factual, code, creative, reasoning,
/// list), two of each.
pub fn builtin_prompts() -> Vec<BenchPrompt> {
    vec![
        BenchPrompt::new("factual", "What is the capital of France, and what river runs through it?"),
        BenchPrompt::new("factual", "Explain in a few sentences how a refrigerator keeps food cold."),
        BenchPrompt::new("code", "Write a Python function that returns the n-th Fibonacci number iteratively."),
        BenchPrompt::new("code", "Write a Rust function that reverses the words of a sentence."),
        BenchPrompt::new("creative", "Write a short poem about a lighthouse keeper at dawn."),
        BenchPrompt::new("creative", "Begin a story about a cat who finds a key in the garden."),
        BenchPrompt::new("reasoning", "If a train leaves at 3 pm and travels 120 km at 80 km/h, when does it arrive? Explain step by step."),
        BenchPrompt::new("reasoning", "A farmer has 17 sheep and all but 9 run away. How many are left? Think it through."),
        BenchPrompt::new("list", "List ten common fruits, one per line."),
        BenchPrompt::new("list", "List the planets of the solar system in order from the sun."),
    ]
}

/// Read a prompt file (see [`BenchArgs::prompts`]).
pub fn load_prompts(path: &Path) -> Result<Vec<BenchPrompt>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Prompts {
        path: path.display().to_string(),
        detail: source.to_string(),
    })?;
    let prompts = parse_prompts(&text).map_err(|detail| BenchError::Prompts {
        path: path.display().to_string(),
        detail,
    })?;
    if prompts.is_empty() {
        return Err(BenchError::Prompts {
            path: path.display().to_string(),
            detail: "no prompts in the file".into(),
        });
    }
    Ok(prompts)
}

fn parse_prompts(text: &str) -> Result<Vec<BenchPrompt>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text)
            .map_err(|e| format!("not a JSON list of {{\"category\", \"prompt\"}}: {e}"));
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| BenchPrompt::new("custom", l))
        .collect())
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub proxy_url: String,
    pub target_url: String,
    pub model: String,
    pub prompts: Vec<BenchPrompt>,
    pub max_tokens: u32,
    pub repeats: u32,
    pub warmup: u32,
    /// Longest wait for one request.
    pub request_timeout: Duration,
    /// Pause before each measured request, so background work the proxy starts after an answer
    /// (shadow drafting while speculation is off) does not land on the next measurement when
    /// draft and target share one machine, as they do in these benchmarks but not on a LAN.
    pub pause: Duration,
    /// Servers (base URLs) whose prompt cache gets each prompt too, besides the target's.
    pub prime_also: Vec<String>,
}

impl CompareConfig {
    pub fn new(proxy_url: &str, target_url: &str) -> Self {
        CompareConfig {
            proxy_url: proxy_url.trim_end_matches('/').to_string(),
            target_url: target_url.trim_end_matches('/').to_string(),
            model: "tightwad".into(),
            prompts: builtin_prompts(),
            max_tokens: 128,
            repeats: 1,
            warmup: 1,
            request_timeout: Duration::from_secs(600),
            pause: Duration::from_millis(100),
            prime_also: Vec::new(),
        }
    }
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("cannot read prompts from {path}: {detail}")]
    Prompts { path: String, detail: String },
    #[error("nothing to measure: {0}")]
    Empty(String),
    #[error("{side} request to {url} failed: {detail}")]
    Request {
        side: &'static str,
        url: String,
        detail: String,
    },
    #[error("{side} answered {url} with status {status}: {body}")]
    Status {
        side: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{side} reply from {url} lacks {what}")]
    Malformed {
        side: &'static str,
        url: String,
        what: &'static str,
    },
}

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

/// Which side a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    Proxy,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Direct => "target (direct)",
            Side::Proxy => "proxy",
        }
    }
}

struct Client {
    http: reqwest::Client,
    config: CompareConfig,
}

impl Client {
    fn new(config: CompareConfig) -> Result<Self, BenchError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| BenchError::Request {
                side: "client",
                url: String::new(),
                detail: e.to_string(),
            })?;
        Ok(Client { http, config })
    }

    fn base(&self, side: Side) -> &str {
        match side {
            Side::Direct => &self.config.target_url,
            Side::Proxy => &self.config.proxy_url,
        }
    }

    /// One greedy chat completion, timed from sending to the last byte of the reply.
    async fn measure(&self, side: Side, prompt: &BenchPrompt) -> Result<Measurement, BenchError> {
        tokio::time::sleep(self.config.pause).await;
        self.chat(side, prompt, self.config.max_tokens).await
    }

    /// Put the prompt into the target's prompt cache with a one-token request, so that neither
    /// side's first measured request pays prompt processing the other side then skips (whichever
    /// went first would otherwise be charged for both). Likewise every server in
    /// [`CompareConfig::prime_also`], whose cache the proxy side would otherwise fill on its clock.
    async fn prime(&self, prompt: &BenchPrompt) -> Result<(), BenchError> {
        self.chat(Side::Direct, prompt, 1).await?;
        for base in &self.config.prime_also {
            self.chat_at(Side::Direct, base.trim_end_matches('/'), prompt, 1)
                .await?;
        }
        Ok(())
    }

    async fn chat(
        &self,
        side: Side,
        prompt: &BenchPrompt,
        max_tokens: u32,
    ) -> Result<Measurement, BenchError> {
        self.chat_at(side, self.base(side), prompt, max_tokens)
            .await
    }

    async fn chat_at(
        &self,
        side: Side,
        base: &str,
        prompt: &BenchPrompt,
        max_tokens: u32,
    ) -> Result<Measurement, BenchError> {
        let url = format!("{base}/v1/chat/completions");
        let body = json!({
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt.prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": false,
        });
        let request_error = |e: reqwest::Error| BenchError::Request {
            side: side.name(),
            url: url.clone(),
            detail: e.to_string(),
        };
        let started = Instant::now();
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(request_error)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(request_error)?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.is_success() {
            return Err(BenchError::Status {
                side: side.name(),
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| BenchError::Malformed {
            side: side.name(),
            url: url.clone(),
            what: "a JSON body",
        })?;
        let completion_tokens = v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .ok_or_else(|| BenchError::Malformed {
                side: side.name(),
                url: url.clone(),
                what: "usage.completion_tokens",
            })?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let speculation = v
            .get("tightwad")
            .and_then(|t| serde_json::from_value::<Speculation>(t.clone()).ok());
        Ok(Measurement {
            seconds,
            completion_tokens,
            text,
            speculation,
        })
    }

    /// The pairing's counters from `/v1/tightwad/stats`, or `None` if the proxy has none.
    async fn stats(&self) -> Option<Value> {
        let url = format!("{}/v1/tightwad/stats", self.config.proxy_url);
        let v: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        let pairings = v.get("pairings")?.as_array()?;
        pairings
            .iter()
            .find(|p| p.get("pairing").and_then(Value::as_str) == Some(self.config.model.as_str()))
            .or_else(|| pairings.first())
            .cloned()
    }
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

/// Measure every prompt direct and through the proxy, alternating, after a warm-up.
pub async fn compare(config: CompareConfig) -> Result<BenchReport, BenchError> {
    compare_with_progress(config, |_, _, _| {}).await
}

/// [`compare`], calling `on_prompt(done, total, next_category)` before each prompt and once at
/// the end (`done == total`), so a CLI can show progress.
pub async fn compare_with_progress(
    config: CompareConfig,
    mut on_prompt: impl FnMut(usize, usize, &str),
) -> Result<BenchReport, BenchError> {
    if config.prompts.is_empty() {
        return Err(BenchError::Empty("the prompt set is empty".into()));
    }
    if config.repeats == 0 {
        return Err(BenchError::Empty("--repeats must be at least 1".into()));
    }
    let client = Client::new(config.clone())?;
    for i in 0..config.warmup as usize {
        let prompt = &config.prompts[i % config.prompts.len()];
        client.measure(Side::Direct, prompt).await?;
        client.measure(Side::Proxy, prompt).await?;
    }
    let stats_before = client.stats().await;
    let mut results = Vec::with_capacity(config.prompts.len());
    for (i, prompt) in config.prompts.iter().enumerate() {
        on_prompt(i, config.prompts.len(), &prompt.category);
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        client.prime(prompt).await?;
        for _ in 0..config.repeats {
            direct.push(client.measure(Side::Direct, prompt).await?);
            proxied.push(client.measure(Side::Proxy, prompt).await?);
        }
        let result = PromptResult::from_measurements(prompt, &direct, &proxied);
        tracing::info!(
            category = %result.category,
            direct_tok_s = result.direct_tok_s,
            proxy_tok_s = result.proxy_tok_s,
            speedup = result.speedup,
            identical = result.identical,
            "measured"
        );
        results.push(result);
    }
    on_prompt(config.prompts.len(), config.prompts.len(), "done");
    let stats_after = client.stats().await;
    let proxy_stats = match (&stats_before, &stats_after) {
        (Some(b), Some(a)) => Some(stats_delta(b, a)),
        _ => None,
    };
    Ok(BenchReport {
        proxy: config.proxy_url.clone(),
        target: config.target_url.clone(),
        model: config.model.clone(),
        max_tokens: config.max_tokens,
        repeats: config.repeats,
        warmup: config.warmup,
        environment: Environment::detect(),
        totals: Totals::of(&results),
        prompts: results,
        proxy_stats,
    })
}

fn opt_ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The per-prompt table and the totals, for a terminal.
pub fn render_table(report: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>9} {:>9} {:>8} {:>9} {:>5} {:>6} {:>7} {:>8}  served by",
        "category",
        "direct/s",
        "proxy/s",
        "speedup",
        "tokens",
        "same",
        "rounds",
        "accept",
        "tok/rnd",
    );
    for r in &report.prompts {
        let (acceptance, per_round) = (r.acceptance(), r.tokens_per_round());
        let _ = writeln!(
            s,
            "{:<10} {:>9.1} {:>9.1} {:>7.2}x {:>4}/{:<4} {:>5} {:>6} {:>7} {:>8}  {}",
            r.category,
            r.direct_tok_s,
            r.proxy_tok_s,
            r.speedup,
            r.direct_tokens,
            r.proxy_tokens,
            if r.identical { "yes" } else { "NO" },
            r.rounds,
            opt_ratio(acceptance),
            opt_ratio(per_round),
            r.served_by.join(","),
        );
    }
    let t = &report.totals;
    let _ = writeln!(
        s,
        "total: direct {:.1} tok/s ({} tokens in {:.2} s), proxy {:.1} tok/s ({} tokens in {:.2} s): {:.2}x wall-clock{}",
        t.direct_tok_s,
        t.direct_tokens,
        t.direct_seconds,
        t.proxy_tok_s,
        t.proxy_tokens,
        t.proxy_seconds,
        t.speedup,
        if t.equal_token_counts { "" } else { " (token counts differ: ratio of time per token)" },
    );
    let _ = writeln!(
        s,
        "identical text on {}/{} prompts; {} rounds, {} drafted, {} accepted (acceptance {}), {} tokens per round",
        t.identical_prompts,
        t.prompts,
        t.rounds,
        t.drafted,
        t.accepted,
        opt_ratio(t.acceptance),
        opt_ratio(t.tokens_per_round),
    );
    if let Some(st) = &report.proxy_stats {
        let _ = writeln!(
            s,
            "proxy stats during the run: {} rounds, {} drafted, {} accepted; requests: {} speculative, {} target-only, {} passthrough",
            st.rounds, st.drafted, st.accepted, st.speculative_requests, st.target_only_requests, st.passthrough_requests
        );
    }
    s
}

/// The same as a Markdown document.
pub fn render_markdown(report: &BenchReport) -> String {
    let mut s = String::new();
    let e = &report.environment;
    let _ = writeln!(s, "# tightwad bench\n");
    let _ = writeln!(
        s,
        "Proxy `{}` vs target `{}` (model `{}`), {} max tokens, {} repeat(s), {} warm-up request(s) per side; commit `{}`{}, {} CPU(s){}.\n",
        report.proxy,
        report.target,
        report.model,
        report.max_tokens,
        report.repeats,
        report.warmup,
        e.commit.as_deref().unwrap_or("unknown"),
        if e.dirty == Some(true) { " (with local changes)" } else { "" },
        e.nproc,
        e.cpu_model.as_deref().map(|m| format!(", {m}")).unwrap_or_default(),
    );
    let _ = writeln!(s, "| category | direct tok/s | proxy tok/s | speedup | tokens direct/proxy | identical | rounds | acceptance | tokens/round | served by |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|:---:|---:|---:|---:|---|");
    for r in &report.prompts {
        let (acceptance, per_round) = (r.acceptance(), r.tokens_per_round());
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2}x | {}/{} | {} | {} | {} | {} | {} |",
            r.category,
            r.direct_tok_s,
            r.proxy_tok_s,
            r.speedup,
            r.direct_tokens,
            r.proxy_tokens,
            if r.identical { "yes" } else { "**no**" },
            r.rounds,
            opt_ratio(acceptance),
            opt_ratio(per_round),
            r.served_by.join(", "),
        );
    }
    let t = &report.totals;
    let _ = writeln!(
        s,
        "| **total** | {:.1} | {:.1} | **{:.2}x** | {}/{} | {}/{} | {} | {} | {} | |",
        t.direct_tok_s,
        t.proxy_tok_s,
        t.speedup,
        t.direct_tokens,
        t.proxy_tokens,
        t.identical_prompts,
        t.prompts,
        t.rounds,
        opt_ratio(t.acceptance),
        opt_ratio(t.tokens_per_round),
    );
    s
}

/// `tightwad bench`: compare, print the table, write the files.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let prompts = match &args.prompts {
        Some(path) => load_prompts(path)?,
        None => builtin_prompts(),
    };
    let config = CompareConfig {
        model: args.model.clone(),
        prompts,
        max_tokens: args.max_tokens,
        repeats: args.repeats,
        warmup: args.warmup,
        prime_also: args.prime.clone(),
        ..CompareConfig::new(&args.proxy, &args.target)
    };
    // JSON on stdout is for a script: nothing else on either stream.
    let to_stdout = args.json && args.out.is_none();
    let mut progress = crate::progress::Progress::new(
        crate::progress::Progress::mode(to_stdout),
        crate::progress::Unit::Items,
        "bench",
        config.prompts.len() as u64,
    );
    let report = compare_with_progress(config, |done, _, category| {
        progress.set_message(format!("bench ({category})"));
        progress.set(done as u64);
    })
    .await
    .context("benchmark run failed");
    progress.finish();
    let report = report?;
    if to_stdout {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serializing the report")?
        );
    } else {
        print!("{}", render_table(&report));
    }
    if let Some(path) = &args.out {
        let text = if args.json {
            serde_json::to_string_pretty(&report).context("serializing the report")? + "\n"
        } else {
            render_table(&report)
        };
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, render_markdown(&report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.totals.identical_prompts < report.totals.prompts {
        // Greedy output should match; a rare difference can be a numerical tie in the target
        // (batched and one-token decoding round differently), so this warns rather than fails.
        eprintln!(
            "warning: the proxy's text differed from the target's on {} of {} prompts",
            report.totals.prompts - report.totals.identical_prompts,
            report.totals.prompts
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seconds: f64, tokens: u64, text: &str, spec: Option<(u64, u64, u64)>) -> Measurement {
        Measurement {
            seconds,
            completion_tokens: tokens,
            text: text.into(),
            speculation: spec.map(|(rounds, drafted, accepted)| Speculation {
                served_by: "speculative".into(),
                rounds,
                drafted,
                accepted,
            }),
        }
    }

    #[test]
    fn speedup_is_the_ratio_of_time_per_token() {
        let p = BenchPrompt::new("code", "x");
        let r = PromptResult::from_measurements(
            &p,
            &[m(2.0, 100, "a", None), m(2.0, 100, "b", None)],
            &[
                m(1.0, 100, "a", Some((10, 40, 30))),
                m(1.0, 100, "b", Some((10, 40, 30))),
            ],
        );
        assert_eq!(r.direct_tokens, 200);
        assert!((r.speedup - 2.0).abs() < 1e-12);
        assert!(r.identical);
        assert_eq!((r.rounds, r.drafted, r.accepted), (20, 80, 60));
        let t = Totals::of(&[r]);
        assert!(t.equal_token_counts);
        assert_eq!(t.acceptance, Some(0.75));
        // 60 accepted drafts + one target token per round, over 20 rounds.
        assert_eq!(t.tokens_per_round, Some(4.0));
    }

    #[test]
    fn different_text_or_counts_are_reported() {
        let p = BenchPrompt::new("list", "x");
        let r =
            PromptResult::from_measurements(&p, &[m(1.0, 10, "a", None)], &[m(1.0, 20, "b", None)]);
        assert!(!r.identical);
        assert!((r.speedup - 2.0).abs() < 1e-12);
        let t = Totals::of(&[r]);
        assert!(!t.equal_token_counts);
        assert_eq!(t.acceptance, None);
        assert_eq!(speedup(0, 0.0, 5, 1.0), 0.0);
    }

    #[test]
    fn prompt_files_are_json_lists_or_lines() {
        let json = r#"[{"category": "code", "prompt": "write"}]"#;
        assert_eq!(parse_prompts(json).map(|p| p.len()), Ok(1));
        let lines = "# comment\n\nfirst\n second \n";
        let p = parse_prompts(lines).unwrap_or_default();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].prompt, "second");
        assert!(parse_prompts("[nope").is_err());
        assert_eq!(builtin_prompts().len(), 10);
    }

    #[test]
    fn stats_delta_subtracts_counters_and_keeps_the_controller() {
        let before =
            json!({"rounds": 5, "drafted": 20, "accepted": 10, "requests": {"speculative": 1}});
        let after = json!({"rounds": 15, "drafted": 60, "accepted": 40, "requests": {"speculative": 3, "target_only": 1}, "controller": {"state": "on"}});
        let d = stats_delta(&before, &after);
        assert_eq!((d.rounds, d.drafted, d.accepted), (10, 40, 30));
        assert_eq!((d.speculative_requests, d.target_only_requests), (2, 1));
        assert_eq!(d.controller_after, Some(json!({"state": "on"})));
    }

    #[test]
    fn renderings_name_every_prompt_and_the_total() {
        let p = BenchPrompt::new("factual", "q");
        let r = PromptResult::from_measurements(
            &p,
            &[m(1.0, 10, "a", None)],
            &[m(0.5, 10, "a", Some((2, 8, 6)))],
        );
        let report = BenchReport {
            proxy: "http://p".into(),
            target: "http://t".into(),
            model: "tightwad".into(),
            max_tokens: 10,
            repeats: 1,
            warmup: 0,
            environment: Environment::detect(),
            totals: Totals::of(std::slice::from_ref(&r)),
            prompts: vec![r],
            proxy_stats: None,
        };
        let table = render_table(&report);
        assert!(
            table.contains("factual") && table.contains("2.00x"),
            "{table}"
        );
        let md = render_markdown(&report);
        assert!(
            md.contains("| factual |") && md.contains("**2.00x**"),
            "{md}"
        );
        let back: BenchReport =
            serde_json::from_str(&serde_json::to_string(&report).unwrap_or_default())
                .unwrap_or_else(|e| panic!("report round-trips through JSON: {e}"));
        assert_eq!(back.totals, report.totals);
    }
}
