//! Load generator: many concurrent streamed completions through the Tightwad proxy against real
//! llama-servers. Every answer is checked against the target's own greedy output for the same
//! prompt (token ids, allowing only the documented numerical ties), the proxy's resident memory is
//! sampled while it runs, and the same load sent to the target directly gives the latency the
//! proxy is compared with.
//!
//! `benchmarks/load/run.sh` runs it for 5 minutes (results in `benchmarks/results/load.{md,json}`);
//! `tests/tests/load_streams.rs` includes this file as a module and runs it for 30 seconds, which
//! is why it uses nothing beyond tokio, reqwest, futures and serde_json and parses its own flags.
//!
//! ```text
//! load_gen --proxy URL --target URL [--concurrency 64] [--seconds 300] [--direct-seconds 60]
//!          [--max-tokens 32] [--proxy-target-only URL] [--proxy-pid PID] [--json FILE]
//!          [--markdown FILE]
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Below this top-two log-probability gap the target's own choice is a numerical tie (batched and
/// one-token decoding run different kernels); the same rule as the exactness tests.
pub const TIE_MARGIN: f64 = 0.05;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The proxy's base URL (`http://host:port`).
    pub proxy_url: String,
    /// The target llama-server's base URL: references, and the direct-latency phase.
    pub target_url: String,
    pub concurrency: usize,
    /// How long new requests are started through the proxy (in-flight ones then finish).
    pub duration: Duration,
    /// The same for the target directly; zero skips the direct phase.
    pub direct_duration: Duration,
    pub max_tokens: usize,
    /// A second proxy for the same target without a draft (optional): its phase, as long as the
    /// direct one, shows the relay's own cost apart from what the draft server's work costs a
    /// target that shares its CPU.
    pub target_only_proxy_url: Option<String>,
    /// The process whose RSS is sampled (the proxy's), if any.
    pub rss_pid: Option<u32>,
    pub rss_every: Duration,
}

