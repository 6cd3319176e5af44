//! 64 concurrent streams through the proxy against real llama-servers, twice: once with
//! speculation forced on (`adaptive = false`, k = 4: every request is served by speculation
//! rounds, which the test checks), once with the defaults a user gets (the controller decides).
//! Every answer complete (ZERO failed requests) and token for token the target's own, the memory
//! of the process flat; p50/p99 latency, time to first text and RSS are reported. The same load
//! generator as the 5-minute benchmark (`benchmarks/load/run.sh`), compiled in from
//! `benchmarks/src/bin/load_gen/`. No timing assertions: these machines are shared 2-core CPUs.

#[allow(dead_code)] // The generator's command-line entry point and renderer are unused here.
#[path = "../../benchmarks/src/bin/load_gen/main.rs"]
mod load_gen;

use std::sync::Arc;
use std::time::Duration;

use tightwad_e2e::{env, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;

const CONCURRENCY: usize = 64;
const DURATION: Duration = Duration::from_secs(30);
/// RSS may grow this much between the end of the warm-up and the end of the run. A leak of even a
/// few KiB per request (hundreds of requests) or per streamed event (thousands) exceeds it; the
/// allocator's steady-state churn does not.
const RSS_GROWTH_LIMIT_MIB: f64 = 48.0;
const WARMUP_S: f64 = 10.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streams_with_speculation_forced_are_all_complete_exact_and_speculative(
) {
    let stats = load(false).await;
    let rounds = stats["rounds"].as_u64().unwrap_or(0);
    let speculative = stats["requests"]["speculative"].as_u64().unwrap_or(0);
    assert!(
        rounds > 0 && speculative > 0,
        "speculation was forced on but did not run: {stats}"
    );
    assert_eq!(
        stats["requests"]["target_only"], 0,
        "requests served target-only although speculation was forced: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_streams_with_the_adaptive_default_are_all_complete_and_exact() {
    load(true).await;
}

/// Run the load against a fresh target, draft and proxy; assert every answer complete and exact
/// and memory flat; return the pairing's stats after the run.
async fn load(adaptive: bool) -> serde_json::Value {
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
    // Forced: every round speculates with k = 4. Adaptive: the defaults a user gets (the
    // controller decides whether speculation pays). Limits that admit the whole load from one
    // client.
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.adaptive = adaptive;
    if !adaptive {
        // 64 streams share one single-threaded draft: a round may queue behind dozens of others
        // there, so the default 5 s would hand streams over to target-only, which is not what
        // this run measures.
        entry.draft_timeout_s = 60;
    }
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
        duration: DURATION,
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
    let mode = if adaptive { "adaptive" } else { "forced k=4" };
    let (first, last, max) =
        load_gen::rss_summary(&report.rss_kib, WARMUP_S).expect("RSS samples after the warm-up");
    eprintln!(
        "[{mode}] {} requests in {:.0} s: {} identical, {} ties, {} wrong, {} incomplete; served by {:?}\n\
         [{mode}] latency p50 {:.0} ms, p99 {:.0} ms; time to first text p50 {:.0} ms, p99 {:.0} ms; \
         RSS after warm-up first {first:.1} MiB, last {last:.1} MiB, max {max:.1} MiB",
        report.requests,
        report.wall.as_secs_f64(),
        report.identical,
        report.ties,
        report.wrong,
        report.incomplete,
        report.served_by,
        report.latency.p50,
        report.latency.p99,
        report.first_text.p50,
        report.first_text.p99,
    );
    assert!(
        report.requests >= CONCURRENCY,
        "only {} requests finished",
        report.requests
    );
    // Zero lost requests: no failure of any kind is tolerated (a kept-alive connection the target
    // closed used to lose about 1 request in 2000 here; see tests/tests/lost_requests.rs).
    assert_eq!(
        report.incomplete, 0,
        "{} of {} requests failed: {:?}",
        report.incomplete, report.requests, report.failures
    );
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
    assert!(
        last - first <= RSS_GROWTH_LIMIT_MIB,
        "RSS grew {:.1} MiB under steady load (first {first:.1}, last {last:.1}, max {max:.1} MiB): {:?}",
        last - first,
        report.rss_kib
    );
    let stats = proxy.stats().await;
    let pairing = stats["pairings"][0].clone();
    eprintln!(
        "[{mode}] proxy stats: rounds {}, requests {}",
        pairing["rounds"], pairing["requests"]
    );
    pairing
}
