//! 64 concurrent streams through the proxy for 30 seconds against real llama-servers: every answer
//! complete and token for token the target's own, and the memory of the process flat. The same
//! load generator as the 5-minute benchmark (`benchmarks/load/run.sh`), compiled in from
//! `benchmarks/src/bin/load_gen.rs`. No timing assertions: these machines are shared 2-core CPUs.

#[allow(dead_code)] // The generator's command-line entry point and renderer are unused here.
#[path = "../../benchmarks/src/bin/load_gen.rs"]
mod load_gen;

use std::sync::Arc;
use std::time::Duration;

use tightwad_e2e::{env, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;

const CONCURRENCY: usize = 64;
/// RSS may grow this much between the end of the warm-up and the end of the run. A leak of even a
/// few KiB per request (hundreds of requests) or per streamed event (thousands) exceeds it; the
/// allocator's steady-state churn does not.
const RSS_GROWTH_LIMIT_MIB: f64 = 48.0;
const WARMUP_S: f64 = 10.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streams_are_complete_and_exact_and_memory_stays_flat() {
    let env = env();
    // The shape the README recommends for a loaded target: 8 slots, one shared KV pool.
    let target = LlamaServer::start(
        &env,
        &env.model("target.gguf"),
        ServerOptions {
            slots: 8,
            ctx: 32768,
            ..ServerOptions::default()
        },
    )
    .await;
    let draft = LlamaServer::start(
        &env,
        &env.model("draft.gguf"),
        ServerOptions {
            slots: 2,
            ..ServerOptions::default()
        },
    )
    .await;
    // The defaults a user gets (the controller decides whether speculation pays), with limits
    // that admit the whole load from one client.
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.adaptive = true;
    let proxy = RunningProxy::start_with(ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        pairings: vec![entry],
        max_concurrent_requests: 2 * CONCURRENCY,
        max_concurrent_per_client: 2 * CONCURRENCY,
        ..ProxyConfig::default()
    })
    .await;

    let config = load_gen::LoadConfig {
        proxy_url: proxy.url.clone(),
        target_url: target.url.clone(),
        concurrency: CONCURRENCY,
        duration: Duration::from_secs(30),
        direct_duration: Duration::ZERO,
        max_tokens: 24,
        target_only_proxy_url: None,
        // The proxy runs in this process: its RSS includes the load generator's clients, which
        // makes the bound stricter, not looser.
        rss_pid: Some(std::process::id()),
        rss_every: Duration::from_secs(1),
    };
    let client = reqwest::Client::new();
    let mut references = Vec::new();
    for prompt in load_gen::prompts() {
        references.push(
            load_gen::reference(&client, &target.url, &prompt, config.max_tokens)
                .await
                .expect("the target answers a reference request"),
        );
    }
    let report = load_gen::run_phase(
        &config,
        &proxy.url,
        load_gen::Via::Proxy,
        config.duration,
        Arc::new(references),
    )
    .await;
    eprintln!(
        "{} requests: {} identical, {} ties, {} wrong, {} incomplete; latency {:?} ms; served by {:?}",
        report.requests,
        report.identical,
        report.ties,
        report.wrong,
        report.incomplete,
        report.latency,
        report.served_by
    );
    assert!(
        report.requests >= CONCURRENCY,
        "only {} requests finished",
        report.requests
    );
    // Known proxy bug, reported: a pooled connection to llama-server that the server closes just
    // as the proxy reuses it fails the request with `backend_unavailable` (about 1 request in
    // 2000 under this load; a request the server never saw is safe to retry, the proxy does not
    // yet). Tolerated here at that rate, so the test does not flake; every other failure fails.
    assert_eq!(
        report.incomplete - report.connection_reuse_failures,
        0,
        "incomplete answers: {:?}",
        report.failures
    );
    assert!(
        report.connection_reuse_failures <= 1 + report.requests / 100,
        "{} requests failed on reused connections: {:?}",
        report.connection_reuse_failures,
        report.failures
    );
    if report.connection_reuse_failures > 0 {
        eprintln!(
            "note: {} requests failed on a reused target connection (known bug): {:?}",
            report.connection_reuse_failures, report.failures
        );
    }
    assert_eq!(
        report.wrong, 0,
        "answers that differ from the target's own: {:?}",
        report.failures
    );
    assert!(
        report.ties * 5 <= report.requests,
        "{} of {} answers ended at numerical ties: too many to be ties",
        report.ties,
        report.requests
    );
    let (first, last, max) =
        load_gen::rss_summary(&report.rss_kib, WARMUP_S).expect("RSS samples after the warm-up");
    eprintln!("RSS after warm-up: first {first:.1} MiB, last {last:.1} MiB, max {max:.1} MiB");
    assert!(
        last - first <= RSS_GROWTH_LIMIT_MIB,
        "RSS grew {:.1} MiB under steady load (first {first:.1}, last {last:.1}, max {max:.1} MiB): {:?}",
        last - first,
        report.rss_kib
    );
}
