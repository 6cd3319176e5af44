//! A user whose target runs Tightwad's patched llama-server gets one-pass verification: each round
//! sends the draft's k tokens to the target, which checks them in ONE sequence with its own
//! sampler. The answers must still be the target's own, a round must cost about one decode of k + 1
//! tokens, and a stock target must fall back to the multi-prompt form and say why. Real servers.

use serde_json::{json, Value};
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, greedy_through_proxy_matches_target, prompts,
    proxy_token_ids, stock_env, stream_token_ids, LlamaServer, OpenStream, RunningProxy,
    ServerOptions, Smollm2Pairing, TestEnv,
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

/// A user who leaves `draft_tokens` out gets the length each path pays for: up to 8 a round on
/// the patched target (it takes 16), 4 on a stock one (one prompt per position, k + 1 slots).
/// Speculation is pinned on, so every full round drafts the whole cap; the answers stay the
/// target's own.
#[tokio::test]
async fn without_draft_tokens_the_draft_length_follows_the_verification_path() {
    let draft = draft(&env()).await;
    for (env, path, k) in [(env(), "one_pass", 8), (stock_env(), "multi_prompt", 4)] {
        let target = target(&env).await;
        let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), K);
        entry.draft_tokens = None;
        // Drafts run to the cap (no confidence stop), so every full round shows it.
        entry.draft_p_min = 0.0;
        let proxy = RunningProxy::start_entry(entry).await;
        let outcomes =
            greedy_through_proxy_matches_target(&proxy, &target, &prompts()[..4], 27).await;
        assert_ties_are_rare(&outcomes);
        let stats = proxy.stats().await;
        assert_eq!(verification(&stats)["path"], path, "{stats}");
        assert_eq!(stats["pairings"][0]["draft_tokens"], k, "{stats}");
        let (status, v) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": "The numbers from one to twenty are", "max_tokens": 3 * (k + 1),
                        "temperature": 0}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        let t = &v["tightwad"];
        let (rounds, drafted) = (t["rounds"].as_u64(), t["drafted"].as_u64());
        // Every round drafts k but the last, which drafts what max_tokens leaves (at least 1).
        let (rounds, drafted) = (rounds.unwrap_or(0), drafted.unwrap_or(0));
        assert!(rounds >= 3, "{v}");
        assert!(
            drafted > (rounds - 1) * k as u64 && drafted <= rounds * k as u64,
            "{path}: {drafted} drafted in {rounds} rounds, not k = {k} a round: {v}"
        );
    }
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
        "[[pairings]]\nname = \"patched\"\ntarget = \"{}\"\ndraft = \"{}\"\n\n[[pairings]]\nname = \"stock\"\ntarget = \"{}\"\ndraft = \"{}\"\ndraft_tokens = 4\n",
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
    // No draft_tokens in its config: the proxy's default on a one-pass target.
    assert!(p.message.contains("the proxy drafts up to 8"), "{p:?}");
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

/// One-pass rounds never ask the target for token details (`n_probs`, a softmax over the whole
/// vocabulary per token): the bundled patch's `return_pieces` gives each returned token's own
/// bytes, a token that holds part of a character as a byte array. Text in accented Latin, Cyrillic,
/// CJK and emoji (characters spread over several byte-level tokens, rounds ending inside a
/// character) must still come out as the target's own, streamed or whole, from the first request
/// to the last. (A patched target without `return_pieces` is served by learning the pieces, as
/// `engine::pieces` says; its tests are the engine's, on simulated servers.)
#[tokio::test]
async fn multilingual_answers_through_one_pass_rounds_are_the_targets_own_text() {
    let env = env();
    let Smollm2Pairing {
        proxy,
        target,
        draft: _draft,
    } = Smollm2Pairing::start(&env, K).await;
    let prompts = [
        "Voici une liste de pâtisseries françaises célèbres : crème brûlée, éclair,",
        "Straße, Größe, Übung, Ärger: deutsche Wörter mit Umlauten sind",
        "Москва — столица России. Санкт-Петербург —",
        "日本の首都は東京です。大阪は",
        "中文：你好，世界！我们今天",
        "Emoji story: 🐱 found a 🔑 in the 🌳, then",
        "Ελληνικά: Η Αθήνα είναι η πρωτεύουσα",
        "Mixed: naïve café résumé — “quotes” and ‘more’ …",
    ];
    let mut outcomes = Vec::new();
    let mut non_ascii = 0;
    for (n, prompt) in prompts.iter().enumerate() {
        let reference = target.reference(json!(prompt), 40).await;
        let stream = n % 2 == 1;
        let body = json!({"prompt": prompt, "max_tokens": 40, "temperature": 0,
                          "return_token_ids": true, "stream": stream});
        let (ids, text) = if stream {
            // Read whole, then split: a chunk boundary may fall inside a character.
            let sse = reqwest::Client::new()
                .post(format!("{}/v1/completions", proxy.url))
                .json(&body)
                .send()
                .await
                .expect("stream starts")
                .text()
                .await
                .expect("stream body");
            let text: String = sse
                .split("\n\n")
                .filter_map(|e| e.trim_start().strip_prefix("data: "))
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
                .collect();
            (stream_token_ids(&sse), text)
        } else {
            let (status, v) = proxy.post("/v1/completions", &body).await;
            assert_eq!(status, 200, "{v}");
            let text = v["choices"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (proxy_token_ids(&v), text)
        };
        let outcome = compare(&ids, &reference, prompt);
        if outcome == tightwad_e2e::Agreement::Identical {
            assert_eq!(text, reference.text, "{prompt} (stream: {stream})");
            // Only an answer cut off inside a character ends with U+FFFD, as the target's does.
            let whole = text.trim_end_matches('\u{FFFD}');
            assert!(!whole.contains('\u{FFFD}'), "{prompt}: {text:?}");
        }
        non_ascii += usize::from(!reference.text.is_ascii());
        outcomes.push(outcome);
    }
    assert_ties_are_rare(&outcomes);
    assert!(
        non_ascii >= 4,
        "the answers must exercise multi-byte text: {non_ascii}"
    );
    let stats = proxy.stats().await;
    assert_eq!(verification(&stats)["path"], "one_pass", "{stats}");
    let rounds = stats["pairings"][0]["rounds"].as_u64().unwrap_or(0);
    assert!(rounds > 20, "{stats}");
    // No round asked for token details, and the text stayed exact.
    let detailed = stats["pairings"][0]["one_pass_detail_rounds"]
        .as_u64()
        .expect("one_pass_detail_rounds");
    assert_eq!(detailed, 0, "rounds asked for token details: {stats}");
}
