//! A draft sampled on its server's device (`draft_backend_sampling`: llama-server's per-request
//! `backend_sampling`, what llama.cpp's own in-process drafting does by default). On a GPU draft
//! it saves the copy of the vocabulary's logits to the host and the CPU sampler per draft token;
//! here, on CPU, the story is that the draft server really samples that way when the proxy asks,
//! that it drafts the very tokens host sampling does, and that the answers stay the target's own.
//! Real servers, the real SmolLM2 pair.

use serde_json::{json, Value};
use tightwad_e2e::{
    assert_ties_are_rare, compare, completion_tokens, env, get_json, post_json, prompts,
    proxy_token_ids, LlamaServer, RunningProxy, ServerOptions,
};
use tightwad_serve::engine::Pipelining;

const K: usize = 8;

/// Whether each slot of the draft server that has served a task sampled its last one on the
/// device (`/slots`: a slot's `params` are its last task's settings).
async fn device_sampled(server: &LlamaServer) -> Vec<Value> {
    let slots: Value = get_json(&format!("{}/slots", server.url)).await;
    let used: Vec<Value> = slots
        .as_array()
        .unwrap_or_else(|| panic!("no slots in {slots}"))
        .iter()
        .filter(|s| s.get("params").is_some())
        .map(|s| s["params"]["backend_sampling"].clone())
        .collect();
    assert!(!used.is_empty(), "no slot has served a task: {slots}");
    used
}

#[tokio::test]
async fn a_draft_sampled_on_the_device_is_the_draft_sampled_on_the_host() {
    let env = env();
    let (_, draft_model) = env.smollm2();
    let draft = LlamaServer::start(&env, &draft_model, ServerOptions::default()).await;
    let url = format!("{}/completion", draft.url);
    for prompt in prompts().iter().take(12) {
        let mut drafts = Vec::new();
        for on_device in [false, true] {
            let (status, v) = post_json(
                &url,
                &json!({"prompt": prompt, "n_predict": K, "temperature": 0,
                        "backend_sampling": on_device}),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(
                device_sampled(&draft).await,
                [json!(on_device)],
                "the server did not take backend_sampling = {on_device}"
            );
            drafts.push(completion_tokens(&v));
        }
        assert_eq!(drafts[0], drafts[1], "{prompt:?}");
    }
}

#[tokio::test]
async fn through_the_proxy_drafts_sampled_on_the_device_keep_the_answers_the_targets_own() {
    let env = env();
    let (target_model, draft_model) = env.smollm2();
    let target = LlamaServer::start(&env, &target_model, ServerOptions::target(K as u32)).await;
    // Two slots: a block drafted ahead runs beside the round's own draft.
    let two_slots = ServerOptions {
        slots: 2,
        ..Default::default()
    };
    let draft = LlamaServer::start(&env, &draft_model, two_slots).await;
    // Thirty prompts drafting one block at a time, ten more drafting ahead as well.
    for (pipeline, n_prompts) in [(Pipelining::Off, 30), (Pipelining::On, 10)] {
        let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), K);
        entry.draft_backend_sampling = true;
        entry.pipeline = pipeline;
        let proxy = RunningProxy::start_entry(entry).await;
        let stats = proxy.stats().await;
        assert_eq!(
            stats["pairings"][0]["draft_backend_sampling"], true,
            "{stats}"
        );
        let mut outcomes = Vec::new();
        let mut drafted = 0;
        for prompt in prompts().iter().take(n_prompts) {
            let (status, v) = proxy
                .post(
                    "/v1/completions",
                    &json!({"prompt": prompt, "max_tokens": 16, "temperature": 0,
                            "return_token_ids": true}),
                )
                .await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
            drafted += v["tightwad"]["drafted"].as_u64().unwrap_or(0);
            let reference = target.reference(json!(prompt), 16).await;
            outcomes.push(compare(&proxy_token_ids(&v), &reference, prompt));
        }
        assert_ties_are_rare(&outcomes);
        assert!(drafted > 0, "{pipeline:?}: nothing was drafted");
        let sampled = device_sampled(&draft).await;
        assert!(
            sampled.iter().all(|s| *s == json!(true)),
            "{pipeline:?}: the draft server sampled on the host: {sampled:?}"
        );
    }
}
