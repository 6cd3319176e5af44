//! A reload that changes WHICH pairings there are (issue 17 item 13), with the real binary and
//! real llama-servers:
//! - pairings added by SIGHUP and by `tightwad reload` are listed everywhere (`/v1/models`,
//!   `/health`, stats, `/metrics`, the dashboard) and serve exact greedy output, token for token the
//!   target's; requests that name no model follow the new first pairing; a pairing whose target
//!   URL changed is served by the new target;
//! - a pairing removed while it streams finishes that stream exact, new requests for it get an
//!   OpenAI-shaped 404 `model_not_found`, and its `/metrics` series go once the stream has ended;
//!   a file with no pairing, or one that does not parse, changes nothing and says why.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::proxy_process::{run_tightwad, ProxyProcess};
use tightwad_e2e::{
    compare, env, free_port, get_json, post_json, proxy_token_ids, stream_token_ids, Agreement,
    LlamaServer, OpenStream, ServerOptions,
};

/// One `[[pairings]]` table: name, target, draft (none: target-only), aliases.
struct Entry<'a> {
    name: &'a str,
    target: &'a str,
    draft: Option<&'a str>,
    aliases: &'a [&'a str],
}

fn config(port: u16, entries: &[Entry]) -> String {
    let mut text = format!("listen = \"127.0.0.1:{port}\"\n");
    for e in entries {
        let aliases: Vec<String> = e.aliases.iter().map(|a| format!("\"{a}\"")).collect();
        text.push_str(&format!(
            "\n[[pairings]]\nname = \"{}\"\naliases = [{}]\ntarget = \"{}\"\ndraft_tokens = 4\nadaptive = false\n",
            e.name,
            aliases.join(", "),
            e.target
        ));
        if let Some(d) = e.draft {
            text.push_str(&format!("draft = \"{d}\"\n"));
        }
    }
    text
}

async fn get_text(url: &str) -> String {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .expect("body")
}

/// The names a JSON list of pairings carries under `key`.
fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p[key].as_str().map(str::to_string))
        .collect()
}

