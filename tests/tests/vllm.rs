//! A REAL vLLM (CPU build from `scripts/setup-vllm`, SmolLM2 converted from the same GGUF the
//! llama.cpp servers load) as target, as draft, and mixed with llama.cpp: greedy output through the
//! proxy equals the target's own, token for token, on many prompts; sampled answers are distributed
//! like vLLM's own; a draft that dies — llama.cpp under a vLLM target, or vLLM itself in the middle
//! of a streamed answer — changes nothing the client sees. One vLLM start for the whole file (it
//! takes a minute or more), so everything runs in one test.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::http::{streamed_tightwad, streamed_token_ids, SseRead};
use tightwad_e2e::sampled::{picks, same_distribution, vllm_picks, Pick};
use tightwad_e2e::vllm::{VllmServer, SERVED_MODEL};
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, merge, prompts, proxy_token_ids, Agreement, LlamaServer,
    Reference, RunningProxy, ServerOptions,
};
use tightwad_serve::backend::BackendKind;

const MAX_TOKENS: usize = 24;
const K: usize = 4;

/// The prompts every pairing is checked on (a spread of the harness' prompts, the long one too).
fn checked_prompts() -> Vec<String> {
    let all = prompts();
    let mut picked: Vec<String> = all.iter().step_by(3).cloned().collect();
    if let Some(long) = all.last() {
        picked.push(long.clone());
    }
    picked
}

fn entry(
    target: &str,
    target_kind: BackendKind,
    draft: &str,
    draft_kind: BackendKind,
) -> tightwad_serve::config::PairingEntry {
    let mut e = RunningProxy::entry(target, Some(draft), K);
    e.target_kind = target_kind;
    e.draft_kind = draft_kind;
    // vLLM on 2 busy cores: a verification can take a while.
    e.target_timeout_s = 120;
    e.draft_timeout_s = 60;
    e
}

async fn proxied(proxy: &RunningProxy, prompt: &str) -> Value {
    let (status, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": true}),
        )
        .await;
    assert_eq!(status, 200, "{prompt:?}: {v}");
    v
}

