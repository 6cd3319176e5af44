//! A draft that stops where its model is unsure (patch 0004, `stop_p_min`; the proxy's
//! `draft_p_min`, off by default: it measured a loss on the benchmarks' models). The tokens after a
//! draft token its model doubts are accepted only if that token was right: the draft server ends
//! the completion after such a token, and the proxy verifies the shorter draft. Real servers, the
//! real SmolLM2 pair (its probabilities spread as a real model's do); the answers stay the
//! target's own.

use serde_json::{json, Value};
use tightwad_e2e::{
    assert_ties_are_rare, compare, completion_tokens, env, get_json, post_json, prompts,
    proxy_token_ids, stock_env, LlamaServer, RunningProxy, ServerOptions,
};
use tightwad_serve::engine::Pipelining;

const K: usize = 8;

async fn completion(server: &LlamaServer, body: &Value) -> (u16, Value) {
    post_json(&format!("{}/completion", server.url), body).await
}

/// The probability the model gave each generated token (greedy, `n_probs` 1: the sampled token
/// is the top one, its log-probability before any sampler).
fn probabilities(v: &Value) -> Vec<f64> {
    v["completion_probabilities"]
        .as_array()
        .unwrap_or_else(|| panic!("no completion_probabilities in {v}"))
        .iter()
        .map(|p| p["logprob"].as_f64().expect("logprob").exp())
        .collect()
}

/// How many tokens a completion that stops after the first token below `p_min` returns: every
/// length the probabilities allow (a token within 1e-3 of the floor may fall on either side,
/// the server's sum skipping logits far below the token's).
fn lengths_allowed(probs: &[f64], p_min: f64) -> Vec<usize> {
    let mut allowed = Vec::new();
    for (i, p) in probs.iter().enumerate() {
        if (p - p_min).abs() < 1e-3 {
            allowed.push(i + 1);
        } else if *p < p_min {
            allowed.push(i + 1);
            return allowed;
        }
    }
    allowed.push(probs.len());
    allowed
}

#[tokio::test]
async fn a_draft_ends_after_the_first_token_its_model_is_unsure_of() {
    let env = env();
    let (_, draft_model) = env.smollm2();
    let draft = LlamaServer::start(&env, &draft_model, ServerOptions::default()).await;
    let props: Value = get_json(&format!("{}/props", draft.url)).await;
    assert_eq!(props["capabilities"]["stop_p_min"], true, "{props}");

    let n = 24;
    let mut stopped_early = 0;
    for prompt in prompts().iter().take(8) {
        let (status, full) = completion(
            &draft,
            &json!({"prompt": prompt, "n_predict": n, "temperature": 0, "n_probs": 1,
                    "return_tokens": true}),
        )
        .await;
        assert_eq!(status, 200, "{full}");
        let tokens = completion_tokens(&full);
        let probs = probabilities(&full);
        assert_eq!(tokens.len(), probs.len(), "{full}");
        for p_min in [0.3, 0.6, 0.9] {
            let (status, v) = completion(
                &draft,
                &json!({"prompt": prompt, "n_predict": n, "temperature": 0,
                        "return_tokens": true, "stop_p_min": p_min}),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            let got = completion_tokens(&v);
            let allowed = lengths_allowed(&probs, p_min);
            assert!(
                allowed.contains(&got.len()),
                "{prompt:?} at stop_p_min {p_min}: {} tokens, expected one of {allowed:?} (probabilities {probs:.3?})",
                got.len()
            );
            // The same greedy tokens, cut after the unsure one; the stop reads as a limit.
            assert_eq!(got, tokens[..got.len()], "{prompt:?} at {p_min}");
            if got.len() < tokens.len() {
                assert_eq!(v["stop_type"], "limit", "{v}");
                stopped_early += 1;
            }
        }
    }
    assert!(
        stopped_early >= 8,
        "the floor rarely ended a draft ({stopped_early} of 24): the test shows nothing"
    );

    // A floor that is not a probability is the client's error, and the server carries on.
    for bad in [json!(1.5), json!(-0.1), json!("high")] {
        let (status, v) = completion(
            &draft,
            &json!({"prompt": "Hello", "n_predict": 4, "stop_p_min": bad}),
        )
        .await;
        assert_eq!(status, 400, "stop_p_min {bad}: {v}");
        assert!(v.to_string().contains("stop_p_min"), "{v}");
    }
    let (status, v) = completion(&draft, &json!({"prompt": "Hello", "n_predict": 4})).await;
    assert_eq!(status, 200, "{v}");

    // A stock server ignores the field: the draft runs to n_predict.
    let stock_env = stock_env();
    let stock = LlamaServer::start(&stock_env, &draft_model, ServerOptions::default()).await;
    let (status, v) = completion(
        &stock,
        &json!({"prompt": prompts()[0], "n_predict": n, "temperature": 0,
                "return_tokens": true, "stop_p_min": 0.99}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(completion_tokens(&v).len(), n, "{v}");
}

/// Drafted tokens and rounds over a set of answers through one proxy, each answer checked
/// against the target's own greedy generation.
async fn drafted_per_round(proxy: &RunningProxy, target: &LlamaServer, n: usize) -> f64 {
    let (mut drafted, mut rounds, mut outcomes) = (0, 0, Vec::new());
    for prompt in prompts().iter().take(10) {
        let (status, v) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": n, "temperature": 0,
                        "return_token_ids": true}),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
        drafted += v["tightwad"]["drafted"].as_u64().unwrap_or(0);
        rounds += v["tightwad"]["rounds"].as_u64().unwrap_or(0);
        let reference = target.reference(json!(prompt), n).await;
        outcomes.push(compare(&proxy_token_ids(&v), &reference, prompt));
    }
    assert_ties_are_rare(&outcomes);
    assert!(rounds > 0);
    drafted as f64 / rounds as f64
}

#[tokio::test]
async fn through_the_proxy_unsure_drafts_end_early_and_the_answers_stay_the_targets_own() {
    let env = env();
    let (target_model, draft_model) = env.smollm2();
    let target = LlamaServer::start(&env, &target_model, ServerOptions::target(K as u32)).await;
    let draft = LlamaServer::start(&env, &draft_model, ServerOptions::default()).await;
    let mut per_round = Vec::new();
    // Drafting ahead too: a block drafted during the verification that ended at its own stop is
    // used as it is (a fresh draft of the same context would end at the same token).
    for (p_min, pipeline) in [
        (0.0, Pipelining::Off),
        (0.9, Pipelining::Off),
        (0.9, Pipelining::On),
    ] {
        let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), K);
        entry.draft_p_min = p_min;
        entry.pipeline = pipeline;
        let proxy = RunningProxy::start_entry(entry).await;
        per_round.push(drafted_per_round(&proxy, &target, 32).await);
        let stats = proxy.stats().await;
        assert_eq!(stats["pairings"][0]["draft_p_min"], p_min, "{stats}");
    }
    eprintln!(
        "drafted per round: {:.2} with no floor, {:.2} at draft_p_min 0.9, {:.2} drafting ahead",
        per_round[0], per_round[1], per_round[2]
    );
    assert!(
        per_round[1] < 0.8 * per_round[0],
        "the floor did not shorten the drafts: {per_round:?}"
    );
}

