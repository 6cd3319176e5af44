//! Chats to a target whose chat template thinks aloud (issue 17): the engine speculates on them
//! and answers in the target's own split — the same `reasoning_content` and `content`, and
//! stream deltas that add up to them — for the default reasoning format and for
//! `reasoning_format: none`, with the think block opened by the model or forced open by the
//! template; what it cannot split goes to the target with the reason said and counted.
//!
//! SmolLM2 (a real model) follows a few-shot pattern of `<think>…</think>` answers, so it opens
//! and closes the block itself; the second template opens it in the generation prompt.

use serde_json::{json, Value};
use tightwad_e2e::http::sse_payloads;
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, proxy_token_ids, Agreement, LlamaServer, RunningProxy,
    ServerOptions,
};
use tightwad_serve::config::{PairingEntry, ProxyConfig};

/// A Qwen3-like template: thoughts of earlier turns rendered in `<think>` blocks,
/// `enable_thinking: false` closes an empty block in the generation prompt.
const THINK: &str = "{%- for m in messages %}{%- if m.role == 'assistant' %}<|im_start|>assistant\n{% if m.reasoning_content is defined and m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}";

/// The same, forcing the block open (the prompt ends with `<think>\n`), as DeepSeek-R1's and
/// Qwen3's thinking-only templates do.
const FORCED: &str = "{%- for m in messages %}{%- if m.role == 'assistant' %}<|im_start|>assistant\n{% if m.reasoning_content is defined and m.reasoning_content %}<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}{{ m.content }}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}";

fn few_shot(question: &str) -> Value {
    json!([
        {"role": "system", "content": "Always think inside <think> and </think> first, then answer."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is 4."},
        {"role": "user", "content": "What is 3+3?"},
        {"role": "assistant", "content": "<think>\nThe user asks 3+3. That is 6.\n</think>\n\nThe answer is 6."},
        {"role": "user", "content": question},
    ])
}

async fn start_target(
    env: &tightwad_e2e::TestEnv,
    model: &std::path::Path,
    template: &std::path::Path,
) -> LlamaServer {
    let mut opts = ServerOptions::target(4);
    opts.extra = vec![
        "--jinja".into(),
        "--chat-template-file".into(),
        template.display().to_string(),
    ];
    LlamaServer::start(env, model, opts).await
}

fn pairing(name: &str, target: &str, draft: Option<&str>) -> PairingEntry {
    let mut entry = RunningProxy::entry(target, draft, 4);
    entry.name = Some(name.into());
    entry
}

/// `(reasoning_content, content)` of a whole answer (a missing `reasoning_content` is empty).
fn message_split(v: &Value) -> (String, String) {
    let m = &v["choices"][0]["message"];
    (
        m["reasoning_content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        m["content"].as_str().unwrap_or_default().to_string(),
    )
}

/// The concatenated `reasoning_content` and `content` deltas of a stream.
fn stream_split(events: &[String]) -> (String, String) {
    let (mut r, mut c) = (String::new(), String::new());
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).expect("a JSON chunk");
        let delta = &v["choices"][0]["delta"];
        r.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
        c.push_str(delta["content"].as_str().unwrap_or_default());
    }
    (r, c)
}

async fn target_stream(url: &str, body: &Value) -> Vec<String> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let text = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("the target streams")
        .text()
        .await
        .expect("stream body");
    sse_payloads(&text)
}

