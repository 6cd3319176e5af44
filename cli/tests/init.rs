//! `tightwad init` as a person uses it: `--from` a Python Tightwad config into a config every
//! loader accepts (what is not carried over says why), never over an existing file without
//! `--force`; and the same defaults everywhere (issue 17, item 9): `tightwad init` writes the
//! address the proxy listens on by default, a config that reaches the network carries a generated
//! key the proxy loads, and one written without a key says so loudly; the slot rule is the proxy's
//! (k + 1).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tightwad_serve::config::ProxyConfig;

use common::*;

/// The predecessor's `configs/cluster.yaml` shape: a coordinator with local GPUs, two workers,
/// models, binaries, and a proxy in front (keys from its config.py).
const CLUSTER_YAML: &str = r#"
coordinator:
  host: 0.0.0.0
  port: 8080
  backend: hip
  gpus:
    - name: "7900 XTX"
      vram_gb: 24
  extra_args: ["--no-mmap"]
workers:
  - host: 192.168.1.20
    ssh_user: me
    model_dir: /srv/models
    gpus:
      - name: "RTX 4070 Ti Super"
        vram_gb: 16
        rpc_port: 50052
  - host: 192.168.1.30
    peer_port: 9191
    gpus:
      - {name: "RTX 3060", vram_gb: 12, rpc_port: 50052}
      - {name: "RTX 2070", vram_gb: 8, rpc_port: 50053}
models:
  qwen3-32b:
    path: /models/Qwen3-32B-Q4_K_M.gguf
    ctx_size: 8192
    predict: 4096
    flash_attn: true
    default: true
  llama-70b:
    path: /models/Llama-3.3-70B-Q4_K_M.gguf
binaries:
  coordinator: llama-server
  rpc_server: rpc-server
ram_reclaim: auto
proxy:
  host: 0.0.0.0
  port: 8088
  max_draft_tokens: 32
  fallback_on_draft_failure: true
  auth_token: sk-secret
  max_tokens_limit: 8192
  max_body_size: 10MB
  draft:
    url: http://192.168.1.50:8081
    model_name: qwen3-0.6b
    backend: llamacpp
  target:
    url: http://192.168.1.10:8080
    model_name: Qwen3 32B
    backend: llamacpp
"#;

/// The proxy-only shape (its docs' "speculative proxy" example), with drafters, consensus and
/// the parts Tightwad deliberately has no counterpart for.
const PROXY_YAML: &str = r#"
proxy:
  port: 9000
  max_draft_tokens: auto
  consensus_mode: majority
  chat_template: chatml
  allow_private_upstream: true
  fallback_on_draft_failure: false
  draft:
    url: http://10.0.0.3:11434
    model_name: qwen3:0.6b
    backend: ollama
  drafters:
    - {url: "http://10.0.0.4:8081", model_name: small-a, backend: llamacpp}
    - {url: "http://10.0.0.5:8081", model_name: small-b, backend: llamacpp}
  target:
    url: http://10.0.0.2:8080/
    model_name: big
    backend: llamacpp
peer:
  port: 9191
  auth_token: peer-secret
quality_gate:
  verifier: {url: "http://10.0.0.2:8080", model_name: big, backend: llamacpp}
  agents: [{url: "http://10.0.0.3:11434", model_name: small}]
"#;

