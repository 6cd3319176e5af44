//! `tightwad doctor` against a REAL vLLM (the CPU build from `scripts/setup-vllm`, serving SmolLM2
//! converted from the GGUF the llama.cpp draft loads): the whole command on a config with a vLLM
//! target, its version and model read through vLLM's own API, the tokenizer probe through each
//! server's API passing for the matching draft and failing for a draft of another vocabulary.
//! One vLLM start for the file (it takes a minute or more), so everything runs in one test.
//!
//! vLLM takes several GiB: run this file only as `flock /work/vllm.lock cargo nextest run ...`
//! on a shared machine.

use std::path::Path;

use tightwad_coordinator::doctor::{self, Category, DoctorArgs, Report, Status};
use tightwad_e2e::vllm::{VllmServer, SERVED_MODEL};
use tightwad_e2e::{env, LlamaServer, ServerOptions};

async fn doctor_on(dir: &Path, name: &str, target: &str, draft: &str) -> Report {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n\n[[pairings]]\nname = \"{name}\"\ntarget = \"{target}\"\ntarget_kind = \"vllm\"\ndraft = \"{draft}\"\ndraft_tokens = 4\n",
            dir.join("state").display()
        ),
    )
    .expect("config");
    let report = doctor::diagnose(
        &DoctorArgs {
            json: false,
            offline: false,
        },
        &config,
    )
    .await
    .expect("doctor runs");
    eprintln!("{}", report.render());
    report
}

/// The version of the vLLM package the server runs, asked of its own Python.
fn installed_vllm_version() -> String {
    let python = tightwad_e2e::test_env::require_env("TIGHTWAD_VLLM_PYTHON");
    let out = std::process::Command::new(python)
        .args(["-c", "import vllm; print(vllm.__version__)"])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_audits_a_real_vllm_target() {
    let env = env();
    let dir = tempfile::tempdir().expect("tmp");
    let vllm = VllmServer::start().await;
    let (_, draft_gguf) = env.smollm2();
    let draft = LlamaServer::start(&env, &draft_gguf, ServerOptions::default()).await;
    let other = LlamaServer::start(
        &env,
        &env.model("draft-othervocab.gguf"),
        ServerOptions::default(),
    )
    .await;

    // A healthy vLLM + llama.cpp pairing: nothing fails.
    let report = doctor_on(dir.path(), "mixed", &vllm.url, &draft.url).await;
    let failed: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .collect();
    assert!(failed.is_empty(), "{}", report.render());
    assert!(report.ok);
    let version = installed_vllm_version();
    let target = report
        .checks
        .iter()
        .find(|c| c.category == Category::Build && c.message.starts_with("target (vllm)"))
        .unwrap_or_else(|| panic!("no vLLM version audit:\n{}", report.render()));
    assert_eq!(target.status, Status::Pass, "{target:?}");
    assert!(
        target.message.contains(&version),
        "vLLM {version} expected: {target:?}"
    );
    assert!(target.message.contains(SERVED_MODEL), "{target:?}");
    let network = report
        .checks
        .iter()
        .find(|c| c.category == Category::Network && c.subject.contains(&vllm.url))
        .unwrap_or_else(|| panic!("no network check of vLLM:\n{}", report.render()));
    assert_ne!(network.status, Status::Fail, "{network:?}");
    let vocab = report
        .checks
        .iter()
        .find(|c| c.category == Category::Vocabulary)
        .unwrap_or_else(|| panic!("no tokenizer probe:\n{}", report.render()));
    assert_eq!(vocab.status, Status::Pass, "{vocab:?}");
    assert!(vocab.message.contains("tokenize all"), "{vocab:?}");

    // A draft of another vocabulary next to the same vLLM: the probe fails, and says why.
    let report = doctor_on(dir.path(), "wrong", &vllm.url, &other.url).await;
    let vocab = report
        .checks
        .iter()
        .find(|c| c.category == Category::Vocabulary && c.status == Status::Fail)
        .unwrap_or_else(|| panic!("no failed tokenizer probe:\n{}", report.render()));
    assert!(vocab.message.contains("tokenize differently"), "{vocab:?}");
    assert!(
        vocab
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("same model family")),
        "{vocab:?}"
    );
    assert!(!report.ok);
    drop(vllm);
}
