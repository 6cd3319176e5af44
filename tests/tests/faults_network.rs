//! Links cut mid-stream, with real llama-servers in network namespaces behind veth links and the
//! proxy in the root namespace: the silent kind of failure (no RST, no FIN) that only timeouts
//! catch. After each case the proxy is back to the descriptors and tasks it held before.
//!
//! Root only (network namespaces), like every test on `tightwad_e2e::netns`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::footprint::Footprint;
use tightwad_e2e::http::{streamed_token_ids, SseRead};
use tightwad_e2e::netns::Lab;
use tightwad_e2e::{compare, env, Agreement, LlamaServer, RunningProxy, ServerOptions};

const PROMPT: &str = "The history of lighthouses";
const DRAFT_TIMEOUT_S: u64 = 3;
const TARGET_TIMEOUT_S: u64 = 6;
/// How long the proxy gets to drop what a fault left (closed sockets, finished tasks).
const SETTLE: Duration = Duration::from_secs(15);
/// Descriptors the proxy may hold above the baseline: re-opened keep-alive connections to the two
/// servers (pooled, one or two each), not leaks. A leak per request or per round grows past this.
const FD_SLACK: usize = 4;

/// The pairing the fault tests use: speculation pinned on, short timeouts so faults show quickly.
fn entry(target: &str, draft: Option<&str>) -> tightwad_serve::config::PairingEntry {
    let mut entry = RunningProxy::entry(target, draft, 4);
    entry.draft_timeout_s = DRAFT_TIMEOUT_S;
    entry.target_timeout_s = TARGET_TIMEOUT_S;
    entry
}

/// One short request so every connection pool is warm, then the footprint with the test's own
/// clients gone.
async fn warm_baseline(proxy: &RunningProxy) -> Footprint {
    let (status, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Warm up", "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        Footprint::connections_closed(proxy.port(), Duration::from_secs(10)).await,
        "the warm-up request's connection to the proxy stayed open"
    );
    Footprint::now()
}

async fn assert_back_to_baseline(baseline: Footprint) {
    let after = Footprint::settle_to(baseline, FD_SLACK, SETTLE).await;
    assert!(
        after.open_fds <= baseline.open_fds + FD_SLACK && after.alive_tasks <= baseline.alive_tasks,
        "the proxy did not return to its baseline within {SETTLE:?}: before {baseline:?}, after {after:?}"
    );
    eprintln!("footprint: before {baseline:?}, after {after:?}");
}

