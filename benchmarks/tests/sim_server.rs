//! The llama-server SIMULATION: it must satisfy the proxy's own llama-server client (the contract),
//! and the real proxy in front of it must return exactly the simulated target's greedy output.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tightwad_benchmarks::relay::{LanRelay, LinkConfig};
use tightwad_benchmarks::sim::{tokenizer, SimConfig, SimServer, Speaker};
use tightwad_serve::backend::llamacpp::LlamaServer;
use tightwad_serve::backend::types::{Role, Sampling};
use tightwad_serve::config::{PairingEntry, ProxyConfig};
use tightwad_serve::server::Proxy;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn sim(config: SimConfig) -> SimServer {
    SimServer::start_local(config).await.expect("sim starts")
}

fn client(role: Role, url: &str) -> LlamaServer {
    LlamaServer::new(role, url, TIMEOUT).expect("client")
}

#[tokio::test]
async fn the_proxys_own_client_understands_every_endpoint() {
    let target = sim(SimConfig::target(500.0, 0.1)).await;
    let t = client(Role::Target, &target.url());
    assert!(t.health().await.expect("health"));
    let props = t.props().await.expect("props");
    assert_eq!(props.total_slots, 10);
    assert_eq!(props.eos_token(), "</s>");
    assert!(props.build_info.starts_with("sim-"));
    assert_eq!(props.default_generation_settings.n_ctx, 16384);
    let model = t.model_info().await.expect("models");
    assert_eq!(model.n_vocab, Some(tokenizer::N_VOCAB));

    let ids = t.tokenize("Hi </s>", true).await.expect("tokenize");
    assert_eq!(ids.first(), Some(&tokenizer::BOS));
    assert_eq!(ids.last(), Some(&tokenizer::EOS));
    assert_eq!(
        t.detokenize(&ids[1..]).await.expect("detokenize"),
        "Hi </s>"
    );
    let rendered = t
        .apply_template(&json!([{"role": "user", "content": "hello"}]))
        .await
        .expect("template");
    assert_eq!(rendered, "<|user|>\nhello\n<|assistant|>\n");

    // One prompt: the truth, token by token, with bytes.
    let prompt = t.tokenize(&rendered, true).await.expect("tokenize");
    let want = Speaker::Target.continue_greedy(&prompt, 6);
    let one = t
        .complete(&prompt, 6, &Sampling::greedy())
        .await
        .expect("complete");
    assert_eq!(one.tokens, want);
    assert_eq!(one.stop_type, "limit");

    // A list of prompts with n_predict 1: one result per prompt, in ONE decode.
    let decodes = |c: &LlamaServer| {
        let c = c.clone();
        async move { c.metric("llamacpp:n_decode_total").await.expect("metrics") }
    };
    let before = decodes(&t).await;
    let prompts: Vec<Vec<u32>> = (0..=4)
        .map(|i| [prompt.as_slice(), &want[..i]].concat())
        .collect();
    let results = t
        .next_token_many(&prompts, &Sampling::greedy(), 1)
        .await
        .expect("multi-prompt");
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.tokens, vec![want[i]], "result {i}");
        let p = &r.completion_probabilities[0];
        assert_eq!(p.id, want[i]);
        assert_eq!(p.bytes, tokenizer::token_bytes(want[i]));
        assert_eq!(p.top_logprobs[0].id, want[i]);
    }
    assert_eq!(
        decodes(&t).await - before,
        1.0,
        "one decode per verification"
    );

    // Streamed: one event per token, then the final one.
    let events: Vec<_> = t
        .stream(&prompt, 6, &Sampling::greedy(), None)
        .await
        .expect("stream")
        .collect()
        .await;
    let events: Vec<_> = events.into_iter().map(|e| e.expect("event")).collect();
    assert_eq!(events.len(), 7);
    let streamed: Vec<u32> = events.iter().flat_map(|e| e.tokens.clone()).collect();
    assert_eq!(streamed, want);
    for (i, e) in events[..6].iter().enumerate() {
        assert_eq!(e.tokens_predicted, i + 1);
        // The target-only stream asks for no probabilities (nothing reads them): none come.
        assert!(e.completion_probabilities.is_empty(), "{e:?}");
        assert!(!e.stop);
    }
    assert!(events[6].stop);
    assert_eq!(events[6].stop_type, "limit");
}

