//! What a hostile (or merely broken) client on the LAN can do to the proxy, tried for real: each
//! test here failed before its fix (issue 20, "Defects found by the same probe").

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::{env, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(target: &str) -> ProxyConfig {
    ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![RunningProxy::entry(target, None, 4)],
        ..ProxyConfig::default()
    }
}

fn address(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Read what the server sends until it closes the connection (or `limit` passes: `None`).
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn completion(url: &str) -> (u16, Value) {
    tightwad_e2e::post_json(
        &format!("{url}/v1/completions"),
        &json!({"prompt": "Once", "max_tokens": 2, "temperature": 0}),
    )
    .await
}

/// Defect 1: sockets that send headers and never the body held a concurrency place each, forever;
/// 16 of them locked their address out. Now the body is read (or times out with 408) before a
/// place is taken, headers must arrive in time, and connections per address are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_and_headers_hold_no_place_and_are_timed_out() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url);
    c.body_read_timeout_s = 2;
    c.header_read_timeout_s = 2;
    let proxy = RunningProxy::start_with(c).await;
    let addr = address(&proxy.url);

    // Twenty sockets (more than the 16 places per client) announce a body and never send it.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro")
            .await
            .expect("write");
        stalled.push(s);
    }
    // One that never finishes its headers.
    let mut half_header = TcpStream::connect(&addr).await.expect("connect");
    half_header
        .write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // The same address is still served.
    let (s, v) = completion(&proxy.url).await;
    assert_eq!(s, 200, "a client was locked out by stalled bodies: {v}");
    // Every stalled body gets 408 within the body timeout (plus slack), and its connection ends.
    let started = Instant::now();
    for mut s in stalled {
        let reply = read_until_closed(&mut s, Duration::from_secs(10))
            .await
            .expect("a stalled body was never answered");
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("request_timeout"), "{reply}");
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    let closed = read_until_closed(&mut half_header, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "a connection that never finished its headers stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_capped() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url);
    c.max_connections_per_client = 8;
    let proxy = RunningProxy::start_with(c).await;
    let addr = address(&proxy.url);
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // Wait until the proxy has accepted the 8 (each answers a request then stays open).
    for s in &mut idle {
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.expect("health answer");
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "health"
        );
    }
    // The ninth connection from the same address is closed without an answer.
    let mut ninth = TcpStream::connect(&addr).await.expect("the kernel accepts");
    let _ = ninth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let reply = read_until_closed(&mut ninth, Duration::from_secs(10))
        .await
        .expect("the ninth connection was neither answered nor closed");
    assert!(reply.is_empty(), "the ninth connection was served: {reply}");
    // Once they go, the address is served again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match reqwest::get(format!("{}/health", proxy.url)).await {
            Ok(r) if r.status() == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("not served after the connections closed: {other:?}"),
        }
    }
}

/// Defect 2: a target that accepts and never answers made each request wait twice its timeout,
/// and concurrent requests wait in series (the probe held the pairing's lock). Now one bounded
/// probe is shared by the waiters: four requests together are all answered within about one
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_costs_each_request_one_timeout_even_concurrently() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut entry = RunningProxy::entry(&url, None, 4);
    entry.target_timeout_s = 2;
    let proxy = RunningProxy::start_with(ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![entry],
        ..ProxyConfig::default()
    })
    .await;
    // The proxy's start-up probe has just failed. Its error answers only the callers that were
    // waiting on that probe: the requests below arrive after it, so they wait on a probe of their
    // own, one shared by all four.
    let started = Instant::now();
    let answers = futures::future::join_all((0..4).map(|_| async {
        let (s, v) = completion(&proxy.url).await;
        (s, v, started.elapsed())
    }))
    .await;
    for (s, v, took) in answers {
        assert!(s == 504 || s == 503, "{s} {v}");
        assert!(
            took < Duration::from_millis(3500),
            "answered after {took:?} with a 2 s target timeout: {v}"
        );
    }
}

/// Some address of this machine that is not loopback (a client from "the LAN").
fn lan_address() -> Option<IpAddr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
        .find(|ip| !ip.is_loopback())
}

