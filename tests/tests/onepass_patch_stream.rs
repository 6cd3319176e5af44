//! Patch 0001's client drafts, streamed: a `/completion` with `draft_tokens` and `"stream": true`
//! against a real patched llama-server sends one chunk per token of the verified step (the accepted
//! draft tokens, then the target's own next token), then the final chunk with `stop_type` and the
//! step's timings — the same tokens and text as the same request answered whole.
//!
//! The proxy verifies without streaming; this holds the patch to what any other client of an
//! upstreamed `draft_tokens` would do with it.

use serde_json::{json, Value};
use tightwad_e2e::http::{sse_payloads, SseRead};
use tightwad_e2e::patched::{
    prefix, prompt_and_reference, start_target, step, step_body, timing, wrong, K,
};
use tightwad_e2e::{assert_ties_are_rare, compare, completion_tokens, prompts, Agreement};

/// The same step as [`step`], streamed: the chunks' payloads, in order.
async fn streamed_step(
    client: &reqwest::Client,
    url: &str,
    prompt: &[u64],
    draft: &[u64],
) -> Vec<Value> {
    let body = step_body(prompt, draft, json!({"stream": true}));
    let mut sse = SseRead::open(client, &format!("{url}/completion"), &body).await;
    sse.read_to_end(std::time::Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the streamed step did not end: {e}"));
    sse_payloads(&sse.body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            serde_json::from_str::<Value>(e)
                .unwrap_or_else(|err| panic!("a chunk is JSON: {e}: {err}"))
        })
        .collect()
}

#[tokio::test]
async fn a_streamed_draft_step_sends_each_verified_token_then_the_steps_end() {
    let target = start_target(1, 4096, &[]).await;
    let client = reqwest::Client::new();
    let prompts = prompts();
    let mut outcomes = Vec::new();
    for (n, text) in prompts.iter().take(12).enumerate() {
        let (prompt, reference) = prompt_and_reference(&target, text).await;
        // A right draft, and one with a wrong token at j (j accepted, then the target's own).
        let j = n % K;
        let mut wrong_at_j = reference.tokens[..K].to_vec();
        wrong_at_j[j] = wrong(wrong_at_j[j]);
        for (draft, accepted, what) in [
            (reference.tokens[..K].to_vec(), K, "full draft".to_string()),
            (wrong_at_j, j, format!("wrong at {j}")),
        ] {
            let label = format!("{text:?} ({what})");
            let whole = step(&target, &prompt, &draft, json!({})).await;
            let chunks = streamed_step(&client, &target.url, &prompt, &draft).await;
            let (last, tokens_chunks) = chunks.split_last().expect("at least the final chunk");

            // One chunk per token, each carrying just it, in the order of the whole answer.
            let mut streamed = Vec::new();
            let mut text_streamed = String::new();
            for c in tokens_chunks {
                assert_eq!(c["stop"], false, "{label}: {c}");
                let ids = completion_tokens(c);
                assert_eq!(ids.len(), 1, "{label}: one token a chunk: {c}");
                streamed.extend(ids);
                text_streamed.push_str(c["content"].as_str().unwrap_or_default());
            }
            assert_eq!(
                streamed,
                completion_tokens(&whole),
                "{label}: streamed vs whole"
            );
            assert_eq!(
                text_streamed, whole["content"],
                "{label}: the chunks' text is the whole answer's"
            );
            outcomes.push(compare(
                &streamed,
                &prefix(&reference, accepted + 1),
                &label,
            ));

            // The final chunk ends the step as the whole answer does, with the step's timings.
            assert_eq!(last["stop"], true, "{label}: {last}");
            assert_eq!(last["stop_type"], "limit", "{label}: {last}");
            assert_eq!(
                completion_tokens(last),
                Vec::<u64>::new(),
                "{label}: the final chunk repeats no token: {last}"
            );
            assert_eq!(last["tokens_predicted"], streamed.len(), "{label}: {last}");
            if outcomes.last() == Some(&Agreement::Identical) {
                assert_eq!(timing(last, "draft_n"), K as u64, "{label}: {last}");
                assert_eq!(
                    timing(last, "draft_n_accepted"),
                    accepted as u64,
                    "{label}: {last}"
                );
            }
        }
    }
    assert_ties_are_rare(&outcomes);
}