/// Run every checked prompt through the proxy and compare with `reference(prompt)`.
async fn check_pairing<F, Fut>(label: &str, proxy: &RunningProxy, reference: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Reference>,
{
    let mut outcomes = Vec::new();
    for prompt in checked_prompts() {
        let expected = reference(prompt.clone()).await;
        let v = proxied(proxy, &prompt).await;
        assert_eq!(
            v["tightwad"]["served_by"], "speculative",
            "{label} {prompt:?}: not speculative: {v}"
        );
        outcomes.push(compare(
            &proxy_token_ids(&v),
            &expected,
            &format!("{label} {prompt:?}"),
        ));
    }
    assert_ties_are_rare(&outcomes);
    let stats = proxy.stats().await;
    let accepted = stats["pairings"][0]["accepted"].as_u64().unwrap_or(0);
    assert!(
        accepted > 0,
        "{label}: no draft token was ever accepted: {stats}"
    );
    eprintln!(
        "{label}: {} prompts exact (ties: {}), stats {}",
        outcomes.len(),
        outcomes
            .iter()
            .filter(|o| **o != Agreement::Identical)
            .count(),
        stats["pairings"][0]
    );
}

/// Answers per sample and tokens per answer in the sampled check: vLLM on 2 cores is slow, so
/// just enough to see a sampler that is not vLLM's. 48 × 16 judged tokens a sample detect a shift of
/// about 12 points in how often vLLM's first choice is taken (62 % at temperature 0.8 when
/// measured): a verification that takes the argmax, ignores the temperature, or samples at 0.4
/// (84 %: chi-square 140 against a threshold near 21 — the check proves it on every run). Smaller
/// distortions (a top-p of 0.95 instead of 0.9) go unseen.
const SAMPLED_ANSWERS: u64 = 48;
const SAMPLED_TOKENS: usize = 16;
/// The proxy's verification requests to vLLM carry no seed (one seed for every position would
/// correlate the positions), so its answers differ on every run: the level is each run's
/// false-alarm rate, one in ten thousand.
const SAMPLED_LEVEL: f64 = 1e-4;
const PERMUTATIONS: usize = 19_999;

fn sampled_settings(temperature: f64) -> Value {
    json!({"temperature": temperature, "top_k": 40, "top_p": 0.9, "min_p": 0.05})
}

/// Sampled answers through `proxy` (a vLLM target) against vLLM alone with the same settings
/// (seeded), every token judged by vLLM (`tightwad_e2e::sampled`).
async fn sampled_answers_follow_vllms_own_distribution(vllm: &VllmServer, proxy: &RunningProxy) {
    let prompt = "Once upon a time";
    let ids = vllm.tokenize(prompt).await;
    let judge = |answer: Vec<u64>| {
        let ids = &ids;
        async move {
            picks(
                vllm_picks(&vllm.url, SERVED_MODEL, ids, &answer).await,
                SAMPLED_TOKENS,
            )
        }
    };
    let started = Instant::now();
    let (mut alone, mut colder, mut through) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 0..SAMPLED_ANSWERS {
        let mut own = sampled_settings(0.8);
        merge(&mut own, json!({"seed": seed}));
        alone.push(judge(vllm.sample(&ids, SAMPLED_TOKENS, &own).await).await);
        let mut cold = sampled_settings(0.4);
        merge(&mut cold, json!({"seed": 10_000 + seed}));
        colder.push(judge(vllm.sample(&ids, SAMPLED_TOKENS, &cold).await).await);
        let mut body =
            json!({"prompt": prompt, "max_tokens": SAMPLED_TOKENS, "return_token_ids": true});
        merge(&mut body, sampled_settings(0.8));
        let (status, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "sampled: {v}");
        assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
        through.push(judge(proxy_token_ids(&v)).await);
    }
    let outcome = same_distribution(&alone, &through, PERMUTATIONS, 1);
    let blind = same_distribution(&alone, &colder, PERMUTATIONS, 1);
    eprintln!(
        "sampled through the proxy vs vLLM alone: {outcome}; vLLM at T 0.4 vs 0.8: {blind} ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        !outcome.differs_at(SAMPLED_LEVEL),
        "sampled answers through the proxy are not distributed like vLLM's own: {outcome}"
    );
    assert!(
        blind.differs_at(SAMPLED_LEVEL),
        "the comparison is blind: vLLM at temperature 0.4 vs 0.8 gave {blind}"
    );
    assert!(
        through.iter().flatten().any(|p| *p != Pick::Rank(0)),
        "the proxy only ever took vLLM's first choice"
    );
}

/// A llama.cpp target with a vLLM draft; vLLM is killed while a streamed greedy answer is under
/// way (rounds already drafted by vLLM, the stream not finished): the client still gets the whole
/// answer, the target's own, without an error, and the stats say the draft failed and why.
async fn a_vllm_draft_killed_mid_stream_changes_nothing_the_client_sees(
    vllm: &mut VllmServer,
    target: &LlamaServer,
    proxy: &RunningProxy,
) {
    let prompt = "The history of lighthouses";
    let max_tokens = 64;
    let reference = target.reference(json!(prompt), max_tokens).await;
    let drafted = |stats: &Value| stats["pairings"][0]["drafted"].as_u64().unwrap_or(0);
    let drafted_before = drafted(&proxy.stats().await);
    let client = reqwest::Client::new();
    let mut stream = SseRead::open(
        &client,
        &format!("{}/v1/completions", proxy.url),
        &json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true,
                "return_token_ids": true}),
    )
    .await;
    stream.read_events(2).await;
    // This answer's rounds are under way: vLLM has drafted for it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while drafted(&proxy.stats().await) <= drafted_before {
        assert!(
            Instant::now() < deadline,
            "vLLM never drafted for the streamed answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !stream.body.contains("[DONE]"),
        "the answer ended before the draft could be killed: make it longer"
    );
    let before_kill = stream.events().len();
    vllm.kill();
    stream
        .read_to_end(Duration::from_secs(300))
        .await
        .expect("the stream ends");
    let events = stream.events();
    assert!(
        !stream.body.contains("\"error\""),
        "the client saw an error: {}",
        stream.body
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.len() > before_kill + 2,
        "nothing came after the draft died: {}",
        stream.body
    );
    let tokens = streamed_token_ids(&events).expect("token ids on the final chunk");
    let outcome = compare(&tokens, &reference, "after the vLLM draft died mid-stream");
    assert_ne!(outcome, Agreement::TieAt(0));
    let tightwad = streamed_tightwad(&events).expect("the tightwad object");
    assert_eq!(tightwad["served_by"], "speculative", "{tightwad}");
    let stats = proxy.stats().await;
    let pairing = &stats["pairings"][0];
    assert!(pairing["draft_failures"].as_u64() >= Some(1), "{stats}");
    let why = pairing["drafters"][0]["unusable"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.starts_with("failed"),
        "the stats do not say the vLLM draft failed: {stats}"
    );
}