/// Defect 3: `hold_s` had no cap and, with no API keys, anyone on the LAN could drain a pairing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_capped_and_control_routes_answer_only_loopback_without_keys() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url);
    c.listen = "0.0.0.0:0".parse().expect("any address");
    let proxy = RunningProxy::start_with(c).await;
    let port = proxy.url.rsplit(':').next().expect("port").to_string();
    let local = format!("http://127.0.0.1:{port}");
    let drain = format!("{local}/v1/tightwad/pairings/tightwad-test/drain");

    let (s, v) = tightwad_e2e::post_json(&drain, &json!({"hold_s": u64::MAX})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "hold_s");

    let lan = lan_address().expect("this machine has no address besides loopback");
    let from_lan = reqwest::Client::builder()
        .local_address(lan)
        .build()
        .expect("client");
    for (path, get) in [
        ("/v1/tightwad/pairings/tightwad-test/drain", false),
        ("/v1/tightwad/pairings/tightwad-test/resume", false),
        ("/v1/tightwad/logs", true),
    ] {
        let url = format!("http://{lan}:{port}{path}");
        let r = if get {
            from_lan.get(&url).send().await
        } else {
            from_lan.post(&url).json(&json!({"hold_s": 1})).send().await
        }
        .expect("sent");
        assert_eq!(r.status(), 403, "{path} answered a LAN client");
        let v: Value = r.json().await.expect("JSON error");
        assert_eq!(v["error"]["code"], "forbidden");
    }
    // Ordinary routes still answer the LAN.
    let r = from_lan
        .post(format!("http://{lan}:{port}/v1/completions"))
        .json(&json!({"prompt": "Once", "max_tokens": 2, "temperature": 0}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    // Loopback (tightwad swap on the proxy's host) may drain and resume.
    let (s, v) = tightwad_e2e::post_json(&drain, &json!({"hold_s": 60})).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = tightwad_e2e::post_json(
        &format!("{local}/v1/tightwad/pairings/tightwad-test/resume"),
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["resumed"], true);
}

/// Defect 5, the smaller ones, and the 429's `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_defects_bearer_case_405_json_400_for_broken_bodies_retry_after_default_max_tokens() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let mut c = config(&target.url);
    c.api_keys = vec!["sk-hostile-test".into()];
    c.max_concurrent_per_client = 1;
    c.default_max_tokens = 5;
    let proxy = RunningProxy::start_with(c).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/completions", proxy.url);

    // `bearer` in lower case is the same scheme.
    let r = client
        .post(&url)
        .header("authorization", "bearer sk-hostile-test")
        .json(&json!({"prompt": "Once", "temperature": 0}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("JSON");
    // No max_tokens: the configured default applies.
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    // The forwarded path too (a field the engine does not drive).
    let r = client
        .post(&url)
        .bearer_auth("sk-hostile-test")
        .json(&json!({"prompt": "Once", "temperature": 0, "presence_penalty": 0.5}))
        .send()
        .await
        .expect("sent");
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v["tightwad"]["served_by"], "passthrough", "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64() <= Some(5), "{v}");

    // GET on a POST route: 405 with an OpenAI error body.
    let r = client
        .get(&url)
        .bearer_auth("sk-hostile-test")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 405);
    let v: Value = r.json().await.expect("a JSON 405");
    assert_eq!(v["error"]["code"], "method_not_allowed");

    // A broken body (bad chunked encoding) is 400, not 413.
    let mut s = TcpStream::connect(address(&proxy.url))
        .await
        .expect("connect");
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-hostile-test\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nnot a chunk\r\n")
        .await
        .expect("write");
    let reply = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("answered");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    // Over the per-client limit: 429 with Retry-After.
    let mut long = client
        .post(&url)
        .bearer_auth("sk-hostile-test")
        .json(&json!({"prompt": "Once", "max_tokens": 64, "stream": true}))
        .send()
        .await
        .expect("stream starts");
    let _ = long.chunk().await;
    let r = client
        .post(&url)
        .bearer_auth("sk-hostile-test")
        .json(&json!({"prompt": "Twice", "max_tokens": 2}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    while let Ok(Some(_)) = long.chunk().await {}
}

/// Defect 4: a forwarded request's answer follows the engine's contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_answers_carry_the_tightwad_object_the_pairing_name_and_openai_errors() {
    let env = env();
    let target = LlamaServer::start(
        &env,
        &env.model("target.gguf"),
        ServerOptions {
            ctx: 256,
            ..ServerOptions::default()
        },
    )
    .await;
    let proxy = RunningProxy::start_with(config(&target.url)).await;
    let forwarded = json!({"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "presence_penalty": 0.5});

    let (s, v) = proxy.post("/v1/completions", &forwarded).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "tightwad-test", "{v}");
    assert_eq!(v["tightwad"]["served_by"], "passthrough", "{v}");
    assert_eq!(v["tightwad"]["reason"], "field:presence_penalty", "{v}");

    let mut streamed = forwarded.clone();
    streamed["stream"] = json!(true);
    let events = proxy.stream("/v1/completions", &streamed).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    assert!(!chunks.is_empty());
    assert!(
        chunks.iter().all(|c| c["model"] == "tightwad-test"),
        "{chunks:?}"
    );
    let last = chunks
        .iter()
        .rev()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .expect("a final chunk");
    assert_eq!(last["tightwad"]["served_by"], "passthrough", "{last}");

    // Too long for the context: the same error as the engine's path.
    let long = "lighthouses and tides ".repeat(200);
    for body in [
        json!({"prompt": long, "max_tokens": 4, "presence_penalty": 0.5}),
        json!({"prompt": long, "max_tokens": 4}),
    ] {
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    // `max_tokens: 0`: one answer whichever path would serve it.
    for extra in [json!({}), json!({"presence_penalty": 0.5})] {
        let mut body = json!({"prompt": "Once", "max_tokens": 0});
        tightwad_e2e::merge(&mut body, extra);
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["param"], "max_tokens", "{v}");
    }
}