fn convert(dir: &Path, name: &str, yaml: &str) -> (Value, PathBuf) {
    let from = dir.join(format!("{name}.yaml"));
    std::fs::write(&from, yaml).expect("yaml");
    let out = dir.join(format!("{name}.toml"));
    let run = Command::new(BIN)
        .arg("-c")
        .arg(&out)
        .args(["init", "--json", "--from"])
        .arg(&from)
        .output()
        .expect("init runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).expect("init --json prints JSON");
    (report, out)
}

fn not_carried(report: &Value) -> Vec<String> {
    report["not_carried"]
        .as_array()
        .expect("not_carried list")
        .iter()
        .map(|n| {
            assert!(
                n["reason"].as_str().is_some_and(|r| r.len() > 10),
                "every key gets a reason: {n}"
            );
            n["key"].as_str().expect("key").to_string()
        })
        .collect()
}

#[test]
fn init_from_converts_python_configs_into_configs_every_loader_accepts() {
    let sandbox = Sandbox::new("init-from");
    let dir = &sandbox.dir;

    let (report, out) = convert(dir, "cluster", CLUSTER_YAML);
    let config = tightwad_serve::config::ProxyConfig::load(&out).expect("the proxy loads it");
    config.validate().expect("valid");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8088");
    assert_eq!(config.api_keys, vec!["sk-secret".to_string()]);
    assert_eq!(config.max_tokens_limit, Some(8192));
    assert_eq!(config.max_body_bytes, 10 << 20);
    let p = &config.pairings[0];
    assert_eq!(p.name.as_deref(), Some("Qwen3-32B"));
    assert_eq!(p.target, "http://192.168.1.10:8080");
    assert_eq!(p.draft.as_deref(), Some("http://192.168.1.50:8081"));
    assert_eq!(p.draft_tokens, Some(8));
    let fleet =
        tightwad_coordinator::fleet::FleetConfig::load(&out).expect("the fleet commands load it");
    let hosts: Vec<(&str, &str)> = fleet
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.address.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("coordinator", "127.0.0.1:7420"),
            ("192.168.1.20", "192.168.1.20:7420"),
            ("192.168.1.30", "192.168.1.30:7420")
        ]
    );
    let layout =
        tightwad_coordinator::cluster::layout::Layout::load(&out).expect("up/doctor load it");
    assert_eq!(layout.pools.len(), 1);
    assert_eq!(layout.pools[0].name, "qwen3-32b");
    assert_eq!(layout.pools[0].workers.len(), 3, "one rpc-server per GPU");
    assert_eq!(report["pools"], json!(["qwen3-32b"]));
    assert_eq!(report["hosts"].as_array().map(Vec::len), Some(3));
    let skipped = not_carried(&report);
    for key in [
        "proxy.max_draft_tokens",
        "ram_reclaim",
        "binaries.coordinator",
        "workers[0].ssh_user",
        "workers[1].peer_port",
        "coordinator.backend",
        "models.llama-70b",
    ] {
        assert!(
            skipped.iter().any(|k| k == key),
            "{key} not reported: {skipped:?}"
        );
    }
    assert!(!skipped
        .iter()
        .any(|k| k.starts_with("proxy.target") || k == "proxy.draft"));
    let text = std::fs::read_to_string(&out).expect("written");
    assert!(
        text.contains("\"-m\", \"/models/Qwen3-32B-Q4_K_M.gguf\"")
            && text.contains("\"--no-mmap\""),
        "the coordinator's agent process is written out:\n{text}"
    );

    let (report, out) = convert(dir, "proxy", PROXY_YAML);
    let config = tightwad_serve::config::ProxyConfig::load(&out).expect("the proxy loads it");
    config.validate().expect("valid");
    assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
    let p = &config.pairings[0];
    assert_eq!(p.target, "http://10.0.0.2:8080");
    // `max_draft_tokens: auto` leaves the choice to the proxy's default (by verification path).
    assert_eq!(p.draft_tokens, None);
    assert_eq!(
        p.draft.as_deref(),
        Some("http://10.0.0.4:8081"),
        "an Ollama draft is replaced by the first llama.cpp drafter"
    );
    assert_eq!(
        p.drafts,
        ["http://10.0.0.5:8081"],
        "the other drafters are carried over: the pairing measures them and drafts with the best"
    );
    // The predecessor listened on the LAN without a token: the converted config carries a key.
    assert_eq!(config.api_keys.len(), 1, "a network listen without a key");
    assert_eq!(
        report["api_key"].as_str(),
        Some(config.api_keys[0].as_str())
    );
    let skipped = not_carried(&report);
    assert!(
        !skipped.iter().any(|k| k.starts_with("proxy.drafters")),
        "drafters are carried, not dropped: {skipped:?}"
    );
    for key in [
        "proxy.draft.backend",
        "proxy.consensus_mode",
        "proxy.chat_template",
        "proxy.allow_private_upstream",
        "proxy.fallback_on_draft_failure",
        "peer",
        "quality_gate",
    ] {
        assert!(
            skipped.iter().any(|k| k == key),
            "{key} not reported: {skipped:?}"
        );
    }

    // Never over an existing file without --force; bad YAML is an error that writes nothing.
    let again = Command::new(BIN)
        .arg("-c")
        .arg(&out)
        .args(["init", "--from"])
        .arg(dir.join("cluster.yaml"))
        .output()
        .expect("init runs");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        tightwad_serve::config::ProxyConfig::load(&out)
            .expect("unchanged")
            .listen
            .to_string(),
        "0.0.0.0:9000"
    );
    std::fs::write(dir.join("bad.yaml"), "proxy: [unclosed").expect("yaml");
    let bad = Command::new(BIN)
        .arg("-c")
        .arg(dir.join("bad.toml"))
        .args(["init", "--from"])
        .arg(dir.join("bad.yaml"))
        .output()
        .expect("init runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a valid YAML config"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!dir.join("bad.toml").exists());

    // `token --json` from the converted config (its own state dir).
    let tokened = sandbox.config("token.toml", "");
    let token = Command::new(BIN)
        .arg("-c")
        .arg(&tokened)
        .args(["token", "--ttl", "60", "--json"])
        .output()
        .expect("token runs");
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token: Value = serde_json::from_slice(&token.stdout).expect("JSON");
    assert_eq!(token["ttl_s"], 60);
    assert!(token["command"]
        .as_str()
        .is_some_and(|c| c.starts_with("tightwad-agent --join ")));
    sandbox.remove();
}

