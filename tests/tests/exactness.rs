//! A user points their OpenAI client at Tightwad instead of the target: the answers must be the
//! target's own, token for token, however the draft guessed.
//!
//! "The target alone" is the same llama-server answering the same prompt with a fresh prompt
//! evaluation and greedy decoding. Batched verification runs other CPU kernels than one-token
//! decoding, so where the target's own top two choices are a numerical tie the two may differ; the
//! comparison allows that and only that (see `tightwad_e2e::compare`).

use serde_json::{json, Value};
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, prompts, proxy_token_ids, Agreement, LlamaServer,
    RunningProxy, ServerOptions,
};
use tightwad_serve::engine::Pipelining;

const K: u32 = 4;
const MAX_TOKENS: usize = 32;

struct Setup {
    target: LlamaServer,
    _draft: Option<LlamaServer>,
    proxy: RunningProxy,
}

async fn setup(draft_model: Option<&str>) -> Setup {
    setup_with(draft_model, Pipelining::Auto).await
}

async fn setup_with(draft_model: Option<&str>, pipeline: Pipelining) -> Setup {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(K)).await;
    let draft = match draft_model {
        Some(m) => Some(LlamaServer::start(&env, &env.model(m), ServerOptions::default()).await),
        None => None,
    };
    let mut entry = RunningProxy::entry(
        &target.url,
        draft.as_ref().map(|d| d.url.as_str()),
        K as usize,
    );
    entry.pipeline = pipeline;
    // Drafts run to k (no confidence stop): the tests count full rounds, and the identical
    // draft, always right, is not always sure (a generated model's probabilities are flat).
    entry.draft_p_min = 0.0;
    let proxy = RunningProxy::start_entry(entry).await;
    Setup {
        target,
        _draft: draft,
        proxy,
    }
}

#[tokio::test]
async fn greedy_completions_are_the_targets_own_tokens_on_thirty_prompts() {
    let s = setup(Some("draft.gguf")).await;
    let prompts = prompts();
    assert!(prompts.len() >= 30);
    let (mut drafted, mut accepted) = (0, 0);
    let mut outcomes = Vec::new();
    for prompt in &prompts {
        let (status, through) = s
            .proxy
            .post(
                "/v1/completions",
                &json!({"model": "tightwad-test", "prompt": prompt, "max_tokens": MAX_TOKENS,
                        "temperature": 0, "return_token_ids": true}),
            )
            .await;
        assert_eq!(status, 200, "{through}");
        let reference = s.target.reference(json!(prompt), MAX_TOKENS).await;
        let outcome = compare(&proxy_token_ids(&through), &reference, prompt);
        if outcome == Agreement::Identical {
            assert_eq!(
                through["choices"][0]["text"],
                reference.text.as_str(),
                "prompt {prompt:?}"
            );
        }
        outcomes.push(outcome);
        assert_eq!(through["usage"]["completion_tokens"], MAX_TOKENS);
        assert_eq!(through["choices"][0]["finish_reason"], "length");
        assert_eq!(through["tightwad"]["served_by"], "speculative");
        drafted += through["tightwad"]["drafted"].as_u64().unwrap_or(0);
        accepted += through["tightwad"]["accepted"].as_u64().unwrap_or(0);
    }
    assert_ties_are_rare(&outcomes);
    // The noisy draft agrees often but not always: both paths (accept, reject) were exercised.
    let acceptance = accepted as f64 / drafted as f64;
    assert!(
        (0.3..0.98).contains(&acceptance),
        "acceptance {acceptance} ({accepted}/{drafted}) is outside the range the test models are built for"
    );
    let stats = s.proxy.stats().await;
    assert_eq!(stats["pairings"][0]["drafted"], drafted);
    assert_eq!(stats["pairings"][0]["accepted"], accepted);
}