/// One chat through the proxy (whole and streamed) against the target's own chat endpoint.
/// `None` when the proxy's tokens left the target's at a numerical tie (nothing to compare).
async fn check(
    proxy: &RunningProxy,
    target: &LlamaServer,
    body: &Value,
    outcomes: &mut Vec<Agreement>,
    streams_compared: &mut usize,
) -> Option<(String, String)> {
    let label = body.to_string();
    let mut through_body = body.clone();
    through_body["return_token_ids"] = json!(true);
    let (s, through) = proxy.post("/v1/chat/completions", &through_body).await;
    assert_eq!(s, 200, "{through}");
    assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
    let mut render = json!({"messages": body["messages"]});
    if let Some(kwargs) = body.get("chat_template_kwargs") {
        render["chat_template_kwargs"] = kwargs.clone();
    }
    let prompt = target.openai("/apply-template", &render).await["prompt"].clone();
    let max_tokens = body["max_tokens"].as_u64().expect("max_tokens") as usize;
    let reference = target.reference(prompt, max_tokens).await;
    let outcome = compare(&proxy_token_ids(&through), &reference, &label);
    outcomes.push(outcome.clone());
    if outcome != Agreement::Identical {
        return None;
    }
    let own = target.openai("/v1/chat/completions", body).await;
    let want = message_split(&own);
    assert_eq!(message_split(&through), want, "{label}");
    assert_eq!(
        through["choices"][0]["finish_reason"], own["choices"][0]["finish_reason"],
        "{label}"
    );
    assert_eq!(
        stream_split(&target_stream(&target.url, body).await),
        want,
        "the target's own stream, {label}"
    );
    let mut streamed = through_body.clone();
    streamed["stream"] = json!(true);
    let events = proxy.stream("/v1/chat/completions", &streamed).await;
    let ids = tightwad_e2e::http::streamed_token_ids(&events);
    if ids.as_deref() == Some(proxy_token_ids(&through).as_slice()) {
        assert_eq!(stream_split(&events), want, "the proxy's stream, {label}");
        *streams_compared += 1;
    }
    Some(want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thinking_chats_are_speculated_and_split_as_the_target_splits_them() {
    let env = env();
    let (target_model, draft_model) = env.smollm2();
    let dir = tempfile::tempdir().expect("tempdir");
    let (think, forced) = (
        dir.path().join("think.jinja"),
        dir.path().join("forced.jinja"),
    );
    std::fs::write(&think, THINK).expect("template");
    std::fs::write(&forced, FORCED).expect("template");
    let opens = start_target(&env, &target_model, &think).await;
    let forces = start_target(&env, &target_model, &forced).await;
    let draft = LlamaServer::start(&env, &draft_model, ServerOptions::default()).await;
    let proxy = RunningProxy::start_with(ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![
            pairing("opens", &opens.url, Some(&draft.url)),
            pairing("forced", &forces.url, Some(&draft.url)),
        ],
        ..ProxyConfig::default()
    })
    .await;
    let questions = [
        "What is 5+5?",
        "What is 7+1?",
        "What is 4+3?",
        "What is 9+9?",
        "What is 6+2?",
        "What is 8+5?",
    ];
    let mut outcomes = Vec::new();
    let (mut closed, mut unclosed, mut inline, mut streams) = (0, 0, 0, 0);
    for (model, target) in [("opens", &opens), ("forced", &forces)] {
        let mut bodies: Vec<Value> = questions
            .iter()
            .map(|q| json!({"model": model, "messages": few_shot(q), "max_tokens": 48, "temperature": 0}))
            .collect();
        // Everything in content; a block cut off by max_tokens; no thinking at all; thinking
        // switched off by the template's kwarg.
        for q in &questions[..2] {
            bodies.push(json!({"model": model, "messages": few_shot(q), "max_tokens": 48, "temperature": 0, "reasoning_format": "none"}));
        }
        bodies.push(json!({"model": model, "messages": few_shot("What is 1+8?"), "max_tokens": 9, "temperature": 0}));
        bodies.push(json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 24, "temperature": 0}));
        bodies.push(json!({"model": model, "messages": few_shot("What is 2+7?"), "max_tokens": 32, "temperature": 0,
            "chat_template_kwargs": {"enable_thinking": false}, "reasoning_format": "deepseek"}));
        for body in &bodies {
            let Some((reasoning, content)) =
                check(&proxy, target, body, &mut outcomes, &mut streams).await
            else {
                continue;
            };
            match (reasoning.is_empty(), content.is_empty()) {
                (false, false) => closed += 1,
                (false, true) => unclosed += 1,
                _ if content.contains("</think>") => inline += 1,
                _ => {}
            }
        }
    }
    assert_ties_are_rare(&outcomes);
    assert!(outcomes.len() >= 20, "{} chats", outcomes.len());
    assert!(
        closed >= 6,
        "only {closed} answers closed their think block"
    );
    assert!(
        unclosed >= 1,
        "no answer was cut off inside its think block"
    );
    assert!(
        inline >= 2,
        "no `reasoning_format: none` answer kept its thoughts inline"
    );
    assert!(
        streams * 5 >= outcomes.len() * 4,
        "only {streams} of {} streams generated the same tokens",
        outcomes.len()
    );
    eprintln!(
        "{} chats: {closed} closed their block, {unclosed} were cut off in it, {inline} kept it inline, {streams} streams compared",
        outcomes.len()
    );
    // A request without the engine's extras is not forwarded for its reasoning either.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(&json!({"model": "forced", "messages": few_shot("What is 3+4?"), "max_tokens": 16, "temperature": 0}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let header = r
        .headers()
        .get("x-tightwad-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(!header.contains("reason=reasoning"), "{header}");
}

