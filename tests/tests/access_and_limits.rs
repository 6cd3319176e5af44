//! Who may use the proxy and how much at once; a client that leaves stops the work it started.

use std::time::{Duration, Instant};

use serde_json::json;
use tightwad_e2e::{env, get_json, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;

fn config(target: &str, draft: Option<&str>) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![RunningProxy::entry(target, draft, 4)],
        ..ProxyConfig::default()
    }
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url, None);
    c.api_keys = vec!["sk-tightwad-test".into()];
    let proxy = RunningProxy::start_with(c).await;
    let client = reqwest::Client::new();
    let body = json!({"prompt": "Once", "max_tokens": 4, "temperature": 0});
    let url = format!("{}/v1/completions", proxy.url);

    let r = client.post(&url).json(&body).send().await.expect("sent");
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.expect("JSON error");
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = client
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("sk-tightwad-test")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{}/v1/models", proxy.url))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    // Health and metrics stay open for load balancers and scrapers.
    let r = client
        .get(format!("{}/health", proxy.url))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_client_over_its_concurrency_limit_gets_429_and_max_tokens_is_capped() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url, None);
    c.max_concurrent_per_client = 1;
    c.max_tokens_limit = Some(64);
    let proxy = RunningProxy::start_with(c).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", proxy.url);
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Once", "max_tokens": 100}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "max_tokens");
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Once", "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64() <= Some(64));

    let mut long = client
        .post(&url)
        .json(&json!({"prompt": "Once", "max_tokens": 64, "stream": true}))
        .send()
        .await
        .expect("stream starts");
    let _ = long.chunk().await;
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Twice", "max_tokens": 4}),
        )
        .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    while let Ok(Some(_)) = long.chunk().await {}
    // Once the stream is over, the place is free again.
    let (s, _) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Twice", "max_tokens": 4}),
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_client_that_disconnects_stops_the_backend_work() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    for draft_url in [Some(draft.url.as_str()), None] {
        let proxy = RunningProxy::start(&target.url, draft_url, 4).await;
        let client = reqwest::Client::new();
        let mut resp = client
            .post(format!("{}/v1/completions", proxy.url))
            .json(&json!({"prompt": "Once upon a time", "max_tokens": 3000, "temperature": 0, "stream": true}))
            .send()
            .await
            .expect("stream starts");
        for _ in 0..3 {
            let _ = resp.chunk().await;
        }
        // The target is at work on this answer (with a draft, between rounds it may be idle for
        // a moment: watch until it is seen busy).
        let deadline = Instant::now() + Duration::from_secs(10);
        while target.metric("llamacpp:requests_processing").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "the target never worked on the stream (draft: {draft_url:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(resp);
        drop(client);
        // The target stops working for nobody within a few seconds.
        let mut idle = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if target.metric("llamacpp:requests_processing").await == 0.0 {
                idle = true;
                break;
            }
        }
        assert!(
            idle,
            "the target kept generating after the client left (draft: {draft_url:?})"
        );
        // And nothing more is decoded afterwards. Nothing outside the proxy tells when it has let
        // go of the request, so the target's decode counter is watched for 1 s: a proxy still
        // driving rounds (a few tens of ms each here) would move it many times over.
        let decodes = target.metric("llamacpp:n_decode_total").await;
        let watched_until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < watched_until {
            assert_eq!(
                target.metric("llamacpp:n_decode_total").await,
                decodes,
                "the target decoded after the client left (draft: {draft_url:?})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn several_pairings_are_served_under_their_own_model_names() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let mut fast = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    fast.name = Some("with-draft".into());
    let mut plain = RunningProxy::entry(&target.url, None, 4);
    plain.name = Some("target-only".into());
    let c = ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![fast, plain],
        ..ProxyConfig::default()
    };
    let proxy = RunningProxy::start_with(c).await;
    let models: serde_json::Value = get_json(&format!("{}/v1/models", proxy.url)).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["with-draft", "target-only"]);
    for (model, served_by) in [
        ("with-draft", "speculative"),
        ("target-only", "target_only"),
    ] {
        let (s, v) = proxy
            .post("/v1/completions", &json!({"model": model, "prompt": "Once", "max_tokens": 8, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["model"], model);
        assert_eq!(v["tightwad"]["served_by"], served_by, "{v}");
    }
    let stats = proxy.stats().await;
    assert_eq!(stats["pairings"].as_array().map(Vec::len), Some(2));
}