/// Poll `probe` until it holds (panics with the proxy's log after 30 s).
async fn until<F, Fut>(proxy: &ProxyProcess, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe().await {
        assert!(
            Instant::now() < deadline,
            "{what} never happened:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/health`'s entry for pairing `name` once it says `ok` (every pairing is listed there).
async fn healthy(proxy: &ProxyProcess, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_json(&format!("{}/health", proxy.url)).await;
        let entry = v["pairings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned();
        if let Some(e) = entry.filter(|e| e["status"] == "ok") {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never healthy ({v}):\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A greedy completion through the proxy (`model: None` names none): status, body.
async fn complete(
    proxy: &ProxyProcess,
    model: Option<&str>,
    prompt: &str,
    n: usize,
) -> (u16, Value) {
    let mut body =
        json!({"prompt": prompt, "max_tokens": n, "temperature": 0, "return_token_ids": true});
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    post_json(&format!("{}/v1/completions", proxy.url), &body).await
}

/// `tightwad reload --proxy URL` in `dir`: exit code, stdout, stderr.
fn tightwad_reload(dir: &std::path::Path, proxy: &ProxyProcess) -> (Option<i32>, String, String) {
    let out = run_tightwad(dir, &["reload", "--proxy", &proxy.url], &[]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn pairings_added_by_sighup_and_by_tightwad_reload_serve_exact_and_a_moved_target_serves() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let (t, d) = (target.url.as_str(), draft.url.as_str());
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tightwad.toml");
    let port = free_port();
    let a = |target| Entry {
        name: "a",
        target,
        draft: Some(d),
        aliases: &[],
    };
    let b = Entry {
        name: "b",
        target: t,
        draft: Some(d),
        aliases: &["bee"],
    };
    std::fs::write(&file, config(port, &[a(t)])).expect("config");
    let mut proxy = ProxyProcess::spawn(dir.path(), &["proxy"], &[], port);
    proxy.wait_ready().await;
    assert_eq!(proxy.models().await, ["a"]);

    // SIGHUP adds `b`, first in the file.
    std::fs::write(&file, config(port, &[b, a(t)])).expect("config");
    proxy.hangup();
    let p = &proxy;
    until(p, "b listed", move || async move {
        p.models().await.contains(&"b".to_string())
    })
    .await;
    assert_eq!(proxy.models().await, ["b", "bee", "a"]);
    assert_eq!(
        names(&proxy.stats().await["pairings"], "pairing"),
        ["b", "a"]
    );
    assert_eq!(healthy(&proxy, "b").await["target"], t);
    let dash = get_json(&format!("{}/v1/tightwad/dashboard", proxy.url)).await;
    assert_eq!(names(&dash["pairings"], "pairing"), ["b", "a"], "{dash}");

    let prompt = "The history of lighthouses";
    let reference = target.reference(json!(prompt), 48).await;
    let (status, v) = complete(&proxy, Some("bee"), prompt, 48).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "b", "{v}");
    assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
    assert_ne!(
        compare(&proxy_token_ids(&v), &reference, "b"),
        Agreement::TieAt(0)
    );
    // No model named: the first pairing of the new file.
    let (status, v) = complete(&proxy, None, prompt, 8).await;
    assert_eq!((status, &v["model"]), (200, &json!("b")), "{v}");
    let metrics = get_text(&format!("{}/metrics", proxy.url)).await;
    assert!(
        metrics.contains("tightwad_requests_total{pairing=\"b\",served_by=\"speculative\"} 2"),
        "{metrics}"
    );

    // `tightwad reload` adds `c`, served by the draft's server as its target, with no draft.
    let c = |name| Entry {
        name,
        target: d,
        draft: None,
        aliases: &[],
    };
    let b = Entry {
        name: "b",
        target: t,
        draft: Some(d),
        aliases: &["bee"],
    };
    std::fs::write(&file, config(port, &[b, a(t), c("c")])).expect("config");
    let (code, stdout, stderr) = tightwad_reload(dir.path(), &proxy);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("added [c], removed [], changed [], unchanged [b, a]"),
        "{stdout}"
    );
    let other = draft.reference(json!(prompt), 48).await;
    assert_ne!(
        other.tokens, reference.tokens,
        "the two servers must answer differently for the test to tell them apart"
    );
    let (status, v) = complete(&proxy, Some("c"), prompt, 48).await;
    assert_eq!((status, &v["model"]), (200, &json!("c")), "{v}");
    assert_ne!(
        compare(&proxy_token_ids(&v), &other, "c"),
        Agreement::TieAt(0)
    );

    // `a` moved to the other server: new requests are its answers.
    let b = Entry {
        name: "b",
        target: t,
        draft: Some(d),
        aliases: &["bee"],
    };
    let moved = Entry {
        name: "a",
        target: d,
        draft: None,
        aliases: &[],
    };
    std::fs::write(&file, config(port, &[b, moved, c("c")])).expect("config");
    let (code, stdout, stderr) = tightwad_reload(dir.path(), &proxy);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("changed [a]"), "{stdout}");
    assert_eq!(healthy(&proxy, "a").await["target"], d);
    let (status, v) = complete(&proxy, Some("a"), prompt, 48).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(
        compare(&proxy_token_ids(&v), &other, "a moved"),
        Agreement::TieAt(0)
    );
    let stats = proxy.stats().await;
    let a_stats = stats["pairings"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["pairing"] == "a"))
        .cloned()
        .unwrap_or_else(|| panic!("a in {stats}"));
    assert_eq!(a_stats["target"], d, "{a_stats}");
}

#[tokio::test]
async fn a_pairing_removed_while_it_streams_finishes_exact_and_new_requests_get_404() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let (t, d) = (target.url.as_str(), draft.url.as_str());
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tightwad.toml");
    let port = free_port();
    let a = || Entry {
        name: "a",
        target: t,
        draft: Some(d),
        aliases: &[],
    };
    let b = Entry {
        name: "b",
        target: t,
        draft: Some(d),
        aliases: &["bee"],
    };
    std::fs::write(&file, config(port, &[b, a()])).expect("config");
    let mut proxy = ProxyProcess::spawn(dir.path(), &["proxy"], &[], port);
    proxy.wait_ready().await;

    let prompt = "The history of lighthouses";
    let reference = target.reference(json!(prompt), 300).await;
    let sent = Instant::now();
    let stream = OpenStream::start(
        &format!("{}/v1/completions", proxy.url),
        &json!({"model": "bee", "prompt": prompt, "max_tokens": 300, "temperature": 0, "stream": true, "return_token_ids": true}),
        2,
    )
    .await;

    // SIGHUP with `b` gone from the file.
    std::fs::write(&file, config(port, &[a()])).expect("config");
    proxy.hangup();
    let p = &proxy;
    until(
        p,
        "b gone",
        move || async move { p.models().await == ["a"] },
    )
    .await;
    let removed_after = sent.elapsed();
    for name in ["b", "bee"] {
        let (status, v) = complete(&proxy, Some(name), prompt, 8).await;
        assert_eq!(status, 404, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
        assert_eq!(v["error"]["param"], "model", "{v}");
    }
    let (status, v) = complete(&proxy, None, prompt, 8).await;
    assert_eq!((status, &v["model"]), (200, &json!("a")), "{v}");
    assert_eq!(names(&proxy.stats().await["pairings"], "pairing"), ["a"]);
    let health = get_json(&format!("{}/health", proxy.url)).await;
    assert_eq!(names(&health["pairings"], "name"), ["a"], "{health}");
    let dash = get_json(&format!("{}/v1/tightwad/dashboard", proxy.url)).await;
    assert_eq!(names(&dash["pairings"], "pairing"), ["a"], "{dash}");

    // The stream in flight finishes on the removed pairing, token for token the target's, and
    // was still running when the pairing went.
    let body = stream.finish().await;
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_ne!(
        compare(&stream_token_ids(&body), &reference, prompt),
        Agreement::TieAt(0)
    );
    let figures = body
        .split("\n\n")
        .filter_map(|e| e.trim_start().strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c.get("tightwad").cloned())
        .last()
        .unwrap_or_else(|| panic!("no tightwad figures in {body}"));
    assert!(
        figures["elapsed_ms"].as_u64() > Some(removed_after.as_millis() as u64),
        "the answer ({figures}) ended before the removal ({removed_after:?}): nothing was in flight"
    );
    // With its last request done, the removed pairing's series leave /metrics.
    let metrics_url = format!("{}/metrics", proxy.url);
    let url = metrics_url.as_str();
    until(&proxy, "b's series gone", move || async move {
        !get_text(url).await.contains("pairing=\"b\"")
    })
    .await;
    assert!(get_text(&metrics_url).await.contains("pairing=\"a\""));

    // A file with no pairing, and one that does not parse: refused, nothing changes.
    std::fs::write(&file, format!("listen = \"127.0.0.1:{port}\"\n")).expect("config");
    let (code, stdout, stderr) = tightwad_reload(dir.path(), &proxy);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("running one is kept") && stderr.contains("[[pairings]]"),
        "{stderr}"
    );
    std::fs::write(&file, "[[pairings]]\nname = \"a\"\ntarget = \n").expect("config");
    let (code, stdout, stderr) = tightwad_reload(dir.path(), &proxy);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("tightwad.toml") && stderr.contains("line 3"),
        "{stderr}"
    );
    assert_eq!(proxy.models().await, ["a"]);
    let (status, v) = complete(&proxy, Some("a"), prompt, 48).await;
    assert_eq!(status, 200, "{v}");
    let short = target.reference(json!(prompt), 48).await;
    assert_ne!(
        compare(&proxy_token_ids(&v), &short, "a"),
        Agreement::TieAt(0)
    );
}

#[tokio::test]
async fn the_dashboard_page_drops_a_removed_pairing_and_shows_an_added_one() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::default()).await;
    let t = target.url.as_str();
    let only = |name| Entry {
        name,
        target: t,
        draft: None,
        aliases: &[],
    };
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tightwad.toml");
    let port = free_port();
    std::fs::write(&file, config(port, &[only("a"), only("b")])).expect("config");
    let mut proxy = ProxyProcess::spawn(dir.path(), &["proxy"], &[], port);
    proxy.wait_ready().await;

    let browser = tightwad_e2e::browser::Browser::launch(&tightwad_e2e::browser::chromium())
        .expect("chromium with DevTools");
    let mut tab = browser.new_page().await.expect("a page");
    tab.navigate(&format!("{}/dashboard", proxy.url))
        .await
        .expect("navigate");
    // The cards on the page and the pairing filter's entries, once they are `want`.
    let shows = |want: &str| {
        format!(
            "(() => {{ const cards = [...document.querySelectorAll('#pairings [data-pairing]')].map(n => n.dataset.pairing).join(','); \
             const filter = [...document.querySelectorAll('#filter option')].map(o => o.value).filter(v => v).join(','); \
             return cards === '{want}' && filter === '{want}'; }})()"
        )
    };
    tab.wait_for(&shows("a,b"), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("the page never showed a and b: {e}"));

    std::fs::write(&file, config(port, &[only("a"), only("c")])).expect("config");
    let (code, stdout, stderr) = tightwad_reload(dir.path(), &proxy);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("added [c], removed [b]"), "{stdout}");
    tab.wait_for(&shows("a,c"), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("the page did not follow the reload: {e}"));
}
