//! Every key of the file has its variable (issue 17 item 8: "for every key, pairings included"):
//! each key the schema lists, set by its variable to a value unlike the default, is what the
//! loader returns. A new key is covered without a change here.

use super::layers::{pairing_keys, top_keys};
use super::tests::jailed;
use super::*;
use crate::backend::BackendKind;

/// A pairing whose every field differs from the default.
fn unusual_pairing() -> PairingEntry {
    PairingEntry {
        name: Some("n".into()),
        aliases: vec!["x".into()],
        target: "http://t:1".into(),
        draft: Some("http://d:1".into()),
        drafts: vec!["http://e:1".into()],
        draft_tokens: Some(7),
        draft_p_min: 0.75,
        draft_backend_sampling: true,
        target_timeout_s: 11,
        draft_timeout_s: 12,
        disable_above_tok_s: Some(40.5),
        prompt_lookup_fallback: true,
        pipeline: crate::engine::Pipelining::Off,
        native: true,
        moe: true,
        adaptive: false,
        target_kind: BackendKind::Vllm,
        draft_kind: BackendKind::Vllm,
        verify: VerifyMode::OnePass,
    }
}

fn table(value: &impl Serialize) -> toml::Table {
    toml::Table::try_from(value).expect("serializes")
}

#[test]
fn every_pairing_key_has_its_variable() {
    let wanted = table(&unusual_pairing());
    let keys = pairing_keys();
    assert_eq!(keys.len(), wanted.len(), "{keys:?}");
    jailed(|jail| {
        jail.create_file("t.toml", "[[pairings]]\ntarget = \"http://a:1\"\n")
            .expect("write");
        let path = jail.directory().join("t.toml");
        for key in &keys {
            let value = &wanted[key];
            let variable = format!("TIGHTWAD_PAIRING_{}", key.to_ascii_uppercase());
            jail.set_env(&variable, value);
            let loaded = ProxyConfig::load_with_env(&path).expect("loads");
            let got = table(&loaded.pairings[0]);
            assert_eq!(got.get(key), Some(value), "{variable}={value}");
            std::env::remove_var(&variable);
        }
    });
}

#[test]
fn every_top_level_key_has_its_variable() {
    let entry = |name: &str| {
        let mut t = toml::Table::new();
        t.insert("name".into(), toml::Value::String(name.into()));
        vec![toml::Value::Table(t)]
    };
    let unusual = ProxyConfig {
        listen: "127.0.0.1:9".parse().expect("address"),
        max_body_bytes: 7,
        api_keys: vec!["k".into()],
        max_concurrent_requests: 3,
        max_concurrent_per_client: 2,
        max_tokens_limit: Some(5),
        default_max_tokens: 6,
        max_connections_per_client: 8,
        header_read_timeout_s: 4,
        body_read_timeout_s: 5,
        remote_control: true,
        cors_origins: vec!["http://o".into()],
        hosts: entry("h"),
        processes: entry("p"),
        pools: entry("q"),
        native_pairings: entry("r"),
        state_dir: Some("/s".into()),
        source: None,
        pairings: vec![unusual_pairing()],
    };
    let wanted = table(&unusual);
    let keys = top_keys();
    assert_eq!(keys.len(), wanted.len(), "{keys:?}");
    jailed(|jail| {
        for key in &keys {
            let value = &wanted[key];
            let variable = format!("TIGHTWAD_{}", key.to_ascii_uppercase());
            jail.set_env(&variable, value);
            let loaded = ProxyConfig::load_layered(None).expect("loads").config;
            let got = table(&loaded);
            assert_eq!(got.get(key), Some(value), "{variable}={value}");
            std::env::remove_var(&variable);
        }
    });
}