#[tokio::test]
async fn real_vllm_pairings_are_exact_sample_like_vllm_alone_and_outlive_a_dead_draft() {
    let env = env();
    let mut vllm = VllmServer::start().await;
    let (target_gguf, draft_gguf) = env.smollm2();
    let llama_target =
        LlamaServer::start(&env, &target_gguf, ServerOptions::target(K as u32)).await;
    let mut llama_draft = LlamaServer::start(&env, &draft_gguf, ServerOptions::default()).await;

    // vLLM target, llama.cpp draft (the homelab mix: small card drafts, big card verifies).
    let mixed = RunningProxy::start_entry(entry(
        &vllm.url,
        BackendKind::Vllm,
        &llama_draft.url,
        BackendKind::Llamacpp,
    ))
    .await;
    check_pairing("vLLM target + llama.cpp draft", &mixed, |p| {
        let vllm = &vllm;
        async move { vllm.reference(&vllm.tokenize(&p).await, MAX_TOKENS).await }
    })
    .await;

    // The reverse: llama.cpp target, vLLM draft.
    let reverse = RunningProxy::start_entry(entry(
        &llama_target.url,
        BackendKind::Llamacpp,
        &vllm.url,
        BackendKind::Vllm,
    ))
    .await;
    check_pairing("llama.cpp target + vLLM draft", &reverse, |p| {
        let target = &llama_target;
        async move { target.reference(json!(p), MAX_TOKENS).await }
    })
    .await;

    // vLLM only: one server drafting for itself. Its proposals are its own greedy choices, so
    // all are accepted but where a numerical tie lets the batched verification take the other
    // of two equal choices.
    let only = RunningProxy::start_entry(entry(
        &vllm.url,
        BackendKind::Vllm,
        &vllm.url,
        BackendKind::Vllm,
    ))
    .await;
    check_pairing("vLLM target + vLLM draft", &only, |p| {
        let vllm = &vllm;
        async move { vllm.reference(&vllm.tokenize(&p).await, MAX_TOKENS).await }
    })
    .await;
    let stats = only.stats().await;
    let acceptance = stats["pairings"][0]["acceptance"]
        .as_f64()
        .expect("acceptance");
    assert!(
        acceptance >= 0.95,
        "vLLM drafting for itself: only {acceptance} of its proposals accepted: {stats}"
    );

    // Chat: rendered with the vLLM target's own template; the answer equals vLLM's own.
    let messages = json!([{"role": "user", "content": "Name three colours of the rainbow."}]);
    let (status, direct) = tightwad_e2e::post_json(
        &format!("{}/v1/chat/completions", vllm.url),
        &json!({"model": SERVED_MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "vLLM chat: {direct}");
    let (status, through) = mixed
        .post(
            "/v1/chat/completions",
            &json!({"model": "tightwad-test", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "proxied chat: {through}");
    assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
    assert_eq!(
        through["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "the chat answer through the proxy differs from vLLM's own"
    );

    // Sampling: the several-prompts verification form, vLLM sampling each position itself.
    sampled_answers_follow_vllms_own_distribution(&vllm, &mixed).await;

    // The llama.cpp draft dies: the vLLM target finishes the answer alone (its streamed path),
    // and the answer is still vLLM's own.
    llama_draft.kill();
    let prompt = "The history of lighthouses";
    let expected = vllm
        .reference(&vllm.tokenize(prompt).await, MAX_TOKENS)
        .await;
    let v = proxied(&mixed, prompt).await;
    assert!(v.get("error").is_none(), "{v}");
    let outcome = compare(&proxy_token_ids(&v), &expected, "after the draft died");
    assert_ne!(outcome, Agreement::TieAt(0));

    // Last, as it ends vLLM: the vLLM draft of the llama.cpp target dies mid-stream.
    a_vllm_draft_killed_mid_stream_changes_nothing_the_client_sees(
        &mut vllm,
        &llama_target,
        &reverse,
    )
    .await;
}
