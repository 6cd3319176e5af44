use super::*;
use crate::doctor::live::target_slots;
use tightwad_protocol::messages::{GgufSummary, ModelFile};

fn model(name: &str, params: u64, fingerprint: &str) -> ModelFile {
    ModelFile {
        file_name: name.into(),
        path: format!("/m/{name}"),
        folder: "/m".into(),
        size_bytes: params,
        gguf: Some(GgufSummary {
            parameter_count: params,
            vocab_fingerprint: Some(fingerprint.into()),
            ..Default::default()
        }),
        error: None,
    }
}

#[test]
fn proposes_the_largest_as_target_and_a_small_same_vocabulary_draft() {
    let models = vec![
        ("a".to_string(), model("big.gguf", 70_000, "f1")),
        ("b".to_string(), model("small.gguf", 1_000, "f1")),
        ("a".to_string(), model("small.gguf", 1_000, "f1")),
        ("b".to_string(), model("other.gguf", 500, "f2")),
    ];
    let p = propose(&models);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].target.file_name, "big.gguf");
    assert_eq!(p[0].draft.file_name, "small.gguf");
    assert_eq!(p[0].draft_host, "b", "the draft prefers another host");
    let text = render(
        &InitArgs {
            draft_tokens: Some(4),
            ..Default::default()
        },
        &[HostEntry {
            name: "a".into(),
            address: "10.0.0.2:7420".into(),
            build_backend: None,
        }],
        &p,
    );
    let parsed: toml::Value = toml::from_str(&text).expect("valid TOML");
    assert_eq!(
        parsed["pairings"][0]["target"].as_str(),
        Some("http://10.0.0.2:8080")
    );
    let layout = crate::cluster::layout::Layout::parse(&text).expect("layout");
    assert_eq!(layout.processes.len(), 2);
}

/// The agent snippet asks for doctor's slot rule: k = 4 needs `-np 5`.
#[test]
fn the_target_snippet_has_the_slots_doctor_asks_for() {
    let written = render(
        &InitArgs {
            target_model: Some("/m/big.gguf".into()),
            draft_tokens: Some(4),
            ..Default::default()
        },
        &[],
        &[],
    );
    assert_eq!(target_slots(4), 5);
    assert!(written.contains("\"-np\", \"5\""), "{written}");
    assert!(written.contains("-np >= draft_tokens + 1"), "{written}");
    assert!(written.contains("\ndraft_tokens = 4\n"), "{written}");

    // Unset, the config leaves k to the proxy (8 on a patched target, 4 on a stock one), and the
    // snippet gives the target the slots a stock build needs at 4.
    let unset = render(
        &InitArgs {
            target_model: Some("/m/big.gguf".into()),
            ..Default::default()
        },
        &[],
        &[],
    );
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&unset).unwrap_or_else(|e| panic!("{e}\n{unset}"));
    assert_eq!(config.pairings[0].draft_tokens, None, "{unset}");
    assert!(unset.contains("# draft_tokens = 8"), "{unset}");
    assert!(unset.contains("\"-np\", \"5\""), "{unset}");
}

/// `init` listens where the proxy does by default; a listen that reaches the network
/// carries a key the proxy loads, or a loud note that it has none.
#[test]
fn init_listens_on_the_proxy_default_and_a_network_listen_carries_a_key() {
    let local = render(&InitArgs::default(), &[], &[]);
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&local).unwrap_or_else(|e| panic!("{e}\n{local}"));
    assert_eq!(
        config.listen,
        tightwad_serve::config::ProxyConfig::default().listen
    );
    assert!(config.api_keys.is_empty());
    let lan = InitArgs {
        listen: "0.0.0.0:8088".parse().expect("addr"),
        ..Default::default()
    };
    let keyed = render(&lan, &[], &[]);
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&keyed).unwrap_or_else(|e| panic!("{e}\n{keyed}"));
    assert_eq!(config.listen.to_string(), "0.0.0.0:8088");
    assert_eq!(config.api_keys.len(), 1, "{keyed}");
    assert!(config.api_keys[0].starts_with("sk-tightwad-"));
    let open = render(
        &InitArgs {
            no_api_key: true,
            ..lan
        },
        &[],
        &[],
    );
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&open).unwrap_or_else(|e| panic!("{e}\n{open}"));
    assert!(config.api_keys.is_empty());
    assert!(
        open.contains("WARNING") && open.contains("NO API key"),
        "{open}"
    );
}

