//! A person opens the dashboard in a browser: the pairings, the hosts and a request's figures are
//! there, live. Real proxy, real llama-servers, real headless Chromium.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::{env, free_port, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.exists())
            })
        })
        .unwrap_or_else(|| {
            panic!("no chromium on PATH: ./scripts/test installs Debian's `chromium`")
        })
}

/// The page's DOM after its scripts ran and fetched the proxy's JSON.
fn rendered_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!("tightwad-chromium-{}", std::process::id()));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_dashboard_shows_pairings_hosts_and_a_requests_figures() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("tightwad-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("tightwad.toml");
    // A host whose agent is not running: the page must show it, unreachable, with the reason.
    std::fs::write(
        &config_path,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n\n[[hosts]]\nname = \"ghost-box\"\naddress = \"127.0.0.1:{}\"\n\n[[pairings]]\nname = \"tightwad-test\"\ntarget = \"{}\"\ndraft = \"{}\"\nadaptive = false\n",
            dir.join("state").display(),
            free_port(),
            target.url,
            draft.url
        ),
    )
    .expect("config written");
    let config = ProxyConfig::load(&config_path).expect("config parses");
    let proxy = RunningProxy::start_with(config).await;

    let (status, answer) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"].as_str().expect("id").to_string();

    // Wait for the background host poll to have tried the ghost host.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts: Value = reqwest::get(format!("{}/v1/tightwad/hosts", proxy.url))
            .await
            .expect("hosts")
            .json()
            .await
            .expect("hosts JSON");
        if hosts["hosts"].as_array().is_some_and(|h| !h.is_empty()) {
            assert_eq!(hosts["hosts"][0]["reachable"], false, "{hosts}");
            break;
        }
        assert!(Instant::now() < deadline, "hosts never polled: {hosts}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let url = format!("{}/dashboard", proxy.url);
    let dom = tokio::task::spawn_blocking(move || rendered_dom(&url))
        .await
        .expect("chromium task");
    assert!(dom.contains("updated "), "the page never refreshed:\n{dom}");
    assert!(dom.contains("tightwad-test"), "no pairing row:\n{dom}");
    assert!(dom.contains("ghost-box"), "no host row:\n{dom}");
    assert!(dom.contains(&id), "the request {id} is not listed:\n{dom}");
    assert!(
        dom.contains("speculative"),
        "the request's figures are missing:\n{dom}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
