//! Request settings checked by their EFFECT through the proxy on real llama-servers (issue 20,
//! settings item 9): the prompt cache the engine asks for keeps each round's prompt work to the
//! new tokens; `top_p` and `min_p` narrow the target's choices through the proxy as they do on the
//! target alone; `seed` on the target-only path reproduces the target's own seeded answer; and
//! the target-only stream no longer asks for candidate probabilities it never reads.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tightwad_e2e::{compare, env, proxy_token_ids, LlamaServer, RunningProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const K: usize = 4;

/// A long prompt, so a round that re-processed its whole context would show in the counters.
const LONG_PROMPT: &str = "The lighthouse keeper climbed the spiral stairs every evening at dusk, \
    carrying a lamp, a logbook and a flask of tea. From the gallery he could see the whole bay: \
    the fishing boats coming home, the gulls circling the harbour, the cliffs turning orange in \
    the last light. He wrote down the wind, the swell and every ship that passed. One evening,";

/// The test models' target (able to verify K-token drafts) and draft, each its own llama-server.
async fn target_and_draft() -> (LlamaServer, LlamaServer) {
    LlamaServer::target_and_draft(&env(), K, 1).await
}

/// The engine asks the target to keep each slot's prompt cached (`cache_prompt`): a speculative
/// answer costs the target its prompt once plus a few new tokens per round (the previous round's
/// bonus and the draft), not the whole context again every round. Read from the target's own
/// counters of processed and cached prompt tokens.
#[tokio::test]
async fn the_prompt_cache_keeps_each_rounds_prompt_work_to_the_new_tokens() {
    let (target, draft) = target_and_draft().await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let prompt_tokens = target
        .complete(LONG_PROMPT, 1, json!({"cache_prompt": false}))
        .await["tokens_evaluated"]
        .as_u64()
        .expect("tokens_evaluated");
    let processed_before = target.metric("llamacpp:prompt_tokens_total").await;
    let cached_before = target.metric("llamacpp:prompt_tokens_cached_total").await;
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": LONG_PROMPT, "max_tokens": 48, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
    let rounds = v["tightwad"]["rounds"].as_u64().expect("rounds");
    assert!(rounds >= 4, "too few rounds to tell: {v}");
    let processed = target.metric("llamacpp:prompt_tokens_total").await - processed_before;
    let cached = target.metric("llamacpp:prompt_tokens_cached_total").await - cached_before;
    // Per round at most the previous bonus and k draft tokens (and one token of slack).
    let bound = prompt_tokens + rounds * (K as u64 + 2);
    eprintln!(
        "{rounds} rounds on a {prompt_tokens}-token prompt: {processed} prompt tokens processed, {cached} reused"
    );
    assert!(
        processed <= bound as f64,
        "the target processed {processed} prompt tokens for {rounds} rounds on a {prompt_tokens}-token prompt (at most {bound} with the cache)"
    );
    assert!(
        cached >= ((rounds - 1) * prompt_tokens) as f64,
        "the rounds did not reuse the cached context: {cached} tokens reused over {rounds} rounds"
    );
}

/// `top_p` and `min_p` reach the target's sampler through the proxy: at a temperature of 1.5
/// (a wide spread of samples), a `top_p` so small or a `min_p` so large that only the most
/// likely token survives makes the answer the target's greedy one, through the proxy as on the
/// target alone. A proxy that dropped either setting would sample at 1.5 and wander off.
#[tokio::test]
async fn top_p_and_min_p_narrow_the_targets_choices_through_the_proxy_as_alone() {
    let (target, draft) = target_and_draft().await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let prompt = "The history of lighthouses";
    let reference = target.reference(json!(prompt), 32).await;
    for narrowing in [json!({"top_p": 0.0001}), json!({"min_p": 0.995})] {
        let mut body = json!({"prompt": prompt, "max_tokens": 32, "temperature": 1.5, "return_token_ids": true});
        tightwad_e2e::merge(&mut body, narrowing.clone());
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
        compare(
            &proxy_token_ids(&v),
            &reference,
            &format!("{narrowing} through the proxy"),
        );
        let mut extra = json!({"temperature": 1.5});
        tightwad_e2e::merge(&mut extra, narrowing.clone());
        let alone = target.complete(prompt, 32, extra).await;
        let alone_tokens: Vec<u64> = alone["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        compare(
            &alone_tokens,
            &reference,
            &format!("{narrowing} on the target alone"),
        );
    }
    // Without the narrowing, the same temperature wanders off the greedy answer (the check
    // above can fail): some of a few seeded samples differ from it.
    let mut differs = false;
    for seed in 1..=4 {
        let (s, v) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 32, "temperature": 1.5, "seed": seed, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        differs |= proxy_token_ids(&v) != reference.tokens;
    }
    assert!(
        differs,
        "temperature 1.5 alone gave the greedy answer every time"
    );
}