/// `tightwad doctor` says, for a pairing that sets `draft_p_min`, whether its draft server can end
/// a draft where it is unsure: a stock build ignores the field, and the fix is named.
#[tokio::test]
async fn doctor_says_whether_the_draft_server_stops_where_it_is_unsure() {
    use tightwad_coordinator::cluster::layout::Layout;
    use tightwad_coordinator::doctor::{live, Category, Status};
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let patched =
        LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let stock_env = stock_env();
    let stock = LlamaServer::start(
        &stock_env,
        &stock_env.model("draft.gguf"),
        ServerOptions::default(),
    )
    .await;
    let layout = Layout::parse(&format!(
        "[[pairings]]\nname = \"patched\"\ntarget = \"{t}\"\ndraft = \"{}\"\ndraft_p_min = 0.3\n\n[[pairings]]\nname = \"stock\"\ntarget = \"{t}\"\ndraft = \"{}\"\ndraft_p_min = 0.3\n\n[[pairings]]\nname = \"off\"\ntarget = \"{t}\"\ndraft = \"{}\"\n",
        patched.url,
        stock.url,
        stock.url,
        t = target.url
    ))
    .expect("layout");
    let checks = live::checks(&layout).await;
    // The draft server's confidence-stop check (its other build check is about cached prefixes).
    let find = |pairing: &str| {
        checks
            .iter()
            .find(|c| {
                c.category == Category::Build
                    && c.subject == format!("pairing {pairing} draft")
                    && (c.message.contains("ends a draft") || c.message.contains("ends no draft"))
            })
            .cloned()
    };
    let draft_check = |pairing: &str| {
        find(pairing).unwrap_or_else(|| panic!("no draft build check for {pairing}: {checks:#?}"))
    };
    let p = draft_check("patched");
    assert_eq!(p.status, Status::Pass, "{p:?}");
    assert!(p.message.contains("less than 0.3"), "the floor: {p:?}");
    let s = draft_check("stock");
    assert_eq!(s.status, Status::Warn, "{s:?}");
    assert!(
        s.hint
            .as_deref()
            .unwrap_or_default()
            .contains("tightwad build"),
        "the fix is named: {s:?}"
    );
    // The stop is off by default: nothing to check, whatever the build.
    assert!(find("off").is_none(), "{checks:#?}");
}