fn streamed_text(events: &[String], chat: bool) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            let piece = if chat {
                &c["choices"][0]["delta"]["content"]
            } else {
                &c["choices"][0]["text"]
            };
            piece.as_str().map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn greedy_chat_streamed_and_not_matches_the_target_alone() {
    let s = setup(Some("draft.gguf")).await;
    let mut outcomes = Vec::new();
    for prompt in prompts().iter().take(12) {
        let messages = json!([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": prompt}]);
        let body = json!({"messages": messages, "max_tokens": 24, "temperature": 0, "return_token_ids": true});
        let (status, through) = s.proxy.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{through}");
        assert_eq!(through["object"], "chat.completion");
        let rendered = s.target.render_chat(&messages).await;
        let reference = s.target.reference(json!(rendered), 24).await;
        let outcome = compare(&proxy_token_ids(&through), &reference, prompt);
        let text = through["choices"][0]["message"]["content"]
            .as_str()
            .expect("text")
            .to_string();
        if outcome == Agreement::Identical {
            assert_eq!(text, reference.text, "prompt {prompt:?}");
        }
        outcomes.push(outcome);
        // The target's own chat endpoint counts the same prompt tokens.
        let alone = s
            .target
            .openai(
                "/v1/chat/completions",
                &json!({"messages": messages, "max_tokens": 1}),
            )
            .await;
        assert_eq!(
            through["usage"]["prompt_tokens"],
            alone["usage"]["prompt_tokens"]
        );

        // Streaming gives the same text, in OpenAI's chunk shapes, ending with usage and [DONE].
        let mut streamed_body = body.clone();
        streamed_body["stream"] = json!(true);
        streamed_body["stream_options"] = json!({"include_usage": true});
        let events = s.proxy.stream("/v1/chat/completions", &streamed_body).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).expect("each event is JSON"))
            .collect();
        assert_eq!(
            streamed_text(&events, true),
            text,
            "streamed prompt {prompt:?}"
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        let usage = chunks.last().expect("a usage chunk");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"]["completion_tokens"],
            through["usage"]["completion_tokens"]
        );
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "length"));
    }
    assert_ties_are_rare(&outcomes);
}

#[tokio::test]
async fn stop_strings_end_the_answer_where_the_target_ends_it() {
    let s = setup(Some("draft.gguf")).await;
    let mut cut = 0;
    for prompt in prompts().iter().take(12) {
        // A stop string taken from the middle of the target's own answer, so it really occurs.
        let reference = s.target.reference(json!(prompt), 40).await;
        let (_, free) = s
            .proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 40, "temperature": 0, "return_token_ids": true}))
            .await;
        if compare(&proxy_token_ids(&free), &reference, prompt) != Agreement::Identical {
            continue;
        }
        let chars: Vec<char> = reference.text.chars().collect();
        if chars.len() < 12 {
            continue;
        }
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
        let expected = &reference.text[..reference.text.find(&stop).expect("stop occurs")];
        let body = json!({"prompt": prompt, "max_tokens": 40, "temperature": 0,
                          "stop": [stop.clone(), "never-occurs"]});
        let alone = s
            .target
            .openai(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 40,
            "temperature": 0, "stop": [stop.clone(), "never-occurs"], "cache_prompt": false}),
            )
            .await;
        let (status, through) = s.proxy.post("/v1/completions", &body).await;
        assert_eq!(status, 200, "{through}");
        assert_eq!(through["choices"][0]["text"], expected, "stop {stop:?}");
        assert_eq!(through["choices"][0]["finish_reason"], "stop");
        if alone["choices"][0]["text"] == expected {
            // Same text as the target alone; then the same token count too.
            assert_eq!(
                through["usage"]["completion_tokens"], alone["usage"]["completion_tokens"],
                "stop {stop:?}"
            );
        }
        // Streamed, the held-back start of a stop string must never leak.
        let mut sbody = body.clone();
        sbody["stream"] = json!(true);
        let events = s.proxy.stream("/v1/completions", &sbody).await;
        assert_eq!(
            streamed_text(&events, false),
            expected,
            "streamed, stop {stop:?}"
        );
        cut += 1;
    }
    assert!(
        cut >= 8,
        "only {cut} answers were checked with a stop string"
    );
}