fn stream_request(max_tokens: usize) -> Value {
    json!({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": true, "return_token_ids": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_link_cut_mid_stream_changes_nothing_the_client_sees_and_speculation_resumes() {
    let env = env();
    let mut lab = Lab::new();
    let target_ns = lab.add_namespace();
    let draft_ns = lab.add_namespace();
    let target = LlamaServer::start_in_namespace(
        &env,
        &target_ns,
        &env.model("target.gguf"),
        ServerOptions::target(4),
    )
    .await;
    let draft_opts = ServerOptions {
        slots: 2,
        ..ServerOptions::default()
    };
    let draft =
        LlamaServer::start_in_namespace(&env, &draft_ns, &env.model("draft.gguf"), draft_opts)
            .await;
    let proxy = RunningProxy::start_entry(entry(&target.url, Some(&draft.url))).await;
    let reference = target.reference(json!(PROMPT), 160).await;
    let baseline = warm_baseline(&proxy).await;

    let client = reqwest::Client::new();
    let mut stream = SseRead::open(
        &client,
        &format!("{}/v1/completions", proxy.url),
        &stream_request(160),
    )
    .await;
    stream.read_events(4).await;
    lab.set_link(&draft_ns, false);
    let cut_at = Instant::now();
    // The round in flight waits for the draft up to its timeout, then the target goes on alone.
    let ended = stream.read_to_end(Duration::from_secs(120)).await;
    lab.set_link(&draft_ns, true);
    ended.expect("the stream ends");
    eprintln!(
        "stream finished {:?} after the draft's link was cut",
        cut_at.elapsed()
    );
    let events = stream.events();
    assert!(
        !stream.body.contains("\"error\""),
        "the client saw an error: {}",
        stream.body
    );
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let tokens = streamed_token_ids(&events).expect("the final chunk carries token_ids");
    let outcome = compare(&tokens, &reference, PROMPT);
    assert_ne!(
        outcome,
        Agreement::TieAt(0),
        "diverged at once: not the same generation"
    );
    let stats = proxy.stats().await;
    assert!(
        stats["pairings"][0]["draft_failures"].as_u64() >= Some(1),
        "the cut was not noticed: {stats}"
    );
    drop(client);

    // The link is back: once the draft's retry interval (10 s) has passed, the next request
    // probes it again and speculates (answers before that are the target's alone).
    let deadline = Instant::now() + Duration::from_secs(40);
    let again = loop {
        let (status, again) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": PROMPT, "max_tokens": 24, "temperature": 0}),
            )
            .await;
        assert_eq!(status, 200, "{again}");
        if again["tightwad"]["served_by"] == "speculative" {
            break again;
        }
        assert!(
            Instant::now() < deadline,
            "the draft was never used again after its link came back: {again}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(again["tightwad"]["drafted"].as_u64() > Some(0), "{again}");
    assert_back_to_baseline(baseline).await;
}

/// Cut the target's link after a few events: the client gets an error event and `[DONE]` within
/// the configured timeout (plus a margin for the round in flight), never a hang; the proxy serves
/// again once the link is back and holds nothing more than before.
async fn target_link_cut_mid_stream(with_draft: bool) {
    let env = env();
    let mut lab = Lab::new();
    let target_ns = lab.add_namespace();
    let draft_ns = lab.add_namespace();
    let target = LlamaServer::start_in_namespace(
        &env,
        &target_ns,
        &env.model("target.gguf"),
        ServerOptions::target(4),
    )
    .await;
    let draft = if with_draft {
        let opts = ServerOptions {
            slots: 2,
            ..ServerOptions::default()
        };
        Some(LlamaServer::start_in_namespace(&env, &draft_ns, &env.model("draft.gguf"), opts).await)
    } else {
        None
    };
    let proxy =
        RunningProxy::start_entry(entry(&target.url, draft.as_ref().map(|d| d.url.as_str()))).await;
    let baseline = warm_baseline(&proxy).await;

    let client = reqwest::Client::new();
    let mut stream = SseRead::open(
        &client,
        &format!("{}/v1/completions", proxy.url),
        &stream_request(4000),
    )
    .await;
    stream.read_events(4).await;
    lab.set_link(&target_ns, false);
    let cut_at = Instant::now();
    let limit = Duration::from_secs(TARGET_TIMEOUT_S + 10);
    let ended = stream.read_to_end(limit).await;
    let took = cut_at.elapsed();
    lab.set_link(&target_ns, true);
    ended.expect("the stream ends instead of hanging");
    eprintln!(
        "stream ended {took:?} after the target's link was cut (timeout {TARGET_TIMEOUT_S} s)"
    );
    let events = stream.events();
    let error = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find(|e| e.get("error").is_some())
        .unwrap_or_else(|| panic!("no error event in: {}", stream.body));
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("target")),
        "the error does not name the target: {error}"
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        stream.body
    );
    drop(client);

    // Link back: the next request is served (the proxy re-probes a failed target).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0}),
            )
            .await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after the link came back: {status} {v}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_back_to_baseline(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_link_cut_mid_speculation_ends_the_stream_with_an_error_within_the_timeout() {
    target_link_cut_mid_stream(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_link_cut_mid_target_only_stream_ends_it_with_an_error_within_the_timeout() {
    target_link_cut_mid_stream(false).await;
}
