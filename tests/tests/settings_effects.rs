//! Settings checked by their EFFECT on real llama-servers (issue 20, "Settings that do not do what
//! they say"): a setting that is sent but does not act fails here.

use serde_json::json;
use tightwad_e2e::{compare, env, proxy_token_ids, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;
use tightwad_serve::server::Proxy;

fn config(target: &str, draft: Option<&str>, k: usize) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![RunningProxy::entry(target, draft, k)],
        ..ProxyConfig::default()
    }
}

/// `max_tokens_limit` holds every spelling of "how many tokens": `n_predict` (llama-server reads
/// it before `max_tokens`, and it sends the request to the target), and `max_tokens` beside
/// `max_completion_tokens` on /v1/completions (the engine reads `max_tokens` there). Before, each
/// of these got 120 tokens past a limit of 16.
#[tokio::test]
async fn max_tokens_limit_holds_n_predict_and_every_spelling() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url, None, 4);
    c.max_tokens_limit = Some(16);
    let proxy = RunningProxy::start_with(c).await;
    let prompt = "Write a long story about a dragon who learns to bake bread.";
    for (path, body) in [
        (
            "/v1/completions",
            json!({"prompt": prompt, "n_predict": 120, "ignore_eos": true, "temperature": 0}),
        ),
        (
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": 8, "n_predict": 120, "temperature": 0}),
        ),
        (
            "/v1/completions",
            json!({"prompt": prompt, "max_completion_tokens": 8, "max_tokens": 120, "temperature": 0}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": prompt}], "n_predict": -1, "temperature": 0}),
        ),
    ] {
        let (s, v) = proxy.post(path, &body).await;
        if s == 200 {
            let n = v["usage"]["completion_tokens"].as_u64().expect("usage");
            assert!(
                n <= 16,
                "{body} generated {n} tokens past the limit of 16: {v}"
            );
        } else {
            assert_eq!(s, 400, "{body}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap_or("").contains("16"),
                "{v}"
            );
        }
    }
    // Within the limit, each spelling still acts (the target generates what was asked).
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "n_predict": 5, "ignore_eos": true, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    // No spelling at all: the limit is the default.
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "ignore_eos": true, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64() <= Some(16), "{v}");
}

/// `draft_tokens` above what the controller drafts (8) is refused with a message that says the
/// range, and under `adaptive = false` the stats report the pinned k (before: 12 was accepted and
/// ran as 8; `controller.k` showed 4 while rounds drafted 6).
#[tokio::test]
async fn draft_tokens_above_eight_is_refused_and_a_pinned_k_is_reported() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(6)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let e = match Proxy::bind(&config(&target.url, Some(&draft.url), 12)).await {
        Ok(_) => panic!("draft_tokens = 12 was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("draft_tokens") && e.contains("between 1 and 8"),
        "{e}"
    );
    let proxy = RunningProxy::start_with(config(&target.url, Some(&draft.url), 6)).await;
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let stats = proxy.stats().await;
    assert_eq!(stats["pairings"][0]["controller"]["k"], 6, "{stats}");
}

/// `target_timeout_s` bounds forwarded requests as it bounds the engine's: a target stopped with
/// `SIGSTOP` (connections accepted, nothing answered) gets a 504 within the timeout on a forward
/// through the engine (a field only the target drives), on a streamed forward, and on a target
/// route. Before, a forwarded request waited for ever.
#[tokio::test]
async fn target_timeout_bounds_forwarded_requests_to_a_stopped_target() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url, None, 4);
    c.pairings[0].target_timeout_s = 2;
    let proxy = RunningProxy::start_with(c).await;
    // The facts are probed while the target still answers.
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Once", "max_tokens": 2, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    target.signal("STOP");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .expect("client");
    for (path, body) in [
        (
            "/v1/completions",
            json!({"prompt": "Once", "max_tokens": 4, "presence_penalty": 0.5}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "presence_penalty": 0.5, "stream": true}),
        ),
        ("/tokenize", json!({"content": "hello"})),
    ] {
        let started = std::time::Instant::now();
        let r = client
            .post(format!("{}{}", proxy.url, path))
            .json(&body)
            .send()
            .await;
        let waited = started.elapsed();
        let r = r.unwrap_or_else(|e| panic!("{path}: no answer in {waited:?}: {e}"));
        assert_eq!(r.status(), 504, "{path}: {:?}", r.text().await);
        assert!(
            waited < std::time::Duration::from_secs(6),
            "{path}: 504 after {waited:?}"
        );
    }
    target.signal("CONT");
}