/// The prompts requests cycle through: prose, code, lists, other scripts, a long one.
pub fn prompts() -> Vec<String> {
    let mut prompts: Vec<String> = [
        "Once upon a time",
        "The capital of France is",
        "def quicksort(arr):",
        "1, 2, 3, 4, 5,",
        "Dear Sir or Madam,",
        "Ingredients:\n- 2 eggs\n-",
        "Q: What is the speed of light?\nA:",
        "东京の天気は",
        "Москва — столица",
        "#include <stdio.h>\nint main() {",
        "SELECT name FROM users WHERE",
        "🙂 emoji test:",
        "<html><body><h1>",
        "JSON: {\"name\": \"Ada\", \"age\":",
        "The history of lighthouses",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut long = String::from("A long prompt: ");
    for i in 0..40 {
        long.push_str(&format!("sentence {i} talks about lighthouses and tides. "));
    }
    prompts.push(long);
    prompts
}

/// The target alone: greedy tokens and, per position, the top-two gap and the runner-up.
#[derive(Debug, Clone)]
pub struct Reference {
    pub prompt: String,
    pub tokens: Vec<u64>,
    pub margins: Vec<f64>,
    pub runner_up: Vec<u64>,
}

/// Ask the target itself (fresh prompt evaluation, no cache) what it generates for `prompt`.
pub async fn reference(
    client: &reqwest::Client,
    target_url: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<Reference, String> {
    let body = json!({
        "prompt": prompt, "n_predict": max_tokens, "temperature": 0, "n_probs": 2,
        "return_tokens": true, "cache_prompt": false,
    });
    let reply: Value = client
        .post(format!("{target_url}/completion"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("reference request: {e}"))?
        .json()
        .await
        .map_err(|e| format!("reference reply: {e}"))?;
    let tokens: Vec<u64> = reply["tokens"]
        .as_array()
        .ok_or_else(|| format!("no tokens in the reference reply: {reply}"))?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let mut margins = Vec::new();
    let mut runner_up = Vec::new();
    for position in reply["completion_probabilities"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let top = position["top_logprobs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let logprob = |i: usize| {
            top.get(i)
                .and_then(|c| c["logprob"].as_f64())
                .unwrap_or(f64::NEG_INFINITY)
        };
        margins.push(logprob(0) - logprob(1));
        runner_up.push(
            top.get(1)
                .and_then(|c| c["id"].as_u64())
                .unwrap_or(u64::MAX),
        );
    }
    Ok(Reference {
        prompt: prompt.to_string(),
        tokens,
        margins,
        runner_up,
    })
}

/// How one response compared with the target alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Token for token the target's own output (or, direct phase: complete).
    Identical,
    /// Identical up to a numerical tie where the proxy took the target's runner-up.
    Tie,
    /// A different token where the target was not at a tie: an exactness failure.
    Wrong(String),
    /// Not a complete answer: an HTTP error, an error event, no `[DONE]`, a broken stream.
    Incomplete(String),
}

pub fn judge(tokens: &[u64], reference: &Reference) -> Verdict {
    match tokens
        .iter()
        .zip(&reference.tokens)
        .position(|(a, b)| a != b)
    {
        None if tokens.len() == reference.tokens.len() => Verdict::Identical,
        None => Verdict::Wrong(format!(
            "{} tokens where the target alone gave {} ({:?})",
            tokens.len(),
            reference.tokens.len(),
            reference.prompt
        )),
        Some(i) => {
            let margin = reference.margins.get(i).copied().unwrap_or(f64::INFINITY);
            if margin < TIE_MARGIN && reference.runner_up.get(i) == Some(&tokens[i]) {
                Verdict::Tie
            } else {
                Verdict::Wrong(format!(
                    "token {i}: {} instead of the target's {} (top-two margin {margin:.3}) ({:?})",
                    tokens[i], reference.tokens[i], reference.prompt
                ))
            }
        }
    }
}

/// One streamed request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub latency: Duration,
    /// Time to the first event with text.
    pub first_text: Option<Duration>,
    pub tokens: usize,
    pub verdict: Verdict,
    pub served_by: Option<String>,
}

/// Which server a phase talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Proxy,
    Direct,
}

/// Send one streamed `/v1/completions` request and read it to the end.
pub async fn stream_once(
    client: &reqwest::Client,
    base_url: &str,
    via: Via,
    reference: &Reference,
    max_tokens: usize,
) -> Outcome {
    let started = Instant::now();
    let mut body = json!({
        "prompt": reference.prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
    });
    if via == Via::Proxy {
        body["return_token_ids"] = json!(true);
    }
    let incomplete = |why: String, started: Instant| Outcome {
        latency: started.elapsed(),
        first_text: None,
        tokens: 0,
        verdict: Verdict::Incomplete(why),
        served_by: None,
    };
    let mut response = match client
        .post(format!("{base_url}/v1/completions"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return incomplete(format!("request failed: {}", with_sources(&e)), started),
    };
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        return incomplete(format!("HTTP {status}: {text}"), started);
    }
    let mut text = String::new();
    let mut first_text = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                text.push_str(&String::from_utf8_lossy(&chunk));
                if first_text.is_none() && text.contains("\"text\":\"") {
                    first_text = Some(started.elapsed());
                }
            }
            Ok(None) => break,
            Err(e) => return incomplete(format!("stream broke: {}", with_sources(&e)), started),
        }
    }
    let latency = started.elapsed();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data:").map(str::trim))
        .collect();
    if events.last() != Some(&"[DONE]") {
        return incomplete(format!("no [DONE] at the end of: {text}"), started);
    }
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| **e != "[DONE]")
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    if let Some(error) = chunks.iter().find(|c| c.get("error").is_some()) {
        return incomplete(format!("error event: {error}"), started);
    }
    let finished = chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"].is_string());
    if !finished {
        return incomplete(format!("no finish_reason in: {text}"), started);
    }
    let served_by = chunks
        .iter()
        .find_map(|c| c["tightwad"]["served_by"].as_str().map(str::to_string));
    let (tokens, verdict) = match via {
        Via::Direct => (
            chunks
                .iter()
                .rev()
                .find_map(|c| c["usage"]["completion_tokens"].as_u64())
                .unwrap_or(0) as usize,
            Verdict::Identical,
        ),
        Via::Proxy => {
            let Some(ids) = chunks
                .iter()
                .find_map(|c| c["choices"][0]["token_ids"].as_array())
            else {
                return incomplete(format!("no token_ids in: {text}"), started);
            };
            let ids: Vec<u64> = ids.iter().filter_map(Value::as_u64).collect();
            (ids.len(), judge(&ids, reference))
        }
    };
    Outcome {
        latency,
        first_text,
        tokens,
        verdict,
        served_by,
    }
}

