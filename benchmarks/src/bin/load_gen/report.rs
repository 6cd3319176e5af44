//! What a run found, as JSON and as Markdown: latency percentiles per phase, completeness and
//! exactness, the proxy's memory over the run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;

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

/// What a whole run measured.
pub struct RunReport {
    pub direct: Option<PhaseReport>,
    pub target_only_proxy: Option<PhaseReport>,
    pub proxy: PhaseReport,
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
