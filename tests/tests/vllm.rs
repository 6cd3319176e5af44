//! A REAL vLLM (CPU build from `scripts/setup-vllm`, SmolLM2 converted from the same GGUF the
//! llama.cpp servers load) as target, as draft, and mixed with llama.cpp: greedy output through the
//! proxy equals the target's own, token for token, on many prompts. One vLLM start for the whole
//! file (it takes a minute or more), so everything runs in one test.

use serde_json::{json, Value};
use tightwad_e2e::vllm::VllmServer;
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, prompts, proxy_token_ids, Agreement, LlamaServer,
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

#[tokio::test]
async fn real_vllm_targets_and_drafts_mixed_with_llama_cpp_are_exact() {
    let env = env();
    let vllm = VllmServer::start().await;
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
        &json!({"model": tightwad_e2e::vllm::SERVED_MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}),
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
    let (status, sampled) = mixed
        .post(
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": MAX_TOKENS, "temperature": 0.8, "top_p": 0.9, "return_token_ids": true}),
        )
        .await;
    assert_eq!(status, 200, "sampled: {sampled}");
    assert_eq!(sampled["tightwad"]["served_by"], "speculative", "{sampled}");
    assert!(!proxy_token_ids(&sampled).is_empty(), "{sampled}");

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
}