/// An error with its causes (reqwest's own text leaves out what the connection said).
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(samples: &[Duration]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least p of the samples at or below it.
        let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Percentiles {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: ms[ms.len() - 1],
        }
    }

    fn json(&self) -> Value {
        json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max})
    }
}

/// What one phase (through the proxy, or direct) measured.
#[derive(Debug, Clone, Default)]
pub struct PhaseReport {
    pub wall: Duration,
    pub requests: usize,
    pub identical: usize,
    pub ties: usize,
    pub wrong: usize,
    pub incomplete: usize,
    /// Of the incomplete: the proxy could not send a request to a target that was up the whole
    /// time ("error sending request": a kept-alive connection the server had just closed).
    pub connection_reuse_failures: usize,
    /// The first few failures, verbatim.
    pub failures: Vec<String>,
    pub tokens: usize,
    pub latency: Percentiles,
    pub first_text: Percentiles,
    pub served_by: BTreeMap<String, usize>,
    /// (seconds since the phase began, RSS in KiB) of the sampled process.
    pub rss_kib: Vec<(f64, u64)>,
    /// CPU seconds the sampled process used during the phase.
    pub cpu_seconds: Option<f64>,
}

impl PhaseReport {
    pub fn complete(&self) -> usize {
        self.requests - self.incomplete
    }

    pub fn json(&self) -> Value {
        json!({
            "wall_s": self.wall.as_secs_f64(),
            "requests": self.requests,
            "complete": self.complete(),
            "identical": self.identical,
            "ties": self.ties,
            "wrong": self.wrong,
            "incomplete": self.incomplete,
            "connection_reuse_failures": self.connection_reuse_failures,
            "failures": self.failures,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens as f64 / self.wall.as_secs_f64().max(1e-9),
            "latency_ms": self.latency.json(),
            "first_text_ms": self.first_text.json(),
            "served_by": self.served_by,
            "cpu_seconds": self.cpu_seconds,
            "rss_kib": self.rss_kib.iter().map(|(t, k)| json!([t, k])).collect::<Vec<_>>(),
        })
    }
}

/// Resident memory of a process in KiB (`VmRSS`), `None` when it is gone.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time (user + system) a process has used so far, in seconds (`/proc/PID/stat`, at the
/// usual 100 clock ticks per second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its closing paren):
    // state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// `concurrency` workers each start request after request (cycling through the references) until
