//! The proxy as a drop-in endpoint (issue 17): every route the target serves works through it,
//! browsers may call it, the requests SDKs send are speculated on, a reasoning template the
//! engine cannot split goes to the target with the reason said, health tells the truth from the
//! first moment, and the latencies are in `/metrics`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::{env, free_port, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::{PairingEntry, ProxyConfig};

fn pairing(name: &str, target: &str, draft: Option<&str>) -> PairingEntry {
    let mut entry = RunningProxy::entry(target, draft, 4);
    entry.name = Some(name.into());
    entry
}

fn config(pairings: Vec<PairingEntry>) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings,
        ..ProxyConfig::default()
    }
}

fn served_by(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-tightwad-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of the first metric line starting with `prefix` (labels included in the prefix).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_route_works_through_the_proxy_with_keys_and_cors() {
    let env = env();
    let gen = LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::default()).await;
    let embed_opts = ServerOptions {
        extra: vec!["--embeddings".into(), "--pooling".into(), "mean".into()],
        ..Default::default()
    };
    let embed = LlamaServer::start(&env, &env.model("target.gguf"), embed_opts).await;
    let mut c = config(vec![
        pairing("gen", &gen.url, None),
        pairing("embed", &embed.url, None),
    ]);
    c.api_keys = vec!["sk-k".into()];
    c.cors_origins = vec!["http://app.example".into()];
    let proxy = RunningProxy::start_with(c).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", proxy.url))
            .bearer_auth("sk-k")
            .json(&body)
            .send()
    };

    // Embeddings reach the pairing the body names, as the target answered.
    let r = post(
        "/v1/embeddings",
        json!({"model": "embed", "input": "hello world"}),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r), "passthrough; reason=route");
    let v: Value = r.json().await.expect("json");
    assert!(
        v["data"][0]["embedding"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{v}"
    );
    // The other pairing's target has no embeddings: its own error and status, unchanged.
    let r = post("/v1/embeddings", json!({"model": "gen", "input": "x"}))
        .await
        .expect("sent");
    assert_eq!(r.status(), 501, "llama-server's status for no --embeddings");
    assert!(r.text().await.expect("body").contains("--embeddings"));

    for (path, body) in [
        ("/tokenize", json!({"model": "gen", "content": "hello"})),
        ("/detokenize", json!({"model": "gen", "tokens": [1, 2, 3]})),
        (
            "/v1/messages",
            json!({"model": "gen", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "gen", "input": "hi", "max_output_tokens": 4}),
        ),
    ] {
        let r = post(path, body).await.expect("sent");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(served_by(&r), "passthrough; reason=route", "{path}");
        let v: Value = r.json().await.expect("json");
        assert!(v.is_object(), "{path}: {v}");
    }
    // A stream stays a stream.
    let r = post(
        "/v1/responses",
        json!({"model": "gen", "input": "hi", "max_output_tokens": 4, "stream": true}),
    )
    .await
    .expect("sent");
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let text = r.text().await.expect("stream");
    assert!(text.contains("response.completed"), "{text}");

    // Keys still apply (Anthropic's header too); unknown routes are still 404.
    let r = http
        .post(format!("{}/v1/embeddings", proxy.url))
        .json(&json!({"model": "embed", "input": "x"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{}/v1/messages", proxy.url))
        .header("x-api-key", "sk-k")
        .json(&json!({"model": "gen", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let r = post("/slots", json!({})).await.expect("sent");
    assert_eq!(
        r.status(),
        404,
        "the target's /slots (other clients' prompts) is not exposed"
    );
    let r = http
        .get(format!("{}/v1/health", proxy.url))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);

    // Counted like every forward.
    let m = metrics(&proxy.url).await;
    assert!(
        metric(
            &m,
            "tightwad_forwarded_requests_total{pairing=\"embed\",reason=\"route\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );

    // A browser's preflight from an allowed origin is answered; another origin gets no grant.
    let preflight = |origin: &'static str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", proxy.url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
    };
    let r = preflight("http://app.example").await.expect("sent");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let r = preflight("http://evil.example").await.expect("sent");
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// The requests SDKs send by default are speculated on, and give the target's own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_sdks_send_are_speculated_and_timed() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let proxy =
        RunningProxy::start_with(config(vec![pairing("m", &target.url, Some(&draft.url))])).await;
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell me"}, {"type": "text", "text": " a story."}]}],
        "response_format": {"type": "text"},
        "chat_template_kwargs": {"enable_thinking": false},
        "max_tokens": 16,
        "temperature": 0,
    });
    let (s, through) = proxy.post("/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{through}");
    assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
    let direct = target.openai("/v1/chat/completions", &body).await;
    assert_eq!(
        through["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "the engine's answer differs from the target's own"
    );
    let events = proxy
        .stream(
            "/v1/chat/completions",
            &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0, "stream": true}),
        )
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    let m = metrics(&proxy.url).await;
    for name in [
        "tightwad_time_to_first_token_seconds_count{pairing=\"m\",served_by=\"speculative\"}",
        "tightwad_request_duration_seconds_count{pairing=\"m\",served_by=\"speculative\"}",
        "tightwad_round_duration_seconds_count{pairing=\"m\"}",
    ] {
        assert!(metric(&m, name).is_some_and(|n| n >= 1.0), "{name}: {m}");
    }
}

/// A target whose chat template reasons aloud in a way the engine does not recognise (here: an
/// empty think block only when thinking is off, no `reasoning_content` rendered) answers chats
/// itself, and the response and `/metrics` say why (`reasoning.rs` has the templates the engine
/// splits itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reasoning_template_sends_chats_to_the_target_and_says_why() {
    let env = env();
    let dir = tempfile::tempdir().expect("tempdir");
    let template = dir.path().join("think.jinja");
    std::fs::write(
        &template,
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}",
    )
    .expect("template");
    let mut opts = ServerOptions::target(4);
    opts.extra = vec![
        "--jinja".into(),
        "--chat-template-file".into(),
        template.display().to_string(),
    ];
    let target = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let proxy =
        RunningProxy::start_with(config(vec![pairing("m", &target.url, Some(&draft.url))])).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.url))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(&r), "passthrough; reason=reasoning");
    // Plain completions have no chat parser: still the engine's.
    let (s, v) = proxy
        .post(
            "/v1/completions",
            &json!({"model": "m", "prompt": "Once", "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
    let m = metrics(&proxy.url).await;
    assert!(
        metric(
            &m,
            "tightwad_forwarded_requests_total{pairing=\"m\",reason=\"reasoning\"}"
        ) == Some(1.0),
        "{m}"
    );
}

/// The proxy serves at once with its target down, `/health` says why (503, the cause and URL),
/// `/live` answers, and health turns ok by itself once the target is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_the_truth_from_the_first_moment() {
    let env = env();
    let port = free_port();
    let target_url = format!("http://127.0.0.1:{port}");
    let c = config(vec![pairing("m", &target_url, None)]);
    let proxy = tightwad_serve::server::Proxy::bind(&c)
        .await
        .expect("binds");
    let url = format!("http://{}", proxy.local_addr().expect("address"));
    let started = Instant::now();
    let task = tokio::spawn(proxy.serve(std::future::pending()));
    let r = reqwest::get(format!("{url}/live")).await.expect("live");
    assert_eq!(r.status(), 200);
    let r = reqwest::get(format!("{url}/health")).await.expect("health");
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.expect("json");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("connection refused") && reason.contains(&target_url),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "health took {:?} with the target down",
        started.elapsed()
    );
    let opts = ServerOptions {
        slots: 2,
        ..Default::default()
    };
    let _target = LlamaServer::start_on(&env, &env.model("target.gguf"), opts, port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = reqwest::get(format!("{url}/health")).await.expect("health");
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "health never turned ok");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    task.abort();
}
