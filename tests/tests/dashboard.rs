//! A person opens the dashboard in a browser: per pairing the charts (tokens/s through the proxy
//! and of the target alone, k, acceptance by position, the decisions), the hosts, every request
//! whatever path served it, and the controls behind the API key. Real proxy, real llama-servers,
//! real headless Chromium (over the DevTools protocol, [`tightwad_e2e::browser`]) at 1280 px and at
//! a phone's 390 px; screenshots are kept as the test's artifacts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::browser::{chromium, Browser};
use tightwad_e2e::{env, free_port, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;

const KEY: &str = "sk-dashboard-test";

/// Where the screenshots go: the build's target folder, kept by CI as artifacts.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts").join("dashboard");
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

async fn call(
    method: reqwest::Method,
    url: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, String, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status().as_u16();
    let served_by = r
        .headers()
        .get("x-tightwad-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.expect("body");
    (
        status,
        served_by,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn the_dashboard_charts_lists_every_request_and_its_controls_need_the_key() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("tightwad-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("tightwad.toml");
    // A host whose agent is not running: the page must show it, unreachable, with the reason.
    // The controller decides (adaptive): the first request times the target alone, so both
    // lines of the speed chart have data.
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\napi_keys = [\"{KEY}\"]\n\n[[hosts]]\nname = \"ghost-box\"\naddress = \"127.0.0.1:{}\"\n\n[[pairings]]\nname = \"tightwad-test\"\ntarget = \"{}\"\ndraft = \"{}\"\ndraft_tokens = 4\n",
            dir.join("state").display(),
            free_port(),
            target.url,
            draft.url
        ),
    )
    .expect("config written");
    let config = ProxyConfig::load(&config_path).expect("config parses");
    let proxy = RunningProxy::start_with(config).await;
    let url = |path: &str| format!("{}{}", proxy.url, path);
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    let mut answered = 0;
    for prompt in [
        "Once upon a time",
        "The quick brown fox",
        "In a hole in the ground",
    ] {
        let body = json!({"prompt": prompt, "max_tokens": 48, "temperature": 0});
        let (status, _, answer) =
            call(post.clone(), &url("/v1/completions"), Some(KEY), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
        answered += 1;
    }

    // A control without the key is refused; with it, it takes effect at once.
    let speculation = url("/v1/tightwad/pairings/tightwad-test/speculation");
    let (status, _, refused) = call(
        post.clone(),
        &speculation,
        None,
        Some(json!({"mode": "off"})),
    )
    .await;
    assert_eq!(status, 401, "{refused}");
    let (status, _, refused) = call(
        post.clone(),
        &speculation,
        Some("sk-wrong"),
        Some(json!({"mode": "off"})),
    )
    .await;
    assert_eq!(status, 401, "{refused}");
    let (status, _, done) = call(
        post.clone(),
        &speculation,
        Some(KEY),
        Some(json!({"mode": "off"})),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["controller"]["forced"], false, "{done}");
    let body =
        json!({"prompt": "Far over the misty mountains", "max_tokens": 16, "temperature": 0});
    let (status, served_by, answer) =
        call(post.clone(), &url("/v1/completions"), Some(KEY), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(served_by, "passthrough; reason=speculation_off", "{answer}");
    let (status, _, done) = call(
        post.clone(),
        &speculation,
        Some(KEY),
        Some(json!({"mode": "auto"})),
    )
    .await;
    assert_eq!(status, 200, "{done}");
    let (status, _, drained) = call(
        post.clone(),
        &url("/v1/tightwad/pairings/tightwad-test/drain"),
        Some(KEY),
        Some(json!({"timeout_s": 5})),
    )
    .await;
    assert_eq!(status, 200, "{drained}");
    let (status, _, resumed) = call(
        post.clone(),
        &url("/v1/tightwad/pairings/tightwad-test/resume"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, 200, "{resumed}");

    // The samples (one every 2 s) and the background host poll.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, hosts) = call(get.clone(), &url("/v1/tightwad/hosts"), Some(KEY), None).await;
        let (_, _, dash) = call(get.clone(), &url("/v1/tightwad/dashboard"), Some(KEY), None).await;
        let points = dash["pairings"][0]["series"]["proxy_tok_s"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|v| !v.is_null()).count());
        if hosts["hosts"].as_array().is_some_and(|h| !h.is_empty()) && points >= 2 {
            assert_eq!(hosts["hosts"][0]["reachable"], false, "{hosts}");
            let states: Vec<&str> = dash["pairings"][0]["timeline"]
                .as_array()
                .expect("timeline")
                .iter()
                .filter_map(|d| d["state"].as_str())
                .collect();
            for want in ["off", "auto", "drained", "resumed"] {
                assert!(
                    states.contains(&want),
                    "{want} missing from the timeline: {dash}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no samples or hosts: {hosts}\n{dash}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let page = url(&format!("/dashboard#key={KEY}&audit"));
    let artifacts = artifacts_dir();
    // The viewport is set over CDP: a headless window cannot be narrower than 500 px, a phone's
    // CSS viewport is 390 (the page's phone layout starts at 760 px).
    let browser = Browser::launch(&chromium()).expect("chromium with DevTools");
    for (width, height, mobile) in [(1280, 900, false), (390, 844, true)] {
        let mut tab = browser.new_page().await.expect("a page");
        tab.set_viewport(width, height, mobile)
            .await
            .expect("viewport");
        tab.navigate(&page).await.expect("navigate");
        // The page audits itself after its second refresh (one every 2 s).
        let audit = tab
            .wait_for(
                "document.getElementById('audit')?.dataset.done === '1' \
                 && document.getElementById('audit').textContent",
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("no audit at {width} px: {e}"));
        let audit: Value = serde_json::from_str(audit.as_str().expect("audit text"))
            .unwrap_or_else(|e| panic!("the page's audit ({e}): {audit}"));
        let png = artifacts.join(format!("dashboard-{width}.png"));
        tab.screenshot(&png).await.expect("screenshot");
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "no screenshot at {}", png.display());
        println!("screenshot: {}", png.display());
        let dom = tab
            .eval("document.documentElement.outerHTML")
            .await
            .expect("the DOM");
        let dom = dom.as_str().expect("DOM text");
        assert!(dom.contains("updated "), "the page never refreshed:\n{dom}");
        assert!(dom.contains("ghost-box"), "no host:\n{dom}");
        assert!(
            dom.contains("Agent unreachable"),
            "the unreachable agent is not said:\n{dom}"
        );
        assert_eq!(
            audit["viewport"].as_u64(),
            Some(u64::from(width)),
            "the CSS viewport is not {width} px: {audit}"
        );
        assert_eq!(
            audit["overflow"],
            json!([]),
            "elements overflow at {width} px: {audit}"
        );
        assert!(
            audit["scroll_width"].as_u64() <= audit["viewport"].as_u64(),
            "horizontal scroll at {width} px: {audit}"
        );
        let charts = &audit["charts"]["tightwad-test"];
        assert_eq!(charts["canvas"], true, "{audit}");
        for series in [
            "proxy_points",
            "target_points",
            "k_points",
            "acceptance_bars",
        ] {
            assert!(
                charts[series].as_u64() > Some(0),
                "{series} empty at {width} px: {audit}"
            );
        }
        assert!(charts["timeline"].as_u64() >= Some(4), "{audit}");
        let rows = audit["rows"].as_array().expect("rows");
        // The first request speculates (the controller starts on); the next two may have been
        // passed through once it found the target alone faster (it decides, on this CPU).
        // Every row has its path, every passthrough its reason.
        assert!(
            rows.last()
                .and_then(|r| r["path"].as_str())
                .is_some_and(|p| p.starts_with("speculative")),
            "{audit}"
        );
        for row in rows {
            let path = row["path"].as_str().unwrap_or("");
            assert!(!path.is_empty(), "{row}");
            if path == "passthrough" {
                assert!(
                    row["reason"].as_str().is_some_and(|r| !r.is_empty()),
                    "{row}"
                );
            }
        }
        // The forced-off request, newest: listed as passthrough with its reason. (A relayed reply
        // carries the target's own id; the list shows the proxy's request id, as its log does.)
        assert_eq!(rows.len(), answered + 1, "{audit}");
        let row = &rows[0];
        assert_eq!(row["path"], "passthrough", "{row}");
        assert!(
            row["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("speculation_off")),
            "the passthrough's reason is missing: {row}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