fn init(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .arg("-c")
        .arg(config)
        .args(["init", "--force", "--target", "http://10.0.0.2:8080"])
        .args(args)
        .output()
        .expect("init runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn init_listens_where_the_proxy_does_and_a_lan_config_carries_a_key_or_says_it_has_none() {
    let sandbox = Sandbox::new("defaults");
    let config = sandbox.dir.join("tightwad.toml");

    init(
        &config,
        &["--target-model", "/models/big.gguf", "--draft-tokens", "6"],
    );
    let written = ProxyConfig::load(&config).expect("the proxy loads it");
    assert_eq!(written.listen, ProxyConfig::default().listen);
    assert!(written.listen.ip().is_loopback());
    assert!(written.api_keys.is_empty());
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(
        text.contains("\"-np\", \"7\""),
        "k = 6 needs 7 slots:\n{text}"
    );

    let keyed = init(&config, &["--listen", "0.0.0.0:8088", "--json"]);
    let report: Value = serde_json::from_slice(&keyed.stdout).expect("JSON");
    let written = ProxyConfig::load(&config).expect("the proxy loads it");
    assert_eq!(written.listen.to_string(), "0.0.0.0:8088");
    assert_eq!(written.api_keys.len(), 1);
    assert_eq!(
        report["api_key"].as_str(),
        Some(written.api_keys[0].as_str())
    );

    let open = init(&config, &["--listen", "0.0.0.0:8088", "--no-api-key"]);
    let stderr = String::from_utf8_lossy(&open.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("NO API key"),
        "{stderr}"
    );
    let written = ProxyConfig::load(&config).expect("the proxy loads it");
    assert!(written.api_keys.is_empty());
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(
        text.contains("# WARNING: this proxy listens on 0.0.0.0:8088"),
        "{text}"
    );
    sandbox.remove();
}