/// Whatever init writes, the proxy itself must accept (its config refuses unknown keys).
#[test]
fn written_configs_are_valid_proxy_configs() {
    let from_flags = render(
        &InitArgs {
            target_url: Some("http://10.0.0.2:8080".into()),
            draft_url: Some("http://10.0.0.3:8081".into()),
            target_model: Some("/m/big.gguf".into()),
            draft_model: Some("/m/small.gguf".into()),
            draft_tokens: Some(4),
            ..Default::default()
        },
        &[],
        &[],
    );
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&from_flags).unwrap_or_else(|e| panic!("{e}\n{from_flags}"));
    config.validate().expect("valid");
    assert_eq!(
        config.pairings[0].draft.as_deref(),
        Some("http://10.0.0.3:8081")
    );
    assert!(
        from_flags.contains("\"-np\", \"5\", \"--kv-unified\""),
        "{from_flags}"
    );
    let models = vec![
        ("a".to_string(), model("big.gguf", 70_000, "f1")),
        ("b".to_string(), model("small.gguf", 1_000, "f1")),
    ];
    let hosts = [
        HostEntry {
            name: "a".into(),
            address: "10.0.0.2:7420".into(),
            build_backend: None,
        },
        HostEntry {
            name: "b".into(),
            address: "10.0.0.3:7420".into(),
            build_backend: None,
        },
    ];
    let from_agents = render(
        &InitArgs {
            draft_tokens: Some(4),
            state_dir: Some(PathBuf::from("/var/lib/tightwad")),
            ..Default::default()
        },
        &hosts,
        &propose(&models),
    );
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&from_agents).unwrap_or_else(|e| panic!("{e}\n{from_agents}"));
    config.validate().expect("valid");
    assert_eq!(
        config.pairings[0].draft.as_deref(),
        Some("http://10.0.0.3:8081")
    );
    assert!(!config.pairings[0].moe, "a dense target is not marked MoE");

    // A target whose GGUF has experts gets `moe = true` (k held at 4 until calibrated) where
    // draft_tokens lets k above 4: unset, a patched target takes 8.
    let mut big = model("big-moe.gguf", 70_000, "f1");
    if let Some(g) = big.gguf.as_mut() {
        g.expert_count = Some(128);
    }
    let models = vec![
        ("a".to_string(), big),
        ("b".to_string(), model("small.gguf", 1_000, "f1")),
    ];
    let moe_config = render(&InitArgs::default(), &hosts, &propose(&models));
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&moe_config).unwrap_or_else(|e| panic!("{e}\n{moe_config}"));
    config.validate().expect("valid");
    assert!(config.pairings[0].moe, "{moe_config}");
    assert!(config.pairings[0].to_pairing_config(0).moe);

    // At draft_tokens 4 `moe` could change nothing (k is at most 4 anyway): not written, the
    // comment says when it would matter.
    let small_k = render(
        &InitArgs {
            draft_tokens: Some(4),
            ..Default::default()
        },
        &hosts,
        &propose(&models),
    );
    let config: tightwad_serve::config::ProxyConfig =
        toml::from_str(&small_k).unwrap_or_else(|e| panic!("{e}\n{small_k}"));
    assert!(!config.pairings[0].moe, "{small_k}");
    assert!(small_k.contains("add `moe = true`"), "{small_k}");
}

/// `init --from-agents` writes the target's llama-server flags from the placement planner: a
/// MoE model larger than the host's GPU keeps its experts in RAM, a small dense one goes
/// wholly on the GPU.
#[test]
fn the_targets_flags_come_from_the_placement_plan() {
    use tightwad_protocol::messages::{AgentStatus, Gpu, GpuVendor, HostInfo, Inventory};
    let status = AgentStatus {
        node_name: "gpu-box".into(),
        software_version: "0".into(),
        protocol_version: 3,
        uptime_secs: 0,
        processes: vec![],
        inventory: Inventory {
            host: HostInfo {
                ram_total_bytes: 128 << 30,
                ram_available_bytes: 120 << 30,
                ..Default::default()
            },
            gpus: vec![Gpu {
                vendor: GpuVendor::Nvidia,
                index: 0,
                name: "RTX 4090".into(),
                memory_total_mib: 24 * 1024,
                memory_used_mib: None,
                driver: None,
            }],
            ..Default::default()
        },
    };
    let mut moe = model("gpt-oss-120b.gguf", 117_000_000_000, "f1");
    moe.size_bytes = 60_000_000_000;
    if let Some(g) = moe.gguf.as_mut() {
        g.tensor_bytes = 60_000_000_000;
        g.expert_tensor_bytes = 55_000_000_000;
        g.expert_count = Some(128);
        g.block_count = Some(36);
        g.context_length = Some(131072);
    }
    let flags = placement_for("gpu-box", &status, &moe, TARGET_CONTEXT).expect("planned");
    let joined = flags.join(" ");
    assert!(joined.contains("-ngl"), "{joined}");
    assert!(
        joined.contains("--n-cpu-moe") || joined.contains("--cpu-moe") || joined.contains("-ot"),
        "55 GB of experts cannot sit on a 24 GB card: {joined}"
    );

    let mut dense = model("small-dense.gguf", 1_000_000_000, "f1");
    dense.size_bytes = 2_000_000_000;
    if let Some(g) = dense.gguf.as_mut() {
        g.tensor_bytes = 2_000_000_000;
        g.block_count = Some(24);
    }
    let flags = placement_for("gpu-box", &status, &dense, TARGET_CONTEXT).expect("planned");
    let joined = flags.join(" ");
    assert!(
        !joined.contains("moe") && !joined.contains("-ot"),
        "{joined}"
    );

    // The written agent.toml snippet carries them.
    let proposals = vec![Proposal {
        target_host: "gpu-box".into(),
        target: moe.clone(),
        draft_host: "desk".into(),
        draft: model("draft.gguf", 1_000, "f1"),
        target_placement: placement_for("gpu-box", &status, &moe, TARGET_CONTEXT),
    }];
    let text = render(
        &InitArgs {
            draft_tokens: Some(4),
            ..Default::default()
        },
        &[],
        &proposals,
    );
    assert!(text.contains("placement planned for gpu-box"), "{text}");
    assert!(text.contains("\"-ngl\""), "{text}");
}

#[test]
fn never_overwrites_without_force() {
    let dir = std::env::temp_dir().join(format!("tightwad-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("t.toml");
    let _ = std::fs::remove_file(&path);
    write_atomically(&path, "a = 1\n", false).expect("first write");
    assert!(write_atomically(&path, "a = 2\n", false).is_err());
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "a = 1\n");
    write_atomically(&path, "a = 3\n", true).expect("forced");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "a = 3\n");
    let leftovers = std::fs::read_dir(&dir).expect("ls").count();
    assert_eq!(leftovers, 1, "no temporary files left");
    let _ = std::fs::remove_dir_all(&dir);
}
