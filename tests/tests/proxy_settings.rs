//! How `tightwad proxy` reads its settings, told as an operator meets them, with the real binary
//! and real llama-servers (issue 17 items 7, 8, 9; issue 20 settings 5 and 6):
//! - the environment alone describes a pairing, no file needed, and acts;
//! - flags over a file with one pairing change only the fields they name, and are refused with a
//!   message naming the pairings when the file has several;
//! - settings that cannot act, an open listener without API keys and old spellings are said at
//!   startup, with the file and line.

use std::time::Duration;

use serde_json::json;
use tightwad_e2e::proxy_process::{run_tightwad, ProxyProcess};
use tightwad_e2e::{env, free_port, LlamaServer, ServerOptions};

/// One greedy completion through the proxy; the reply's `tightwad` figures.
async fn complete(url: &str, model: &str) -> serde_json::Value {
    let (status, v) = tightwad_e2e::post_json(
        &format!("{url}/v1/completions"),
        &json!({"model": model, "prompt": "The history of lighthouses", "max_tokens": 24, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["tightwad"].clone()
}

/// Before: without `-c`, `TIGHTWAD_PAIRING_*` was silently ignored and the proxy said "no target
/// configured". Now the environment is a layer of its own: it makes the pairing, and its
/// `draft_tokens` acts (every round drafts that many with adaptive = false).
#[tokio::test]
async fn the_environment_alone_configures_a_speculating_pairing() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut proxy = ProxyProcess::spawn(
        dir.path(),
        &["proxy"],
        &[
            ("TIGHTWAD_LISTEN", &listen),
            ("TIGHTWAD_PAIRING_NAME", "from-env"),
            ("TIGHTWAD_PAIRING_TARGET", &target.url),
            ("TIGHTWAD_PAIRING_DRAFT", &draft.url),
            ("TIGHTWAD_PAIRING_DRAFT_TOKENS", "3"),
            // Drafts run to k (no confidence stop): the answer's drafted tokens show k = 3.
            ("TIGHTWAD_PAIRING_DRAFT_P_MIN", "0"),
            ("TIGHTWAD_PAIRING_ADAPTIVE", "false"),
        ],
        port,
    );
    proxy.wait_ready().await;
    assert_eq!(proxy.models().await, vec!["from-env".to_string()]);
    let figures = complete(&proxy.url, "from-env").await;
    assert_eq!(figures["served_by"], "speculative", "{figures}");
    let (rounds, drafted) = (
        figures["rounds"].as_u64().unwrap_or(0),
        figures["drafted"].as_u64().unwrap_or(0),
    );
    // k = 3 every round (the last rounds may draft fewer: fewer tokens are left to ask for).
    assert!(rounds > 0 && drafted <= 3 * rounds, "{figures}");
    assert!(drafted >= 3 * rounds.saturating_sub(2), "{figures}");
    assert_eq!(proxy.stats().await["pairings"][0]["draft_tokens"], 3);
}

/// Before: `--draft` (and `TIGHTWAD_DRAFT`) were ignored when the file had a pairing, and
/// `--target` alone dropped the file's draft. Now a flag changes only its own field of the
/// file's single pairing.
#[tokio::test]
async fn flags_over_a_one_pairing_file_change_only_their_own_field() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");

    // The file's target is wrong, its draft right: `--target` fixes the target, keeps the draft.
    std::fs::write(
        dir.path().join("tightwad.toml"),
        format!(
            "[[pairings]]\nname = \"m\"\ntarget = \"http://127.0.0.1:9\"\ndraft = \"{}\"\ndraft_tokens = 2\nadaptive = false\n",
            draft.url
        ),
    )
    .expect("config");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut proxy = ProxyProcess::spawn(
        dir.path(),
        &["proxy", "--target", &target.url, "--listen", &listen],
        &[],
        port,
    );
    proxy.wait_ready().await;
    let figures = complete(&proxy.url, "m").await;
    assert_eq!(
        figures["served_by"], "speculative",
        "the draft was kept: {figures}"
    );
    drop(proxy);

    // The file has no draft: `TIGHTWAD_DRAFT` (the --draft flag's variable) adds one.
    std::fs::write(
        dir.path().join("tightwad.toml"),
        format!(
            "[[pairings]]\nname = \"m\"\ntarget = \"{}\"\ndraft_tokens = 2\nadaptive = false\n",
            target.url
        ),
    )
    .expect("config");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut proxy = ProxyProcess::spawn(
        dir.path(),
        &["proxy", "--listen", &listen],
        &[("TIGHTWAD_DRAFT", &draft.url)],
        port,
    );
    proxy.wait_ready().await;
    let figures = complete(&proxy.url, "m").await;
    assert_eq!(
        figures["served_by"], "speculative",
        "--draft acted: {figures}"
    );
    assert!(figures["drafted"].as_u64() > Some(0), "{figures}");
}

/// With several pairings a per-pairing flag cannot say which one it means: refused, naming the
/// pairings and the fix, exit code 2 (a configuration error), and nothing half-started.
#[test]
fn a_pairing_flag_over_several_pairings_is_refused_with_the_pairings_named() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("tightwad.toml"),
        "[[pairings]]\nname = \"big\"\ntarget = \"http://127.0.0.1:9\"\n[[pairings]]\nname = \"small\"\ntarget = \"http://127.0.0.1:10\"\n",
    )
    .expect("config");
    let out = run_tightwad(
        dir.path(),
        &[
            "proxy",
            "--draft",
            "http://127.0.0.1:11",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--draft")
            && stderr.contains("(big, small)")
            && stderr.contains("tightwad.toml"),
        "{stderr}"
    );
}

