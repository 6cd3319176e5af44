//! `tightwad bench` end to end: the comparison against a SIMULATED target and the real proxy in
//! front of it, and the files `run` writes. Checks arithmetic and bookkeeping, never speed.

use std::time::Duration;
use tightwad_serve::engine::VerifyMode;

use tightwad_benchmarks::sim::{SimConfig, SimServer};
use tightwad_benchmarks::suite::InProcessProxy;
use tightwad_coordinator::bench::{self, BenchArgs, BenchPrompt, BenchReport, CompareConfig};

async fn servers() -> (SimServer, SimServer) {
    let target = SimServer::start_local(SimConfig::target(1000.0, 0.05))
        .await
        .expect("sim target");
    let draft = SimServer::start_local(SimConfig::draft(10_000.0, 0.8, 5))
        .await
        .expect("sim draft");
    (target, draft)
}

#[tokio::test]
async fn the_report_adds_up_what_the_proxy_reported() {
    let (target, draft) = servers().await;
    let proxy = InProcessProxy::start(
        &target.url(),
        Some(&draft.url()),
        false,
        4,
        VerifyMode::Auto,
    )
    .await
    .expect("proxy");
    let prompts = vec![
        BenchPrompt {
            category: "code".into(),
            prompt: "def f(x):".into(),
        },
        BenchPrompt {
            category: "list".into(),
            prompt: "List three colours.".into(),
        },
    ];
    let report = bench::compare(CompareConfig {
        prompts,
        max_tokens: 24,
        repeats: 2,
        warmup: 1,
        pause: Duration::ZERO,
        request_timeout: Duration::from_secs(30),
        ..CompareConfig::new(proxy.url(), &target.url())
    })
    .await
    .expect("comparison runs");
    let t = &report.totals;
    assert_eq!(t.prompts, 2);
    assert_eq!(
        t.direct_tokens,
        2 * 2 * 24,
        "tokens come from usage, summed over repeats"
    );
    assert!(t.equal_token_counts);
    assert_eq!(
        t.identical_prompts, 2,
        "greedy text must match the target's"
    );
    let rounds: u64 = report.prompts.iter().map(|p| p.rounds).sum();
    assert_eq!(t.rounds, rounds);
    assert!(t.rounds > 0, "speculation was pinned on");
    assert!(t.accepted <= t.drafted);
    let per_round = t.tokens_per_round.expect("rounds were run");
    assert!((per_round - (t.accepted + t.rounds) as f64 / t.rounds as f64).abs() < 1e-9);
    // The stats endpoint saw exactly the measured requests (the warm-up came before).
    let stats = report
        .proxy_stats
        .as_ref()
        .expect("a tightwad proxy has stats");
    assert_eq!(stats.rounds, t.rounds);
    assert_eq!(stats.drafted, t.drafted);
    assert_eq!(stats.accepted, t.accepted);
    assert_eq!(stats.speculative_requests, 4);
    for p in &report.prompts {
        assert_eq!(p.served_by, vec!["speculative", "speculative"]);
        assert!(p.speedup > 0.0);
    }
}

#[tokio::test]
async fn run_writes_the_json_and_markdown_files() {
    let (target, _draft) = servers().await;
    let proxy = InProcessProxy::start(&target.url(), None, true, 4, VerifyMode::Auto)
        .await
        .expect("proxy");
    let dir = std::env::temp_dir().join(format!("tightwad-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "# two prompts\nHello there\nWrite a haiku\n").expect("prompt file");
    let json_path = dir.join("report.json");
    let md_path = dir.join("report.md");
    // A server primed besides the target (as for a plain llama-server measured as the proxy).
    let primed = SimServer::start_local(SimConfig::target(1000.0, 0.05))
        .await
        .expect("sim server to prime");
    let code = bench::run(BenchArgs {
        proxy: proxy.url().to_string(),
        target: target.url(),
        model: "tightwad".into(),
        prompts: Some(prompts),
        max_tokens: 8,
        repeats: 1,
        warmup: 0,
        json: true,
        out: Some(json_path.clone()),
        markdown: Some(md_path.clone()),
        prime: vec![primed.url()],
    })
    .await
    .expect("bench runs");
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let report: BenchReport =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("json written"))
            .expect("the JSON is a report");
    assert_eq!(report.totals.prompts, 2);
    assert_eq!(report.totals.proxy_tokens, 16);
    assert!(report.environment.nproc >= 1);
    assert_eq!(
        primed
            .counters()
            .completion_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        2,
        "--prime sends each prompt once, before it is measured"
    );
    let md = std::fs::read_to_string(&md_path).expect("markdown written");
    assert!(
        md.contains("| custom |") && md.contains("**total**"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
