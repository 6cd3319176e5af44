//! The official OpenAI SDKs (Python `openai`, Node `openai`; installed by scripts/setup) against
//! the proxy: models, chat (as the SDKs send it), streamed chat with usage, completions,
//! embeddings and responses (forwarded to the targets), an unknown model's error. The chats'
//! `tightwad` figures show the engine speculated.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tightwad_e2e::test_env::require_env;
use tightwad_e2e::{env, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::config::ProxyConfig;

struct Servers {
    _target: LlamaServer,
    _draft: LlamaServer,
    _embed: LlamaServer,
    proxy: RunningProxy,
}

async fn servers() -> Servers {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let embed_opts = ServerOptions {
        extra: vec!["--embeddings".into(), "--pooling".into(), "mean".into()],
        ..Default::default()
    };
    let embed = LlamaServer::start(&env, &env.model("target.gguf"), embed_opts).await;
    let mut chat = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    chat.name = Some("chat".into());
    let mut emb = RunningProxy::entry(&embed.url, None, 4);
    emb.name = Some("embed".into());
    let proxy = RunningProxy::start_with(ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("loopback"),
        pairings: vec![chat, emb],
        ..ProxyConfig::default()
    })
    .await;
    Servers {
        _target: target,
        _draft: draft,
        _embed: embed,
        proxy,
    }
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sdk")
        .join(name)
}

/// Run an SDK script; its last stdout line is the JSON summary.
fn run(mut cmd: Command) -> Value {
    let out = cmd.output().expect("the SDK script runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn check(summary: &Value) {
    assert_eq!(
        summary["chat"]["tightwad"]["served_by"], "speculative",
        "{summary}"
    );
    assert_eq!(
        summary["stream"]["tightwad"]["served_by"], "speculative",
        "{summary}"
    );
    assert!(
        summary["stream"]["completion_tokens"].as_u64() > Some(0),
        "{summary}"
    );
    assert!(summary["embedding_dims"].as_u64() > Some(0), "{summary}");
    assert_eq!(summary["error"]["status"], 404, "{summary}");
    assert_eq!(summary["error"]["code"], "model_not_found", "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_against_the_proxy() {
    let python = require_env("TIGHTWAD_OPENAI_PYTHON");
    let s = servers().await;
    let mut cmd = Command::new(python);
    cmd.arg(script("openai_client.py"))
        .args([&s.proxy.url, "chat", "embed"]);
    let summary = tokio::task::spawn_blocking(move || run(cmd))
        .await
        .expect("joined");
    check(&summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_sdk_works_against_the_proxy() {
    let modules = require_env("TIGHTWAD_OPENAI_NODE_MODULES");
    let s = servers().await;
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", &modules)
        .arg(script("openai_client.mjs"))
        .args([&s.proxy.url, "chat", "embed"]);
    let summary = tokio::task::spawn_blocking(move || run(cmd))
        .await
        .expect("joined");
    check(&summary);
}
