//! A client sends something wrong, or a backend is down: it gets a clear OpenAI-shaped error with
//! the right status, and the proxy keeps serving everyone else.

use serde_json::{json, Value};
use tightwad_e2e::{env, free_port, get_json, LlamaServer, RunningProxy, ServerOptions};

fn assert_openai_error(status: u16, body: &Value, expected_status: u16, param: Option<&str>) {
    assert_eq!(status, expected_status, "{body}");
    let err = &body["error"];
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    assert!(err["type"].is_string(), "no type: {body}");
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "missing keys: {body}"
    );
    if let Some(p) = param {
        assert_eq!(err["param"], p, "{body}");
    }
}

async fn raw_post(url: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_proxy_keeps_serving() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), 4).await;
    let completions = format!("{}/v1/completions", proxy.url);
    let chat = format!("{}/v1/chat/completions", proxy.url);

    let (s, b) = raw_post(&completions, b"{\"prompt\": \"hi\",".to_vec()).await;
    assert_openai_error(s, &b, 400, None);
    let (s, b) = raw_post(&chat, b"[1, 2, 3]".to_vec()).await;
    assert_openai_error(s, &b, 400, None);

    let cases = [
        (
            &completions,
            json!({"prompt": "hi", "max_tokens": "ten"}),
            400,
            Some("max_tokens"),
        ),
        (
            &completions,
            json!({"prompt": "hi", "max_tokens": -5}),
            400,
            Some("max_tokens"),
        ),
        (
            &completions,
            json!({"prompt": "hi", "n": 3}),
            400,
            Some("n"),
        ),
        (
            &completions,
            json!({"prompt": "hi", "temperature": 7}),
            400,
            Some("temperature"),
        ),
        (&completions, json!({"prompt": 42}), 400, Some("prompt")),
        (
            &completions,
            json!({"prompt": ["a", "b"]}),
            400,
            Some("prompt"),
        ),
        (&completions, json!({"max_tokens": 3}), 400, Some("prompt")),
        (
            &completions,
            json!({"prompt": "hi", "stop": 5}),
            400,
            Some("stop"),
        ),
        (
            &completions,
            json!({"model": "gpt-17", "prompt": "hi"}),
            404,
            Some("model"),
        ),
        (&chat, json!({"messages": []}), 400, Some("messages")),
        (&chat, json!({"messages": "hello"}), 400, Some("messages")),
        (
            &chat,
            json!({"messages": [{"content": "no role"}]}),
            400,
            Some("messages[0].role"),
        ),
        (
            &chat,
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            400,
            Some("messages[0].role"),
        ),
    ];
    for (url, body, status, param) in &cases {
        let (s, b) = tightwad_e2e::post_json(url, body).await;
        assert_openai_error(s, &b, *status, *param);
    }

    // A 10 MB body is refused whole with 413.
    let huge = format!("{{\"prompt\": \"{}\"}}", "a".repeat(10 * 1024 * 1024));
    let (s, b) = raw_post(&completions, huge.into_bytes()).await;
    assert_openai_error(s, &b, 413, None);

    // A prompt longer than the target's context.
    let long = "lighthouse ".repeat(5000);
    let (s, b) =
        tightwad_e2e::post_json(&completions, &json!({"prompt": long, "max_tokens": 4})).await;
    assert_openai_error(s, &b, 400, None);
    assert_eq!(b["error"]["code"], "context_length_exceeded");

    // Unknown routes are OpenAI errors too.
    let (s, b) = tightwad_e2e::post_json(&format!("{}/v1/engines", proxy.url), &json!({})).await;
    assert_openai_error(s, &b, 404, None);

    // After all that, a normal request still works.
    let (s, b) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["usage"]["completion_tokens"], 8);
    // And `/v1/models` lists the pairing.
    let models: Value = get_json(&format!("{}/v1/models", proxy.url)).await;
    assert_eq!(models["data"][0]["id"], "tightwad-test");
}

#[tokio::test]
async fn a_target_that_is_down_is_a_503_and_recovery_is_automatic() {
    let env = env();
    // Nothing listens on this port yet.
    let port = free_port();
    let proxy = RunningProxy::start(&format!("http://127.0.0.1:{port}"), None, 4).await;
    let (s, b) = proxy
        .post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 4}))
        .await;
    assert_openai_error(s, &b, 503, None);
    assert_eq!(b["error"]["code"], "backend_unavailable");
    let (s, b) = proxy
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}),
        )
        .await;
    assert_openai_error(s, &b, 503, None);

    // The target comes up on that port: the same proxy serves without a restart.
    let target = LlamaServer::start_on(
        &env,
        &env.model("target.gguf"),
        ServerOptions::target(4),
        port,
    )
    .await;
    let (s, b) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "hi", "max_tokens": 4, "temperature": 0}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    drop(target);
}

#[tokio::test]
async fn a_target_that_dies_mid_stream_ends_the_stream_with_an_error() {
    let env = env();
    let mut target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let proxy = RunningProxy::start(&target.url, None, 4).await;
    let client = reqwest::Client::new();
    let mut resp = client
        .post(format!("{}/v1/completions", proxy.url))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "stream": true}))
        .send()
        .await
        .expect("stream starts");
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    // Read a little, then kill the target.
    while body.matches("data:").count() < 3 {
        let chunk = resp.chunk().await.expect("chunk").expect("more data");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    target.kill();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
        body
    })
    .await
    .expect("the stream ends instead of hanging");
    assert!(rest.contains("\"error\""), "no error event in: {rest}");
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "stream did not end with [DONE]: {rest}"
    );
}

/// A TCP server that accepts connections and then either says nothing or answers garbage: a
/// stand-in for a broken backend (a real llama-server cannot be made to do this).
async fn broken_backend(reply: Option<&'static [u8]>) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            match reply {
                Some(bytes) => {
                    let _ = sock.write_all(bytes).await;
                    let _ = sock.shutdown().await;
                }
                // Keep the connection open and silent.
                None => held.push(sock),
            }
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_backend_that_never_answers_is_a_timeout_not_a_hang() {
    let (url, task) = broken_backend(None).await;
    let mut entry = RunningProxy::entry(&url, None, 4);
    entry.target_timeout_s = 2;
    let proxy = RunningProxy::start_entry(entry).await;
    let started = std::time::Instant::now();
    let (s, b) = proxy
        .post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 4}))
        .await;
    assert_openai_error(s, &b, 504, None);
    assert_eq!(b["error"]["code"], "backend_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    task.abort();
}

#[tokio::test]
async fn a_backend_that_answers_garbage_is_a_502_and_the_proxy_keeps_serving() {
    let (url, task) = broken_backend(Some(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{not json!}",
    ))
    .await;
    let proxy = RunningProxy::start(&url, None, 4).await;
    for _ in 0..3 {
        let (s, b) = proxy
            .post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 4}))
            .await;
        assert_openai_error(s, &b, 502, None);
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("could not be read"),
            "{b}"
        );
    }
    let (s, b) = tightwad_e2e::post_json(
        &format!("{}/v1/completions", proxy.url),
        &json!({"prompt": "hi", "n": 5}),
    )
    .await;
    assert_openai_error(s, &b, 400, Some("n"));
    task.abort();
}
