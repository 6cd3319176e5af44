//! The supervisor with a REAL `vllm serve` (the CPU build from `scripts/setup-vllm`): arguments
//! checked against `vllm serve --help=all` before anything starts, readiness on `/health`, the
//! version in the inventory, a clean stop of the whole process group.
//!
//! Lives in the harness crate, not beside the agent: the agent is started as a binary in a network
//! namespace and enrolled through the coordinator's fleet code, so this tests both ends together
//! (the agent crate depends on no coordinator code, not even in its tests).

use tightwad_e2e::agents::*;
use tightwad_e2e::netns::*;
use tightwad_e2e::test_env::*;

use tightwad_protocol::messages::ProcessState;

#[test]
fn vllm_serve_is_checked_started_reported_and_stopped() {
    let vllm = require_env("TIGHTWAD_VLLM_BIN");
    let model = require_env("TIGHTWAD_VLLM_MODEL");
    let rt = runtime();
    let mut lab = Lab::new();
    let ns = lab.add_namespace();
    let models = lab.path("models");
    std::fs::create_dir_all(&models).expect("models dir");
    // Lands in the agent's [binaries] table, then one vLLM process. On CPU vLLM reserves
    // `--gpu-memory-utilization` of the host's RAM (0.92 by default, more than is free here).
    let extra = format!(
        r#"vllm = "{vllm}"

[[process]]
name = "vllm"
kind = "vllm"
args = ["{model}", "--host", "127.0.0.1", "--port", "8000", "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--gpu-memory-utilization", "0.2"]
ready_timeout_s = 900
"#
    );
    let _runtime = rt.enter();
    let fleet = fleet_for(&coordinator_config(
        lab.dir.path(),
        &lab.path("coordinator"),
        &[("alpha", &format!("{}:7420", ns.ip))],
    ));
    let token = issue_token(&fleet);
    let _agent = AgentProcess::start(AgentSpec {
        ns: &ns,
        state_dir: lab.path("agent"),
        models,
        join: Some(token),
        extra_toml: extra,
    });
    let client = rt
        .block_on(fleet.connect(fleet.config.host("alpha").expect("host")))
        .expect("connect");

    // A misspelled flag is refused before anything starts, quoting vLLM's own help.
    let err = rt
        .block_on(client.start_process(
            "vllm",
            Some(vec![
                model.clone(),
                "--max-model-length".into(),
                "1024".into(),
            ]),
        ))
        .expect_err("--max-model-length refused");
    let text = err.to_string();
    assert!(
        text.contains("--max-model-length") && text.contains(&vllm),
        "{text}"
    );

    let started = rt
        .block_on(client.start_process("vllm", None))
        .expect("vllm starts");
    assert_eq!(started.state, ProcessState::Ready, "{started:?}");
    assert_eq!(started.port, Some(8000));

    let inventory = rt.block_on(client.inventory()).expect("inventory");
    let version = inventory.vllm_version.clone().unwrap_or_default();
    assert!(version.starts_with("0.32.0"), "vLLM version {version:?}");

    let stopped = rt
        .block_on(client.stop_process("vllm"))
        .expect("vllm stops");
    assert_eq!(stopped.state, ProcessState::Stopped, "{stopped:?}");
}
