//! Load generator: many concurrent streamed completions through the Tightwad proxy against real
//! llama-servers. Every answer is checked against the target's own greedy output for the same
//! prompt (token ids, allowing only the documented numerical ties), the proxy's resident memory is
//! sampled while it runs, and the same load sent to the target directly gives the latency the
//! proxy is compared with.
//!
//! `benchmarks/load/run.sh` runs it for 5 minutes (results in `benchmarks/results/load.{md,json}`);
//! `tests/tests/load_streams.rs` includes this file (and so its rooms `check`, `phase`, `report`) as a module and runs it for 30 seconds, which
//! is why it uses nothing beyond tokio, reqwest, futures and serde_json and parses its own flags.
//!
//! ```text
//! load_gen --proxy URL --target URL [--concurrency 64] [--seconds 300] [--direct-seconds 60]
//!          [--max-tokens 32] [--proxy-target-only URL] [--proxy-pid PID] [--json FILE]
//!          [--markdown FILE]
//! ```

mod check;
mod phase;
mod report;

pub use check::*;
pub use phase::*;
pub use report::*;

use std::sync::Arc;
use std::time::Duration;

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