/// `duration` is over; requests in flight then finish. RSS is sampled throughout.
pub async fn run_phase(
    config: &LoadConfig,
    base_url: &str,
    via: Via,
    duration: Duration,
    references: Arc<Vec<Reference>>,
) -> PhaseReport {
    // A new connection per request: llama-server (cpp-httplib) closes kept-alive connections on
    // its own schedule, and a request sent on one as it closes fails before the server saw it
    // ("connection closed before message completed"; 15% of direct requests under this load).
    // Connecting anew costs well under a millisecond on loopback; both phases do the same.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_else(|e| panic!("HTTP client: {e}"));
    let started = Instant::now();
    let deadline = started + duration;
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let cpu_before = config.rss_pid.and_then(cpu_seconds);
    let sampler = config.rss_pid.map(|pid| {
        let every = config.rss_every;
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match rss_kib_of(pid) {
                    Some(kib) => samples.push((started.elapsed().as_secs_f64(), kib)),
                    None => break,
                }
                tokio::time::sleep(every).await;
            }
            samples
        })
    });
    let workers: Vec<_> = (0..config.concurrency)
        .map(|worker| {
            let client = client.clone();
            let base_url = base_url.to_string();
            let references = references.clone();
            let max_tokens = config.max_tokens;
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut next = worker;
                while Instant::now() < deadline {
                    let reference = &references[next % references.len()];
                    outcomes
                        .push(stream_once(&client, &base_url, via, reference, max_tokens).await);
                    // Workers start at different prompts, so the prompts in flight are mixed.
                    next += 1;
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for worker in workers {
        match worker.await {
            Ok(o) => outcomes.extend(o),
            Err(e) => outcomes.push(Outcome {
                latency: Duration::ZERO,
                first_text: None,
                tokens: 0,
                verdict: Verdict::Incomplete(format!("worker failed: {e}")),
                served_by: None,
            }),
        }
    }
    let wall = started.elapsed();
    stop_sampling.store(true, Ordering::Relaxed);
    let mut rss_kib = match sampler {
        Some(task) => task.await.unwrap_or_default(),
        None => vec![],
    };
    if let Some(kib) = config.rss_pid.and_then(rss_kib_of) {
        rss_kib.push((started.elapsed().as_secs_f64(), kib));
    }
    let cpu = match (cpu_before, config.rss_pid.and_then(cpu_seconds)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let mut report = summarize(outcomes, wall, rss_kib);
    report.cpu_seconds = cpu;
    report
}

fn summarize(outcomes: Vec<Outcome>, wall: Duration, rss_kib: Vec<(f64, u64)>) -> PhaseReport {
    let mut report = PhaseReport {
        wall,
        requests: outcomes.len(),
        rss_kib,
        ..PhaseReport::default()
    };
    let mut latencies = Vec::new();
    let mut first_texts = Vec::new();
    for outcome in outcomes {
        match &outcome.verdict {
            Verdict::Identical => report.identical += 1,
            Verdict::Tie => report.ties += 1,
            Verdict::Wrong(why) => {
                report.wrong += 1;
                if report.failures.len() < 5 {
                    report.failures.push(format!("wrong: {why}"));
                }
            }
            Verdict::Incomplete(why) => {
                report.incomplete += 1;
                if why.contains("error sending request") {
                    report.connection_reuse_failures += 1;
                }
                if report.failures.len() < 5 {
                    report.failures.push(format!("incomplete: {why}"));
                }
                continue;
            }
        }
        report.tokens += outcome.tokens;
        latencies.push(outcome.latency);
        first_texts.extend(outcome.first_text);
        if let Some(by) = outcome.served_by {
            *report.served_by.entry(by).or_default() += 1;
        }
    }
    report.latency = Percentiles::of(&latencies);
    report.first_text = Percentiles::of(&first_texts);
    report
}

/// What a whole run measured.
pub struct RunReport {
    pub direct: Option<PhaseReport>,
    pub target_only_proxy: Option<PhaseReport>,
    pub proxy: PhaseReport,
}

/// The whole run: references, the direct phase and the no-draft proxy phase (if asked for),
/// then the proxy phase.
pub async fn run(config: &LoadConfig) -> Result<RunReport, String> {
    let client = reqwest::Client::new();
    let mut references = Vec::new();
    for prompt in prompts() {
        references.push(reference(&client, &config.target_url, &prompt, config.max_tokens).await?);
    }
    let references = Arc::new(references);
    let mut direct = None;
    let mut target_only_proxy = None;
    if config.direct_duration > Duration::ZERO {
        direct = Some(
            run_phase(
                config,
                &config.target_url,
                Via::Direct,
                config.direct_duration,
                references.clone(),
            )
            .await,
        );
        if let Some(url) = &config.target_only_proxy_url {
            // No RSS sampling here: `rss_pid` is the main proxy, idle during this phase.
            let unsampled = LoadConfig {
                rss_pid: None,
                ..config.clone()
            };
            target_only_proxy = Some(
                run_phase(
                    &unsampled,
                    url,
                    Via::Proxy,
                    config.direct_duration,
                    references.clone(),
                )
                .await,
            );
        }
    }
    let proxy = run_phase(
        config,
        &config.proxy_url,
        Via::Proxy,
        config.duration,
        references,
    )
    .await;
    Ok(RunReport {
        direct,
        target_only_proxy,
        proxy,
    })
}

/// RSS figures of a phase: (first sample after `warmup_s`, last, max), in MiB.
pub fn rss_summary(samples: &[(f64, u64)], warmup_s: f64) -> Option<(f64, f64, f64)> {
    let after_warmup: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= warmup_s)
        .map(|(_, k)| *k)
        .collect();
    let first = *after_warmup.first()?;
    let last = *after_warmup.last()?;
    let max = *after_warmup.iter().max()?;
    let mib = |k: u64| k as f64 / 1024.0;
    Some((mib(first), mib(last), mib(max)))
}

/// The results as JSON (everything) and Markdown (the table for benchmarks/results/load.md).
pub fn render(config: &LoadConfig, report: &RunReport) -> (Value, String) {
    let direct = report.direct.as_ref();
    let target_only = report.target_only_proxy.as_ref();
    let proxy = &report.proxy;
    let json = json!({
        "concurrency": config.concurrency,
        "proxy_seconds": config.duration.as_secs_f64(),
        "direct_seconds": config.direct_duration.as_secs_f64(),
        "max_tokens": config.max_tokens,
        "prompts": prompts().len(),
        "proxy": proxy.json(),
        "direct": direct.map(PhaseReport::json),
        "target_only_proxy": target_only.map(PhaseReport::json),
    });
    let mut md = String::new();
    md.push_str(&format!(
        "{} concurrent streamed completions (greedy, max_tokens {}, {} prompts in rotation); \
         proxy phase {:.0} s, direct phase {:.0} s.\n\n",
        config.concurrency,
        config.max_tokens,
        prompts().len(),
        config.duration.as_secs_f64(),
        config.direct_duration.as_secs_f64()
    ));
    md.push_str("| | requests | complete | identical | ties | wrong | tokens/s | latency p50 / p99 (ms) | first text p50 / p99 (ms) |\n|---|---|---|---|---|---|---|---|---|\n");
    let row = |name: &str, r: &PhaseReport| {
        format!(
            "| {name} | {} | {} | {} | {} | {} | {:.1} | {:.0} / {:.0} | {:.0} / {:.0} |\n",
            r.requests,
            r.complete(),
            r.identical,
            r.ties,
            r.wrong,
            r.tokens as f64 / r.wall.as_secs_f64().max(1e-9),
            r.latency.p50,
            r.latency.p99,
            r.first_text.p50,
            r.first_text.p99
        )
    };
    if let Some(d) = direct {
        md.push_str(&row("target direct", d));
    }
    if let Some(t) = target_only {
        md.push_str(&row("through tightwad, no draft", t));
    }
    md.push_str(&row("through tightwad (with draft)", proxy));
    if let Some(d) = direct {
        md.push_str(&format!(
            "\nOverhead through the proxy under this load: latency p50 {:+.0} ms, p99 {:+.0} ms; \
             first text p50 {:+.0} ms, p99 {:+.0} ms.\n",
            proxy.latency.p50 - d.latency.p50,
            proxy.latency.p99 - d.latency.p99,
            proxy.first_text.p50 - d.first_text.p50,
            proxy.first_text.p99 - d.first_text.p99
        ));
        if let Some(t) = target_only {
            md.push_str(&format!(
                "Without a draft (the relay alone, same duration as direct): latency p50 {:+.0} ms, \
                 p99 {:+.0} ms; first text p50 {:+.0} ms, p99 {:+.0} ms.\n",
                t.latency.p50 - d.latency.p50,
                t.latency.p99 - d.latency.p99,
                t.first_text.p50 - d.first_text.p50,
                t.first_text.p99 - d.first_text.p99
            ));
        }
    }
    if let Some((first, last, max)) = rss_summary(&proxy.rss_kib, 10.0) {
        md.push_str(&format!(
            "\nProxy RSS (sampled every {:.0} s, after 10 s of warm-up): first {first:.1} MiB, \
             last {last:.1} MiB, max {max:.1} MiB.\n",
            config.rss_every.as_secs_f64()
        ));
    }
    if let Some(cpu) = proxy.cpu_seconds {
        md.push_str(&format!(
            "\nProxy CPU time during its phase: {cpu:.1} s ({:.0}% of one core).\n",
            100.0 * cpu / proxy.wall.as_secs_f64().max(1e-9)
        ));
    }
    if let Some(d) = direct.filter(|d| !d.failures.is_empty()) {
        md.push_str(&format!("\nDirect failures: {:?}\n", d.failures));
    }
    if !proxy.served_by.is_empty() {
        md.push_str(&format!("\nServed by: {:?}.\n", proxy.served_by));
    }
    if !proxy.failures.is_empty() {
        md.push_str(&format!("\nFailures: {:?}\n", proxy.failures));
    }
    (json, md)
}

fn usage() -> ! {
    eprintln!(
        "usage: load_gen --proxy URL --target URL [--concurrency 64] [--seconds 300] \
         [--direct-seconds 60] [--max-tokens 32] [--proxy-target-only URL] [--proxy-pid PID] [--json FILE] [--markdown FILE]"
    );
    std::process::exit(2)
}

#[allow(dead_code)] // Also compiled into tests/tests/load_streams.rs, which has its own entry point.
fn main() {
    let mut args = std::env::args().skip(1);
    let mut config = LoadConfig {
        proxy_url: String::new(),
        target_url: String::new(),
        concurrency: 64,
        duration: Duration::from_secs(300),
        direct_duration: Duration::from_secs(60),
        max_tokens: 32,
        target_only_proxy_url: None,
        rss_pid: None,
        rss_every: Duration::from_secs(2),
    };
    let mut json_path = None;
    let mut markdown_path = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        let number = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--proxy" => config.proxy_url = value().trim_end_matches('/').to_string(),
            "--target" => config.target_url = value().trim_end_matches('/').to_string(),
            "--concurrency" => config.concurrency = number(value()) as usize,
            "--seconds" => config.duration = Duration::from_secs(number(value())),
            "--direct-seconds" => config.direct_duration = Duration::from_secs(number(value())),
            "--max-tokens" => config.max_tokens = number(value()) as usize,
            "--proxy-target-only" => {
                config.target_only_proxy_url = Some(value().trim_end_matches('/').to_string())
            }
            "--proxy-pid" => config.rss_pid = Some(number(value()) as u32),
            "--json" => json_path = Some(value()),
            "--markdown" => markdown_path = Some(value()),
            _ => usage(),
        }
    }
    if config.proxy_url.is_empty() || config.target_url.is_empty() || config.concurrency == 0 {
        usage();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| {
        eprintln!("load_gen: cannot start the runtime: {e}");
        std::process::exit(1)
    });
    let report = match runtime.block_on(run(&config)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load_gen: {e}");
            std::process::exit(1)
        }
    };
    let (json, markdown) = render(&config, &report);
    let proxy = &report.proxy;
    print!("{markdown}");
    let write = |path: Option<String>, text: String| {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("load_gen: cannot write {path}: {e}");
                std::process::exit(1)
            }
        }
    };
    write(
        json_path,
        serde_json::to_string_pretty(&json).unwrap_or_default() + "\n",
    );
    write(markdown_path, markdown);
    if proxy.wrong > 0 || proxy.incomplete > 0 {
        eprintln!(
            "load_gen: {} wrong and {} incomplete answers through the proxy",
            proxy.wrong, proxy.incomplete
        );
        std::process::exit(1)
    }
}
