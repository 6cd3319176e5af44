//! Same defaults everywhere (issue 17, item 9): `tightwad init` writes the address the proxy
//! listens on by default, a config that reaches the network carries a generated key the proxy
//! loads, and one written without a key says so loudly; the slot rule is the proxy's (k + 1).

use std::process::Command;

use serde_json::Value;
use tightwad_serve::config::ProxyConfig;

use super::{scratch, BIN};

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
    let dir = scratch("defaults");
    let config = dir.join("tightwad.toml");

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
    let _ = std::fs::remove_dir_all(&dir);
}