#[tokio::test]
async fn one_target_decode_per_speculation_round() {
    // Pipelined drafting included: the draft's early work must not cost the target decodes.
    let s = setup(Some("draft.gguf")).await;
    for prompt in prompts().iter().take(6) {
        let before = s.target.metric("llamacpp:n_decode_total").await;
        let (status, through) = s
            .proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 48, "temperature": 0}),
            )
            .await;
        assert_eq!(status, 200, "{through}");
        let after = s.target.metric("llamacpp:n_decode_total").await;
        let rounds = through["tightwad"]["rounds"].as_u64().expect("rounds");
        assert!(rounds > 0 && rounds < 48, "rounds {rounds}");
        assert_eq!(
            (after - before) as u64,
            rounds,
            "prompt {prompt:?}: {rounds} rounds took {} target decodes",
            after - before
        );
    }
}

#[tokio::test]
async fn an_identical_draft_is_always_accepted() {
    // Drafting ahead on every request: the test counts the rounds whose draft was ready.
    let s = setup_with(Some("draft-identical.gguf"), Pipelining::On).await;
    let mut outcomes = Vec::new();
    for prompt in prompts().iter().take(8) {
        let (_, through) = s
            .proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": true}))
            .await;
        let reference = s.target.reference(json!(prompt), MAX_TOKENS).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
        // k accepted + 1 bonus per round: a full round every time.
        let rounds = through["tightwad"]["rounds"].as_u64().expect("rounds");
        assert!(
            rounds <= (MAX_TOKENS as u64).div_ceil(K as u64 + 1),
            "{rounds} rounds: {through}"
        );
        // The pipelined draft (drafted while the target verified) was ready for most rounds.
        let pipelined = through["tightwad"]["pipelined_rounds"]
            .as_u64()
            .expect("pipelined_rounds");
        assert!(
            pipelined * 2 >= rounds,
            "only {pipelined} of {rounds} rounds pipelined: {through}"
        );
    }
    assert_ties_are_rare(&outcomes);
    // The same weights run as one-token decodes on the draft and as a batch on the target: only
    // numerical ties can make them disagree, so acceptance is (nearly) total.
    let stats = s.proxy.stats().await;
    let acceptance = stats["pairings"][0]["acceptance"]
        .as_f64()
        .expect("acceptance");
    assert!(
        acceptance >= 0.97,
        "identical draft accepted only {acceptance}: {stats}"
    );
}

#[tokio::test]
async fn a_draft_with_another_vocabulary_is_refused_and_output_stays_exact() {
    let s = setup(Some("draft-othervocab.gguf")).await;
    let stats = s.proxy.stats().await;
    assert_eq!(stats["pairings"][0]["speculation_enabled"], false);
    let reason = stats["pairings"][0]["speculation_off_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("vocabulary") || reason.contains("tokenize"),
        "reason: {reason}"
    );

    let mut outcomes = Vec::new();
    for prompt in prompts().iter().take(8) {
        let (_, through) = s
            .proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(through["tightwad"]["served_by"], "target_only");
        assert_eq!(through["tightwad"]["drafted"], 0);
        let reference = s.target.reference(json!(prompt), MAX_TOKENS).await;
        let outcome = compare(&proxy_token_ids(&through), &reference, prompt);
        if outcome == Agreement::Identical {
            assert_eq!(through["choices"][0]["text"], reference.text.as_str());
        }
        outcomes.push(outcome);
    }
    assert_ties_are_rare(&outcomes);
}

#[tokio::test]
async fn without_a_draft_the_proxy_serves_the_target_alone() {
    let s = setup(None).await;
    let mut outcomes = Vec::new();
    for prompt in prompts().iter().take(6) {
        let body =
            json!({"prompt": prompt, "max_tokens": 20, "temperature": 0, "return_token_ids": true});
        let (_, through) = s.proxy.post("/v1/completions", &body).await;
        let reference = s.target.reference(json!(prompt), 20).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
        assert_eq!(through["usage"]["completion_tokens"], 20);
    }
    assert_ties_are_rare(&outcomes);
    // Requests the engine does not drive go to the target unchanged and come back as its answer.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0,
                      "presence_penalty": 0.5, "cache_prompt": false});
    let alone = s.target.openai("/v1/completions", &body).await;
    let (status, through) = s.proxy.post("/v1/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(through["choices"][0]["text"], alone["choices"][0]["text"]);
    let stats = s.proxy.stats().await;
    assert_eq!(stats["pairings"][0]["requests"]["passthrough"], 1);
}
