//! Faults of a vLLM backend, against the vLLM-contract SIMULATION (`tightwad_e2e::vllm_sim`): a
//! real vLLM cannot be made to send malformed or partial replies on demand. Exactness against a
//! REAL vLLM is `tests/tests/vllm.rs`; here only the proxy's handling of bad replies is tested.

use serde_json::{json, Value};
use tightwad_e2e::vllm_sim::{SimFault, VllmSimulation};
use tightwad_e2e::{proxy_token_ids, RunningProxy};
use tightwad_serve::backend::BackendKind;

const PROMPT: &str = "the simulated answer begins";
const MAX_TOKENS: usize = 40;

async fn pairing() -> (VllmSimulation, VllmSimulation, RunningProxy) {
    let target = VllmSimulation::start().await;
    let draft = VllmSimulation::start().await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.target_kind = BackendKind::Vllm;
    entry.draft_kind = BackendKind::Vllm;
    let proxy = RunningProxy::start_entry(entry).await;
    (target, draft, proxy)
}

async fn complete(proxy: &RunningProxy) -> (u16, Value) {
    proxy
        .post(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": true}),
        )
        .await
}

#[tokio::test]
async fn simulated_vllm_pairing_reproduces_the_simulated_target() {
    let (_target, _draft, proxy) = pairing().await;
    let (status, v) = complete(&proxy).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
    let expected = VllmSimulation::greedy(PROMPT, MAX_TOKENS);
    assert_eq!(proxy_token_ids(&v), expected);
    let stats = proxy.stats().await;
    assert_eq!(stats["pairings"][0]["target_kind"], "vllm");
    assert!(
        stats["pairings"][0]["accepted"].as_u64() > Some(0),
        "{stats}"
    );
}

#[tokio::test]
async fn malformed_and_partial_vllm_replies_are_clear_errors_and_leave_nothing_stuck() {
    let (target, _draft, proxy) = pairing().await;
    for (fault, says) in [
        (SimFault::MalformedCompletions, "could not be read"),
        (SimFault::ShortPromptLogprobs, "prompt_logprobs entries"),
        (SimFault::NoTokenIds, "token_ids"),
        (SimFault::Unavailable, "503"),
    ] {
        target.set_fault(fault);
        let (status, v) = complete(&proxy).await;
        assert!(
            (500..600).contains(&status),
            "{fault:?}: expected a 5xx, got {status}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{fault:?}: the error should say {says:?}: {v}"
        );
        target.set_fault(SimFault::None);
        let (status, v) = complete(&proxy).await;
        assert_eq!(status, 200, "after {fault:?} the next request fails: {v}");
        assert_eq!(
            proxy_token_ids(&v),
            VllmSimulation::greedy(PROMPT, MAX_TOKENS)
        );
    }
}

#[tokio::test]
async fn a_vllm_draft_that_goes_away_changes_nothing_the_client_sees() {
    let (_target, draft, proxy) = pairing().await;
    let (status, _) = complete(&proxy).await;
    assert_eq!(status, 200);
    // The draft restarts (503 while loading): the target finishes alone, streamed, exactly.
    draft.set_fault(SimFault::Unavailable);
    let (status, v) = complete(&proxy).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        proxy_token_ids(&v),
        VllmSimulation::greedy(PROMPT, MAX_TOKENS)
    );
    let stats = proxy.stats().await;
    assert!(
        stats["pairings"][0]["draft_failures"].as_u64() >= Some(1),
        "{stats}"
    );
}

#[tokio::test]
async fn a_vllm_target_restarting_mid_stream_ends_the_stream_with_an_error_not_a_hang() {
    let (target, draft, proxy) = pairing().await;
    let (status, _) = complete(&proxy).await;
    assert_eq!(status, 200);
    // The draft is gone, so the target streams the answer alone — and dies after 3 tokens.
    draft.set_fault(SimFault::Unavailable);
    target.set_fault(SimFault::StreamCutAfter(3));
    let events = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        proxy.stream(
            "/v1/completions",
            &json!({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": true}),
        ),
    )
    .await
    .expect("the stream ends instead of hanging");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let error = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|e| e.get("error").is_some())
        .unwrap_or_else(|| panic!("no error event in {events:?}"));
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("finish_reason") || m.contains("broke")),
        "{error}"
    );
    // vLLM is back: the next answer is whole again.
    target.set_fault(SimFault::None);
    draft.set_fault(SimFault::None);
    let (status, v) = complete(&proxy).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        proxy_token_ids(&v),
        VllmSimulation::greedy(PROMPT, MAX_TOKENS)
    );
}

#[tokio::test]
async fn doctor_audits_a_vllm_pairing_through_the_vllm_api() {
    let target = VllmSimulation::start().await;
    let draft = VllmSimulation::start().await;
    let layout = tightwad_coordinator::cluster::layout::Layout::parse(&format!(
        "[[pairings]]\ntarget = \"{}\"\ntarget_kind = \"vllm\"\ndraft = \"{}\"\ndraft_kind = \"vllm\"\n",
        target.url, draft.url
    ))
    .expect("layout parses");
    let checks = tightwad_coordinator::doctor::live::checks(&layout).await;
    let text: Vec<String> = checks
        .iter()
        .map(|c| serde_json::to_string(c).expect("check serializes"))
        .collect();
    let find = |category: &str| {
        checks
            .iter()
            .find(|c| serde_json::to_value(c.category).ok() == Some(json!(category)))
            .unwrap_or_else(|| panic!("no {category} check in {text:?}"))
    };
    assert!(
        text.iter().any(|t| t.contains("vllm 0.0.0-simulation")),
        "the version audit is missing: {text:?}"
    );
    let vocab = find("vocabulary");
    assert_eq!(
        serde_json::to_value(vocab.status).ok(),
        Some(json!("pass")),
        "{text:?}"
    );
}
