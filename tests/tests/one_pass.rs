//! A user whose target runs Tightwad's patched llama-server gets one-pass verification: each round
//! sends the draft's k tokens to the target, which checks them in ONE sequence with its own
//! sampler. The answers must still be the target's own, a round must cost about one decode of k + 1
//! tokens, and a stock target must fall back to the multi-prompt form and say why. Real servers.

use serde_json::{json, Value};
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, greedy_through_proxy_matches_target, prompts,
    proxy_token_ids, stock_env, stream_token_ids, LlamaServer, OpenStream, RunningProxy,
    ServerOptions, TestEnv,
};

const K: usize = 4;

async fn target(env: &TestEnv) -> LlamaServer {
    LlamaServer::start(
        env,
        &env.model("target.gguf"),
        ServerOptions::target(K as u32),
    )
    .await
}

async fn draft(env: &TestEnv) -> LlamaServer {
    let opts = ServerOptions {
        slots: 2,
        ..Default::default()
    };
    LlamaServer::start(env, &env.model("draft.gguf"), opts).await
}

fn verification(stats: &Value) -> Value {
    stats["pairings"][0]["verification"].clone()
}

#[tokio::test]
async fn one_pass_rounds_give_the_targets_own_tokens_on_thirty_prompts() {
    let env = env();
    let (target, draft) = (target(&env).await, draft(&env).await);
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let prompts = prompts();
    assert!(prompts.len() >= 30);
    let outcomes = greedy_through_proxy_matches_target(&proxy, &target, &prompts, 32).await;
    assert_ties_are_rare(&outcomes);
    let stats = proxy.stats().await;
    assert_eq!(verification(&stats)["path"], "one_pass", "{stats}");
    let p = &stats["pairings"][0];
    let (drafted, accepted) = (
        p["drafted"].as_u64().unwrap_or(0),
        p["accepted"].as_u64().unwrap_or(0),
    );
    assert!(
        accepted > 0 && accepted < drafted,
        "both accept and reject exercised: {p}"
    );
}

#[tokio::test]
async fn a_round_costs_one_decode_and_about_k_plus_one_tokens_of_the_target() {
    let env = env();
    let (target, draft) = (target(&env).await, draft(&env).await);
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let decodes_before = target.metric("llamacpp:n_decode_total").await;
    let prompt_before = target.metric("llamacpp:prompt_tokens_total").await;
    let (status, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Once upon a time, in a quiet village by the sea,", "max_tokens": 200,
                    "temperature": 0, "return_token_ids": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 200, "{v}");
    let rounds = v["tightwad"]["rounds"].as_f64().unwrap_or(0.0);
    assert!(rounds > 20.0, "{v}");
    let decodes = target.metric("llamacpp:n_decode_total").await - decodes_before;
    let prompt_tokens = target.metric("llamacpp:prompt_tokens_total").await - prompt_before;
    // At most two decodes a round (the patch folds tail and draft into one), and the uncached
    // tail stays about one token: the round's own bonus token.
    assert!(
        decodes / rounds <= 2.0,
        "{decodes} decodes for {rounds} rounds"
    );
    assert!(
        prompt_tokens / rounds <= (K + 2) as f64,
        "{prompt_tokens} prompt tokens evaluated for {rounds} rounds"
    );
    eprintln!(
        "one-pass: {rounds} rounds, {:.2} decodes and {:.2} prompt tokens per round",
        decodes / rounds,
        prompt_tokens / rounds
    );
}

#[tokio::test]
async fn a_stock_target_falls_back_to_multi_prompt_and_says_why() {
    let stock = stock_env();
    let target = target(&stock).await;
    let draft = draft(&env()).await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let outcomes = greedy_through_proxy_matches_target(&proxy, &target, &prompts()[..8], 24).await;
    assert_ties_are_rare(&outcomes);
    let v = verification(&proxy.stats().await);
    assert_eq!(v["path"], "multi_prompt", "{v}");
    assert!(
        v["why"]
            .as_str()
            .unwrap_or_default()
            .contains("tightwad build"),
        "the reason says how to get one-pass verification: {v}"
    );
}

#[tokio::test]
async fn a_draft_killed_mid_stream_still_finishes_exactly() {
    let env = env();
    let target = target(&env).await;
    let mut draft = draft(&env).await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let prompt = "The history of the lighthouse keepers on the northern coast";
    let request = json!({"prompt": prompt, "max_tokens": 80, "temperature": 0, "stream": true,
                         "return_token_ids": true});
    let open = OpenStream::start(&format!("{}/v1/completions", proxy.url), &request, 3).await;
    draft.kill();
    let body = open.finish().await;
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let reference = target.reference(json!(prompt), 80).await;
    let outcome = compare(&stream_token_ids(&body), &reference, prompt);
    assert_ties_are_rare(&[outcome]);
}

#[tokio::test]
async fn concurrent_requests_on_several_slots_stay_exact() {
    let env = env();
    let (target, draft) = (target(&env).await, draft(&env).await);
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let prompts: Vec<String> = prompts().into_iter().take(6).collect();
    let bodies: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"prompt": p, "max_tokens": 40, "temperature": 0, "return_token_ids": true}))
        .collect();
    let answers =
        futures::future::join_all(bodies.iter().map(|b| proxy.post("/v1/completions", b))).await;
    let mut outcomes = Vec::new();
    for (prompt, (status, v)) in prompts.iter().zip(&answers) {
        assert_eq!(*status, 200, "{v}");
        assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
        let reference = target.reference(json!(prompt), 40).await;
        outcomes.push(compare(&proxy_token_ids(v), &reference, prompt));
    }
    assert_ties_are_rare(&outcomes);
    assert_eq!(verification(&proxy.stats().await)["path"], "one_pass");
}

/// `tightwad doctor` says per target whether one-pass verification is available, and on a stock
/// llama-server what makes it so.
#[tokio::test]
async fn doctor_says_whether_one_pass_verification_is_available_and_how_to_get_it() {
    use tightwad_coordinator::cluster::layout::Layout;
    use tightwad_coordinator::doctor::{live, Category, Status};
    let env = env();
    let (patched, stock) = (target(&env).await, target(&stock_env()).await);
    let draft = draft(&env).await;
    let layout = Layout::parse(&format!(
        "[[pairings]]\nname = \"patched\"\ntarget = \"{}\"\ndraft = \"{}\"\ndraft_tokens = 4\n\n[[pairings]]\nname = \"stock\"\ntarget = \"{}\"\ndraft = \"{}\"\ndraft_tokens = 4\n",
        patched.url, draft.url, stock.url, draft.url
    ))
    .expect("layout");
    let checks = live::checks(&layout).await;
    let one_pass = |pairing: &str| {
        checks
            .iter()
            .find(|c| {
                c.category == Category::Build
                    && c.subject.contains(pairing)
                    && c.message.contains("one")
            })
            .unwrap_or_else(|| panic!("no one-pass check for {pairing}: {checks:#?}"))
            .clone()
    };
    let p = one_pass("patched");
    assert_eq!(p.status, Status::Pass, "{p:?}");
    assert!(p.message.contains("up to 16 tokens"), "{p:?}");
    let s = one_pass("stock");
    assert_eq!(s.status, Status::Warn, "{s:?}");
    assert!(
        s.hint
            .as_deref()
            .unwrap_or_default()
            .contains("tightwad build"),
        "the fix is named: {s:?}"
    );
}
