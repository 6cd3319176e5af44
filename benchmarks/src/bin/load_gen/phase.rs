//! One phase of load: concurrent streamed requests through one front (the proxy, a second proxy,
//! the target itself) for a while, every answer judged, the process's memory and CPU sampled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

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