/// A request without `temperature` gets the target's own default (its `--temp`, from `/props`),
/// as the target alone would give it: with `--temp 0` the answer through the proxy is the
/// target's greedy answer token for token. Before, the proxy sampled at 0.8.
#[tokio::test]
async fn a_request_without_temperature_uses_the_targets_own_default() {
    let env = env();
    let mut opts = ServerOptions::target(4);
    opts.extra = vec!["--temp".into(), "0".into()];
    let target = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let proxy = RunningProxy::start_with(config(&target.url, Some(&draft.url), 4)).await;
    for prompt in [
        "Once upon a time",
        "The quick brown fox",
        "In a distant galaxy",
    ] {
        let (s, through) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 24, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
        let reference = target.reference(json!(prompt), 24).await;
        compare(&proxy_token_ids(&through), &reference, prompt);
    }
}

/// `draft_timeout_s` bounds what a stalled draft costs a streamed request with pipelining on (the
/// default): a draft stopped with `SIGSTOP` mid-stream (connections accepted, nothing answered)
/// holds the stream back at most one timeout, then the target goes on alone and the answer is the
/// target's own. Before, the drafted-ahead block timed out and the round asked the stopped draft
/// again: two timeouts (8 s at 4 s).
#[tokio::test]
async fn a_draft_stopped_mid_stream_stalls_it_at_most_one_draft_timeout_with_pipelining() {
    const DRAFT_TIMEOUT_S: u64 = 4;
    // Loopback target-only tokens take well under a second; two timeouts would take twice as long.
    const MARGIN: std::time::Duration = std::time::Duration::from_millis(2500);
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    // The target's own model as the draft: every block is accepted, so a block is always being
    // drafted ahead when the draft stops (the case that cost two timeouts).
    let draft_opts = ServerOptions {
        slots: 2,
        ..ServerOptions::default()
    };
    let draft = LlamaServer::start(&env, &env.model("target.gguf"), draft_opts).await;
    let mut c = config(&target.url, Some(&draft.url), 4);
    c.pairings[0].draft_timeout_s = DRAFT_TIMEOUT_S;
    // Drafting ahead on every request (`auto` would also measure requests without it).
    c.pairings[0].pipeline = tightwad_serve::engine::Pipelining::On;
    let proxy = RunningProxy::start_with(c).await;
    let prompt = "The history of lighthouses";
    let reference = target.reference(json!(prompt), 120).await;

    let mut response = reqwest::Client::new()
        .post(format!("{}/v1/completions", proxy.url))
        .json(&json!({"prompt": prompt, "max_tokens": 120, "temperature": 0, "stream": true, "return_token_ids": true}))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(response.status(), 200);
    let mut body = String::new();
    while body.matches("data:").count() < 4 {
        let chunk = response.chunk().await.expect("chunk").expect("more data");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    draft.signal("STOP");
    let mut last = std::time::Instant::now();
    let mut longest = std::time::Duration::ZERO;
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(chunk) = response.chunk().await.expect("the stream continues") {
            longest = longest.max(last.elapsed());
            last = std::time::Instant::now();
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    draft.signal("CONT");
    read.expect("the stream ends");
    eprintln!(
        "longest gap after the draft stopped: {longest:?} (draft_timeout_s {DRAFT_TIMEOUT_S})"
    );
    assert!(
        longest < std::time::Duration::from_secs(DRAFT_TIMEOUT_S) + MARGIN,
        "a stalled draft held the stream {longest:?} with draft_timeout_s = {DRAFT_TIMEOUT_S}"
    );
    let events = tightwad_e2e::http::sse_payloads(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert!(
        !body.contains("\"error\""),
        "the client saw an error: {body}"
    );
    let tokens = tightwad_e2e::http::streamed_token_ids(&events).expect("token_ids");
    compare(&tokens, &reference, prompt);
    let tightwad = tightwad_e2e::http::streamed_tightwad(&events).expect("tightwad object");
    assert!(
        tightwad["pipelined_rounds"].as_u64() > Some(0),
        "no round was pipelined before the stop: {tightwad}"
    );
    let stats = proxy.stats().await;
    assert!(
        stats["pairings"][0]["draft_failures"].as_u64() >= Some(1),
        "the stalled draft was not noticed: {stats}"
    );
}
