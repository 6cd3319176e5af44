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

mod measure;
mod prompts;
mod render;
mod report;
#[cfg(test)]
mod tests;

pub use measure::{compare, compare_with_progress};
pub use prompts::{builtin_prompts, load_prompts, BenchPrompt};
pub use render::{render_markdown, render_table};
pub use report::{
    rate, speedup, stats_delta, BenchReport, Environment, Measurement, PromptResult, Speculation,
    StatsDelta, Totals,
};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
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