#[tokio::test]
async fn bad_requests_get_llama_server_shaped_errors() {
    let target = sim(SimConfig::target(500.0, 0.1)).await;
    let http = reqwest::Client::new();
    for (path, body) in [
        ("/completion", json!({"prompt": {"x": 1}})),
        ("/tokenize", json!({"text": "no content"})),
        ("/detokenize", json!({"tokens": ["a"]})),
        ("/apply-template", json!({"messages": "not a list"})),
    ] {
        let resp = http
            .post(format!("{}{path}", target.url()))
            .json(&body)
            .send()
            .await
            .expect("reply");
        assert_eq!(resp.status().as_u16(), 400, "{path}");
        let v: Value = resp.json().await.expect("json error");
        assert_eq!(v["error"]["code"], 400, "{path}");
    }
}

#[tokio::test]
async fn a_draft_agrees_with_the_target_at_its_configured_rate() {
    let draft = sim(SimConfig::draft(5000.0, 0.7, 3)).await;
    let d = client(Role::Draft, &draft.url());
    let ctx = tokenizer::tokenize("<|user|>\nx\n<|assistant|>\n", true, true);
    let truth = Speaker::Target.continue_greedy(&ctx, 400);
    let mut agreed = 0;
    for i in (0..400).step_by(20) {
        let at = [ctx.as_slice(), &truth[..i]].concat();
        let guess = d
            .complete(&at, 1, &Sampling::greedy())
            .await
            .expect("draft");
        agreed += usize::from(guess.tokens == [truth[i]]);
    }
    // 20 samples at α = 0.7: anything from 6 to 20 is plausible; 0 or all-but-never would be a bug.
    assert!((6..20).contains(&agreed), "agreed {agreed}/20");
}

/// A proxy in this process, in front of `target` (and `draft`), serving until the test ends.
async fn proxy(target: &str, draft: Option<&str>, adaptive: bool) -> String {
    let mut entry = PairingEntry::new(target.to_string(), draft.map(str::to_string));
    entry.adaptive = adaptive;
    entry.draft_tokens = Some(4);
    let config = ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        pairings: vec![entry],
        ..ProxyConfig::default()
    };
    let proxy = Proxy::bind(&config).await.expect("proxy binds");
    let url = format!("http://{}", proxy.local_addr().expect("proxy addr"));
    tokio::spawn(proxy.serve(std::future::pending()));
    url
}

async fn chat(url: &str, content: &str, max_tokens: u32) -> Value {
    reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({
            "model": "tightwad",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }))
        .timeout(TIMEOUT)
        .send()
        .await
        .expect("chat reply")
        .json()
        .await
        .expect("chat json")
}

async fn assert_proxy_equals_target(adaptive: bool, rtt: Option<Duration>) {
    let target = sim(SimConfig::target(400.0, 0.05)).await;
    let draft = sim(SimConfig::draft(4000.0, 0.8, 11)).await;
    // Through LAN relays when asked: the path a real deployment has.
    let mut relays = Vec::new();
    let (target_url, draft_url) = match rtt {
        Some(rtt) => {
            let (rt, tu) = LanRelay::in_front_of(&target.url(), LinkConfig::with_rtt(rtt))
                .await
                .expect("relay");
            let (rd, du) = LanRelay::in_front_of(&draft.url(), LinkConfig::with_rtt(rtt))
                .await
                .expect("relay");
            relays.extend([rt, rd]);
            (tu, du)
        }
        None => (target.url(), draft.url()),
    };
    let proxy = proxy(&target_url, Some(&draft_url), adaptive).await;
    let mut rounds = 0;
    for prompt in ["Write a poem.", "List ten fruits.", "def fib(n):"] {
        let direct = chat(&target.url(), prompt, 48).await;
        let through = chat(&proxy, prompt, 48).await;
        assert_eq!(
            through["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
            "prompt {prompt:?}: the proxy's text differs from the target's (adaptive {adaptive})"
        );
        assert_eq!(through["usage"]["completion_tokens"], 48);
        assert_eq!(direct["usage"]["completion_tokens"], 48);
        rounds += through["tightwad"]["rounds"].as_u64().unwrap_or(0);
    }
    if !adaptive {
        assert!(rounds > 0, "speculation pinned on, yet no rounds were run");
    }
}

#[tokio::test]
async fn the_proxy_returns_exactly_the_targets_output_with_speculation_pinned_on() {
    assert_proxy_equals_target(false, None).await;
}

#[tokio::test]
async fn the_proxy_returns_exactly_the_targets_output_with_the_adaptive_controller() {
    assert_proxy_equals_target(true, None).await;
}

#[tokio::test]
async fn the_proxy_returns_exactly_the_targets_output_across_relays() {
    assert_proxy_equals_target(false, Some(Duration::from_millis(2))).await;
}