/// Said at startup, each with what to change: a settings pair that cannot act (issue 20,
/// settings 6), `moe = true` at k = 4, an open listener with no API keys (issue 17 item 9), and
/// old spellings with their file and line (issue 17 item 7). A proxy on loopback with keys and
/// settings that act says none of it.
#[tokio::test]
async fn startup_names_settings_that_cannot_act_an_open_listener_and_old_spellings() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    std::fs::write(
        dir.path().join("tightwad.toml"),
        format!(
            "listen = \"0.0.0.0:{port}\"\n\n[[pairings]]\nname = \"m\"\ntarget = \"http://127.0.0.1:9\"\nadaptive = false\ndisable_above_tok_s = 40\ntarget_kind = \"llamacpp\"\n\n[[pairings]]\nname = \"moe\"\ntarget = \"http://127.0.0.1:10\"\nmoe = true\ntarget_timeout_secs = 30\ndraft_tokens = 4\n"
        ),
    )
    .expect("config");
    let mut proxy = ProxyProcess::spawn(dir.path(), &["proxy"], &[], port);
    proxy.wait_ready().await;
    proxy
        .wait_for_log("tightwad proxy listening", Duration::from_secs(10))
        .await;
    let log = proxy.log_text();
    for needle in [
        &format!("NO API KEYS while listening on 0.0.0.0:{port}"),
        "disable_above_tok_s = 40 has no effect with adaptive = false",
        "moe = true has no effect at draft_tokens = 4",
        "tightwad.toml:8: target_kind = \"llamacpp\" is deprecated; use target_kind = \"llama-server\"",
        "tightwad.toml:14: `target_timeout_secs` is deprecated; use `target_timeout_s`",
    ] {
        assert!(log.contains(needle), "missing {needle:?} in:\n{log}");
    }
    drop(proxy);

    let quiet = tempfile::tempdir().expect("dir");
    let port = free_port();
    std::fs::write(
        quiet.path().join("tightwad.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\n[[pairings]]\nname = \"m\"\ntarget = \"http://127.0.0.1:9\"\nmoe = true\ndraft_tokens = 8\n"
        ),
    )
    .expect("config");
    let mut proxy = ProxyProcess::spawn(quiet.path(), &["proxy", "--model-name", "m2"], &[], port);
    proxy.wait_ready().await;
    proxy
        .wait_for_log("tightwad proxy listening", Duration::from_secs(10))
        .await;
    let log = proxy.log_text();
    assert!(
        !log.contains("NO API KEYS") && !log.contains("has no effect"),
        "{log}"
    );
    // The old flag spelling still works, and says what to write instead.
    assert_eq!(proxy.models().await, vec!["m2".to_string()]);
    assert!(
        log.contains("--model-name is deprecated; use --model"),
        "{log}"
    );
}