/// A proxy whose controller times the target's own speed first (adaptive, fresh): the first 16
/// tokens of its first answer come from the target-only stream.
async fn fresh_adaptive_proxy(target: &str, draft: &str) -> RunningProxy {
    let mut entry = RunningProxy::entry(target, Some(draft), K);
    entry.adaptive = true;
    RunningProxy::start_entry(entry).await
}

/// `seed` on the target-only path: the same seed gives the same answer, and the answer the
/// target alone gives for that seed; another seed gives another answer.
#[tokio::test]
async fn a_seed_on_the_target_only_path_reproduces_the_targets_own_seeded_answer() {
    let (target, draft) = target_and_draft().await;
    let prompt = "Tell me a story about a fox";
    let mut answers = Vec::new();
    for seed in [7, 7, 8] {
        let proxy = fresh_adaptive_proxy(&target.url, &draft.url).await;
        let (s, v) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 16, "temperature": 1.0, "seed": seed, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["tightwad"]["rounds"], 0, "not the target-only path: {v}");
        let through = proxy_token_ids(&v);
        let alone = target
            .complete(prompt, 16, json!({"temperature": 1.0, "seed": seed}))
            .await;
        let alone: Vec<u64> = alone["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(
            through, alone,
            "seed {seed}: the proxy's target-only answer is not the target's own"
        );
        answers.push(through);
    }
    assert_eq!(answers[0], answers[1], "the same seed gave two answers");
    assert_ne!(answers[0], answers[2], "seeds 7 and 8 gave the same answer");
}

/// What a relay in front of the target saw the target send back.
type Received = Arc<Mutex<Vec<u8>>>;

/// A TCP relay that records every byte the server sends back (to see what the target computed
/// for the proxy), one upstream connection per client connection.
async fn recording_relay(upstream: std::net::SocketAddr) -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay address");
    let received: Received = Arc::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 || client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    seen.lock()
                        .expect("relay record")
                        .extend_from_slice(&buf[..n]);
                }
                let _ = client_write.shutdown().await;
                up.abort();
            });
        }
    });
    (format!("http://{addr}"), received)
}

/// The target-only stream asks for no candidate probabilities: its events carry text and token
/// ids, and the target computes (and sends) nothing per token that the proxy never reads. Before,
/// every streamed token came with `n_probs: 1` candidates.
#[tokio::test]
async fn the_target_only_stream_asks_for_no_probabilities_it_never_reads() {
    let (target, draft) = target_and_draft().await;
    let upstream = target
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("target address");
    let (relay_url, received) = recording_relay(upstream).await;
    let proxy = fresh_adaptive_proxy(&relay_url, &draft.url).await;
    let prompt = "The quick brown fox";
    let reference = target.reference(json!(prompt), 16).await;
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "return_token_ids": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tightwad"]["rounds"], 0, "not the target-only path: {v}");
    compare(&proxy_token_ids(&v), &reference, prompt);
    let seen = String::from_utf8_lossy(&received.lock().expect("relay record")).to_string();
    let streamed: Vec<&str> = seen
        .lines()
        .filter(|l| l.starts_with("data: ") && l.contains("\"tokens_predicted\""))
        .collect();
    assert!(
        streamed.len() >= 16,
        "the relay saw no target-only stream: {seen}"
    );
    for event in streamed {
        assert!(
            !event.contains("completion_probabilities"),
            "the target streamed probabilities nobody reads: {event}"
        );
    }
}
