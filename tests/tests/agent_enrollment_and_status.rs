//! Enrollment with a join token, pinning both ways, and `tightwad status` against real agents in
//! their own network namespaces, with inventory from the real llama.cpp binaries and GGUF files.
//!
//! Lives in the harness crate, not beside the agent: the agent is started as a binary in a network
//! namespace and enrolled through the coordinator's fleet code, so this tests both ends together
//! (the agent crate depends on no coordinator code, not even in its tests).

use tightwad_coordinator::fleet;
use tightwad_e2e::agents::*;
use tightwad_e2e::netns::*;
use tightwad_e2e::test_env::*;

use tightwad_protocol::messages::ProcessKind;

#[test]
fn enrolled_agents_report_status_and_inventory_from_real_binaries() {
    let rt = runtime();
    let _runtime = rt.enter();
    let mut lab = Lab::new();
    let ns_a = lab.add_namespace();
    let ns_b = lab.add_namespace();
    let coordinator_state = lab.path("coordinator");
    let config = coordinator_config(
        lab.dir.path(),
        &coordinator_state,
        &[
            ("alpha", &format!("{}:7420", ns_a.ip)),
            ("beta", &format!("{}:7420", ns_b.ip)),
        ],
    );
    let fleet = fleet_for(&config);
    let token_a = issue_token(&fleet);
    let token_b = issue_token(&fleet);
    let models_a = lab.path("models-a");
    stock_models(
        &models_a,
        &[
            "target.gguf",
            "draft.gguf",
            "draft-identical.gguf",
            "draft-othervocab.gguf",
        ],
    );
    let _a = AgentProcess::start(AgentSpec {
        ns: &ns_a,
        state_dir: lab.path("agent-a"),
        models: models_a,
        join: Some(token_a),
        extra_toml: String::new(),
    });
    let _b = AgentProcess::start(AgentSpec {
        ns: &ns_b,
        state_dir: lab.path("agent-b"),
        models: lab.path("models-b"),
        join: Some(token_b),
        extra_toml: String::new(),
    });

    let reports = rt
        .block_on(fleet::status::collect(&fleet, None))
        .expect("status");
    for report in &reports {
        assert!(
            report.reachable,
            "{} unreachable: {:?}",
            report.name, report.error
        );
    }
    let alpha = reports[0].status.as_ref().expect("alpha status");
    assert_eq!(alpha.protocol_version, tightwad_protocol::PROTOCOL_VERSION);
    assert_eq!(alpha.node_name, ns_a.name);

    // llama.cpp build parsed from the real `llama-server --version` (0.5.0-dev form).
    let inv = &alpha.inventory;
    let llama = inv
        .binaries
        .iter()
        .find(|b| b.kind == ProcessKind::LlamaServer)
        .expect("llama-server listed");
    let build = llama
        .build
        .as_ref()
        .unwrap_or_else(|| panic!("no build: {:?}", llama.error));
    assert!(
        build.commit.as_deref().is_some_and(|c| c.len() >= 7),
        "{build:?}"
    );
    assert!(build.build_number.is_some(), "{build:?}");
    let rpc = inv
        .binaries
        .iter()
        .find(|b| b.kind == ProcessKind::RpcServer)
        .expect("rpc-server listed");
    assert!(
        rpc.rpc_protocol
            .as_deref()
            .is_some_and(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit())),
        "{rpc:?}"
    );
    assert!(inv.host.cpu_cores >= 1 && inv.host.ram_total_bytes > 0);
    assert!(!inv.gpu_notes.is_empty() || !inv.gpus.is_empty());

    // GGUF metadata of the real model files.
    let model = |name: &str| {
        inv.models
            .iter()
            .find(|m| m.file_name == name)
            .and_then(|m| m.gguf.clone())
            .unwrap_or_else(|| panic!("{name} not listed with metadata: {:?}", inv.models))
    };
    let target = model("target.gguf");
    assert_eq!(target.architecture.as_deref(), Some("llama"));
    assert!(target.parameter_count > 1_000_000, "{target:?}");
    assert!(
        target.context_length.is_some()
            && target.file_type.is_some()
            && target.vocab_size.is_some(),
        "{target:?}"
    );
    assert_eq!(
        target.vocab_fingerprint,
        model("draft.gguf").vocab_fingerprint
    );
    assert_eq!(
        target.vocab_fingerprint,
        model("draft-identical.gguf").vocab_fingerprint
    );
    assert_ne!(
        target.vocab_fingerprint,
        model("draft-othervocab.gguf").vocab_fingerprint
    );

    // Both sides pinned: the tokens are used up, and a second status goes by the pins alone.
    assert!(!fleet.pending.any().expect("pending"));
    let again = rt
        .block_on(fleet::status::collect(&fleet, None))
        .expect("status");
    assert!(again.iter().all(|r| r.reachable), "{again:?}");
    assert!(
        !_a.state_dir.join("join.json").exists(),
        "agent forgot its join secret after confirmation"
    );
    let table = fleet::status::render(&again);
    assert!(
        table.contains("target.gguf") && table.contains("llama-server"),
        "{table}"
    );
}
