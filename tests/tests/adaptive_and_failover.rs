//! Speculation that would not pay switches itself off; a draft that dies mid-answer changes
//! nothing the client can see; with no draft model, the context itself drafts.

use std::time::{Duration, Instant};

use serde_json::json;
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, prompts, proxy_token_ids, stream_token_ids, Agreement,
    LlamaServer, OpenStream, RunningProxy, ServerOptions,
};

#[tokio::test]
async fn a_draft_killed_mid_stream_changes_nothing_the_client_sees_and_comes_back() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut draft =
        LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let draft_port = draft.port;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), 4).await;
    let prompt = "The history of lighthouses";
    let reference = target.reference(json!(prompt), 160).await;

    let stream = OpenStream::start(
        &format!("{}/v1/completions", proxy.url),
        &json!({"prompt": prompt, "max_tokens": 160, "temperature": 0, "stream": true, "return_token_ids": true}),
        4,
    )
    .await;
    draft.kill();
    let body = stream.finish().await;
    let events: Vec<String> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_string))
        .collect();
    assert!(
        !body.contains("\"error\""),
        "the client saw an error: {body}"
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let outcome = compare(&stream_token_ids(&body), &reference, prompt);
    assert_ne!(outcome, Agreement::TieAt(0));
    let stats = proxy.stats().await;
    assert!(
        stats["pairings"][0]["draft_failures"].as_u64() >= Some(1),
        "{stats}"
    );

    // The draft comes back on its port: once its retry interval (10 s) has passed, the next
    // request probes it again and speculates (answers before that are the target's alone).
    let draft = LlamaServer::start_on(
        &env,
        &env.model("draft.gguf"),
        ServerOptions::default(),
        draft_port,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let again = loop {
        let (s, again) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0}),
            )
            .await;
        assert_eq!(s, 200, "{again}");
        if again["tightwad"]["served_by"] == "speculative" {
            break again;
        }
        assert!(
            Instant::now() < deadline,
            "the draft was never used again: {again}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(again["tightwad"]["drafted"].as_u64() > Some(0), "{again}");
    drop(draft);
}

#[tokio::test]
async fn prompt_lookup_drafts_without_a_model_and_stays_exact() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let proxy = RunningProxy::start(&target.url, Some("prompt-lookup"), 4).await;
    let mut outcomes = Vec::new();
    let mut drafted = 0;
    for prompt in prompts().iter().take(10) {
        // Repetitive prompts give the lookup something to propose.
        let prompt = format!("{prompt} {prompt} {prompt}");
        let (s, through) = proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative");
        drafted += through["tightwad"]["drafted"].as_u64().unwrap_or(0);
        let reference = target.reference(json!(prompt), 24).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, &prompt));
    }
    assert_ties_are_rare(&outcomes);
    assert!(drafted > 0, "prompt lookup never proposed anything");
}

#[tokio::test]
async fn with_lookup_fallback_a_dead_draft_is_replaced_by_the_context() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    // A draft address where nothing listens.
    let mut entry = RunningProxy::entry(
        &target.url,
        Some(&format!("http://127.0.0.1:{}", tightwad_e2e::free_port())),
        4,
    );
    entry.prompt_lookup_fallback = true;
    let proxy = RunningProxy::start_entry(entry).await;
    let prompt = "one two three one two three one two";
    let (_, through) = proxy
        .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "return_token_ids": true}))
        .await;
    assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
    let reference = target.reference(json!(prompt), 24).await;
    assert_ties_are_rare(&[compare(&proxy_token_ids(&through), &reference, prompt)]);
}

#[tokio::test]
async fn speculation_that_does_not_pay_switches_itself_off_and_output_stays_exact() {
    let env = env();
    // On these CPUs the test draft is as big as the target (each draft token costs a target
    // decode) and every round adds two HTTP exchanges: speculation loses, and the controller
    // must notice by itself.
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.adaptive = true;
    let proxy = RunningProxy::start_entry(entry).await;
    let mut outcomes = Vec::new();
    let mut served = Vec::new();
    for prompt in prompts().iter().take(10) {
        let (s, through) = proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 48, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(s, 200, "{through}");
        served.push(
            through["tightwad"]["served_by"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let reference = target.reference(json!(prompt), 48).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
    }
    assert_ties_are_rare(&outcomes);
    let stats = proxy.stats().await;
    let controller = &stats["pairings"][0]["controller"];
    assert_eq!(controller["mode"]["state"], "off", "{stats}");
    let reason = controller["last_decision"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("below 1") || reason.contains("tok/s"),
        "reason: {reason}"
    );
    assert_eq!(
        served.first().map(String::as_str),
        Some("speculative"),
        "{served:?}"
    );
    assert_eq!(
        served.last().map(String::as_str),
        Some("target_only"),
        "{served:?}"
    );
    assert_eq!(stats["pairings"][0]["speculation_enabled"], false);
}

#[tokio::test]
async fn a_target_faster_than_the_users_threshold_is_never_speculated_on() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(
        &env,
        &env.model("draft-identical.gguf"),
        ServerOptions::default(),
    )
    .await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.adaptive = true;
    entry.disable_above_tok_s = Some(5.0);
    let proxy = RunningProxy::start_entry(entry).await;
    for prompt in prompts().iter().take(3) {
        let (_, through) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 32, "temperature": 0}),
            )
            .await;
        assert_eq!(through["usage"]["completion_tokens"], 32, "{through}");
    }
    let stats = proxy.stats().await;
    let reason = stats["pairings"][0]["controller"]["last_decision"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("disable_above_tok_s"), "{stats}");
    // While off, requests go to the target untouched (one in eight still samples the engine).
    for _ in 0..4 {
        let (s, last) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": "Once", "max_tokens": 16, "temperature": 0}),
            )
            .await;
        assert_eq!(s, 200, "{last}");
        assert_eq!(last["usage"]["completion_tokens"], 16);
    }
    let stats = proxy.stats().await;
    assert!(
        stats["pairings"][0]["requests"]["passthrough"].as_u64() >= Some(3),
        "{stats}"
    );
    let (_, sampled) = proxy
        .post("/v1/completions", &json!({"prompt": "Once", "max_tokens": 16, "temperature": 0, "return_token_ids": true}))
        .await;
    assert_eq!(sampled["tightwad"]["served_by"], "target_only");
}