/// What the engine cannot split goes to the target, with the reason in the response and in
/// `/metrics`: a reasoning format llama.cpp does not know, a conversation that ends with the
/// assistant's own message (the target continues it), a template with a parser of its own. And
/// the target's own default (`--reasoning-format none`), learned by the probe, is honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_engine_cannot_split_goes_to_the_target_with_the_reason() {
    let env = env();
    let dir = tempfile::tempdir().expect("tempdir");
    let think = dir.path().join("think.jinja");
    std::fs::write(&think, THINK).expect("template");
    // Qwen3-Coder's tool-call markup: llama.cpp parses such chats with a dedicated parser.
    let channels = dir.path().join("coder.jinja");
    std::fs::write(
        &channels,
        format!("{{# <tool_call> <function= <parameter= #}}{THINK}"),
    )
    .expect("template");
    let target = start_target(&env, &env.model("target.gguf"), &think).await;
    // Forced open, and the target's default format keeps the thoughts in the content.
    let forced = dir.path().join("forced.jinja");
    std::fs::write(&forced, FORCED).expect("template");
    let mut opts = ServerOptions::target(4);
    opts.extra = vec![
        "--jinja".into(),
        "--chat-template-file".into(),
        forced.display().to_string(),
        "--reasoning-format".into(),
        "none".into(),
    ];
    let inline = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;
    let other = start_target(&env, &env.model("target.gguf"), &channels).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let proxy = RunningProxy::start_with(ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![
            pairing("m", &target.url, Some(&draft.url)),
            pairing("coder", &other.url, Some(&draft.url)),
            pairing("inline", &inline.url, Some(&draft.url)),
        ],
        ..ProxyConfig::default()
    })
    .await;
    let user = json!({"role": "user", "content": "hi"});
    let cases = [
        (
            json!({"model": "m", "messages": [user], "reasoning_format": "bogus"}),
            "passthrough; reason=field:reasoning_format",
        ),
        (
            json!({"model": "m", "messages": [user, {"role": "assistant", "content": "<think>\nwell"}]}),
            "passthrough; reason=reasoning",
        ),
        (
            json!({"model": "coder", "messages": [user]}),
            "passthrough; reason=reasoning",
        ),
    ];
    for (mut body, want) in cases {
        body["max_tokens"] = json!(8);
        body["temperature"] = json!(0);
        let r = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", proxy.url))
            .json(&body)
            .send()
            .await
            .expect("sent");
        let header = r
            .headers()
            .get("x-tightwad-served-by")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(header, want, "{body}");
    }
    // The recognised template's chats are the engine's.
    let (s, v) = proxy
        .post(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [user], "max_tokens": 8, "temperature": 0, "return_token_ids": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
    // A target whose `--reasoning-format` is `none`: the engine's answer keeps the forced-open
    // block in the content, as the target's own does.
    let mut outcomes = Vec::new();
    let mut streams = 0;
    for q in ["hi", "What is 5+5?", "Tell me a story."] {
        let body = json!({"model": "inline", "messages": [{"role": "user", "content": q}], "max_tokens": 12, "temperature": 0});
        if let Some((reasoning, content)) =
            check(&proxy, &inline, &body, &mut outcomes, &mut streams).await
        {
            assert!(
                reasoning.is_empty() && content.starts_with("<think>\n"),
                "{content:?}"
            );
        }
    }
    assert!(outcomes.contains(&Agreement::Identical), "{outcomes:?}");
    let m = reqwest::get(format!("{}/metrics", proxy.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for (pairing, n) in [("m", 1.0), ("coder", 1.0)] {
        let line = format!(
            "tightwad_forwarded_requests_total{{pairing=\"{pairing}\",reason=\"reasoning\"}} "
        );
        let value = m
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(value, Some(n), "{pairing}: {m}");
    }
}
