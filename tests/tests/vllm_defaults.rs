//! A REAL vLLM target's own default sampling (issue 20, settings item 7): a request that sets no
//! `temperature` is sampled as vLLM alone would sample it — with the temperature of the model's
//! generation config (vLLM's `--generation-config auto`), which the proxy cannot read. Run under
//! `flock /work/vllm.lock` on shared machines (vLLM takes gigabytes).

use serde_json::{json, Value};
use tightwad_e2e::vllm::VllmServer;
use tightwad_e2e::{compare, env, proxy_token_ids, LlamaServer, RunningProxy, ServerOptions};
use tightwad_serve::backend::BackendKind;

const MAX_TOKENS: usize = 24;

/// The test's Hugging Face folder: the usual SmolLM2 (files linked, not copied) with a generation
/// config whose default temperature is 0, i.e. greedy unless a request says otherwise.
fn greedy_by_default_model(dir: &std::path::Path) -> std::path::PathBuf {
    let source = VllmServer::model_folder();
    let folder = dir.join("smollm2-greedy-default");
    std::fs::create_dir_all(&folder).expect("model folder");
    for entry in std::fs::read_dir(&source).expect("model folder readable") {
        let entry = entry.expect("model file");
        if entry.file_name() == "generation_config.json" {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), folder.join(entry.file_name())).expect("link");
    }
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(source.join("generation_config.json"))
            .expect("generation_config.json"),
    )
    .expect("generation config JSON");
    config["temperature"] = json!(0.0);
    std::fs::write(
        folder.join("generation_config.json"),
        serde_json::to_vec_pretty(&config).expect("JSON"),
    )
    .expect("write generation config");
    folder
}

/// vLLM's default is greedy here (its generation config says temperature 0), so a request
/// without `temperature` gets vLLM's greedy answer through the proxy, speculatively, token for
/// token. Before, the proxy sampled it at llama.cpp's 0.8.
#[tokio::test]
async fn a_request_without_temperature_uses_the_vllm_targets_own_default() {
    let env = env();
    let dir = tempfile::tempdir().expect("temp dir");
    let vllm = VllmServer::start_model(&greedy_by_default_model(dir.path())).await;
    let (_, draft_gguf) = env.smollm2();
    let draft = LlamaServer::start(&env, &draft_gguf, ServerOptions::default()).await;
    let mut entry = RunningProxy::entry(&vllm.url, Some(&draft.url), 4);
    entry.target_kind = BackendKind::Vllm;
    entry.draft_kind = BackendKind::Llamacpp;
    // vLLM on 2 busy cores: a verification can take a while.
    entry.target_timeout_s = 120;
    entry.draft_timeout_s = 60;
    let proxy = RunningProxy::start_entry(entry).await;
    for prompt in [
        "Once upon a time",
        "The quick brown fox",
        "In a distant galaxy",
    ] {
        let ids = vllm.tokenize(prompt).await;
        let reference = vllm.reference(&ids, MAX_TOKENS).await;
        // vLLM alone, no temperature: its generation config's greedy default.
        let (s, alone) = tightwad_e2e::post_json(
            &format!("{}/v1/completions", vllm.url),
            &json!({"prompt": ids, "max_tokens": MAX_TOKENS, "return_token_ids": true}),
        )
        .await;
        assert_eq!(s, 200, "{alone}");
        compare(
            &proxy_token_ids(&alone),
            &reference,
            &format!("vLLM alone {prompt:?}"),
        );
        let (s, through) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
        assert!(
            through["tightwad"]["drafted"].as_u64() > Some(0),
            "nothing was drafted: {through}"
        );
        compare(
            &proxy_token_ids(&through),
            &reference,
            &format!("through the proxy {prompt:?}"),
        );
    }
}
