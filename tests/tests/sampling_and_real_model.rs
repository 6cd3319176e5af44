//! Sampling through the proxy draws from the target's own distribution; and on a real model
//! (SmolLM2-135M-Instruct: a Q4_1 draft for its F16 copy) chat answers end exactly where the target
//! ends them, end-of-sequence token included.

use std::collections::HashMap;

use serde_json::json;
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, post_json, proxy_token_ids, Agreement, LlamaServer,
    RunningProxy, ServerOptions,
};
use tightwad_serve::engine::VerifyMode;

/// Two-sample chi-square statistic over the `categories` most frequent outcomes plus "other".
fn chi_square(a: &[Vec<u64>], b: &[Vec<u64>], categories: usize) -> f64 {
    let mut joint: HashMap<&Vec<u64>, (f64, f64)> = HashMap::new();
    for x in a {
        joint.entry(x).or_default().0 += 1.0;
    }
    for x in b {
        joint.entry(x).or_default().1 += 1.0;
    }
    let mut cells: Vec<(f64, f64)> = joint.into_values().collect();
    cells.sort_by(|x, y| (y.0 + y.1).total_cmp(&(x.0 + x.1)));
    let mut binned: Vec<(f64, f64)> = cells.iter().take(categories).copied().collect();
    let other = cells
        .iter()
        .skip(categories)
        .fold((0.0, 0.0), |acc, c| (acc.0 + c.0, acc.1 + c.1));
    if other.0 + other.1 > 0.0 {
        binned.push(other);
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    binned
        .iter()
        .map(|(oa, ob)| {
            let total = oa + ob;
            let ea = total * na / (na + nb);
            let eb = total * nb / (na + nb);
            (oa - ea).powi(2) / ea + (ob - eb).powi(2) / eb
        })
        .sum()
}

/// p = 0.001 critical value of chi-square with 5 degrees of freedom (6 bins).
const CRITICAL_5DF: f64 = 20.52;

/// Both ways the target can verify: one sequence checked by its own sampler (the patched
/// llama-server), and one prompt per position sampled by the proxy from the target's post-sampler
/// distribution.
#[tokio::test]
async fn sampled_continuations_follow_the_targets_distribution_one_pass() {
    sampled_continuations_follow_the_targets_distribution(VerifyMode::OnePass).await;
}

#[tokio::test]
async fn sampled_continuations_follow_the_targets_distribution_multi_prompt() {
    sampled_continuations_follow_the_targets_distribution(VerifyMode::MultiPrompt).await;
}

async fn sampled_continuations_follow_the_targets_distribution(verify: VerifyMode) {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(3)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 3);
    entry.verify = verify;
    let proxy = RunningProxy::start_entry(entry).await;
    const N: u64 = 160;
    let prompt = "The quick brown fox";
    // The target alone, through its native endpoint (token ids come back directly).
    let direct = |seed: u64, temperature: f64| {
        json!({"prompt": prompt, "n_predict": 3, "temperature": temperature, "seed": seed,
               "top_k": 40, "return_tokens": true, "cache_prompt": false})
    };
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .filter_map(|t| t.as_u64())
            .collect()
    };
    let mut through = Vec::new();
    let mut alone = Vec::new();
    let mut colder = Vec::new();
    for seed in 0..N {
        let (s, v) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 3, "temperature": 1.0,
                   "seed": seed, "top_k": 40, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["tightwad"]["served_by"], "speculative");
        through.push(proxy_token_ids(&v));
        let (_, d) = post_json(
            &format!("{}/completion", target.url),
            &direct(seed + 10_000, 1.0),
        )
        .await;
        alone.push(ids(&d));
        let (_, c) = post_json(
            &format!("{}/completion", target.url),
            &direct(seed + 20_000, 0.4),
        )
        .await;
        colder.push(ids(&c));
    }
    let distinct: std::collections::HashSet<_> = through.iter().collect();
    assert!(
        distinct.len() > 5,
        "sampling produced only {} distinct continuations",
        distinct.len()
    );
    let same = chi_square(&through, &alone, 5);
    assert!(
        same < CRITICAL_5DF,
        "proxy vs target alone: chi-square {same:.1} ≥ {CRITICAL_5DF}"
    );
    // The test can tell distributions apart: the target at another temperature fails it.
    let different = chi_square(&colder, &alone, 5);
    assert!(
        different > CRITICAL_5DF,
        "the test is blind: T=0.4 vs T=1 gave only {different:.1}"
    );

    // A fixed seed makes the proxy's sampled answer repeatable.
    let body = json!({"prompt": prompt, "max_tokens": 12, "temperature": 0.9, "seed": 1234});
    let (_, a) = proxy.post("/v1/completions", &body).await;
    let (_, b) = proxy.post("/v1/completions", &body).await;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
}

#[tokio::test]
async fn a_real_model_chat_ends_where_the_target_ends_it() {
    let env = env();
    let (target_model, draft_model) = env.smollm2();
    let target = LlamaServer::start(&env, &target_model, ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &draft_model, ServerOptions::default()).await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), 4).await;
    let questions = [
        "What is the capital of France? Answer in one word.",
        "Say hello.",
        "Name three primary colors, comma separated.",
        "Is water wet? Reply yes or no.",
        "What is 2 + 2?",
        "Write the word 'done' and nothing else.",
    ];
    let mut outcomes = Vec::new();
    let mut ended_by_eos = 0;
    let (mut drafted, mut accepted) = (0, 0);
    for q in questions {
        let messages = json!([{"role": "user", "content": q}]);
        let (s, through) = proxy
            .post(
                "/v1/chat/completions",
                &json!({"messages": messages, "max_tokens": 48,
                   "temperature": 0, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{through}");
        let reference = target
            .reference(json!(target.render_chat(&messages).await), 48)
            .await;
        let outcome = compare(&proxy_token_ids(&through), &reference, q);
        if outcome == Agreement::Identical {
            assert_eq!(
                through["choices"][0]["message"]["content"],
                reference.text.as_str(),
                "{q}"
            );
            let expected_finish = if reference.stop_type == "eos" {
                "stop"
            } else {
                "length"
            };
            assert_eq!(
                through["choices"][0]["finish_reason"], expected_finish,
                "{q}"
            );
            if reference.stop_type == "eos" {
                ended_by_eos += 1;
            }
        }
        outcomes.push(outcome);
        drafted += through["tightwad"]["drafted"].as_u64().unwrap_or(0);
        accepted += through["tightwad"]["accepted"].as_u64().unwrap_or(0);
    }
    assert_ties_are_rare(&outcomes);
    assert!(
        ended_by_eos >= 3,
        "only {ended_by_eos} answers ended with end-of-sequence"
    );
    let acceptance = accepted as f64 / drafted.max(1) as f64;
    assert!(
        acceptance > 0.5,
        "a Q4_1 draft of the same model accepted only {acceptance}"
    );
}
