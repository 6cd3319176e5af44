//! A real vLLM server (CPU build, `scripts/setup-vllm`) serving SmolLM2 converted from the same
//! GGUF the llama.cpp servers load, so vocabularies match and pairings can mix kinds.
//!
//! Environment: `TIGHTWAD_VLLM_PYTHON` (the venv's python) and `TIGHTWAD_VLLM_MODEL` (the Hugging
//! Face folder); `./scripts/test` exports both. Missing → the test fails saying so.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};

use crate::exactness::Reference;
use crate::http::post_json;
use crate::server_process::{log_tail, spawn_logged, Readiness};
use crate::test_env::free_port;

/// The name the vLLM server serves its model under.
pub const SERVED_MODEL: &str = "smollm2";

/// A running `vllm serve` (OpenAI API server), its whole process group killed when dropped.
pub struct VllmServer {
    child: Child,
    pub url: String,
    pub port: u16,
    log: PathBuf,
}

fn var(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!(
            "{name} is not set: run the tests through ./scripts/test, or eval \"$(scripts/setup-vllm)\" first"
        ),
    }
}

impl VllmServer {
    /// Start vLLM on a free port and wait for `/health` (several minutes on a busy 2-core CI
    /// machine: the Python imports alone take a while).
    pub async fn start() -> VllmServer {
        Self::start_model(&var("TIGHTWAD_VLLM_MODEL")).await
    }

    /// The Hugging Face folder every vLLM test serves (`TIGHTWAD_VLLM_MODEL`).
    pub fn model_folder() -> PathBuf {
        var("TIGHTWAD_VLLM_MODEL")
    }

    /// [`VllmServer::start`] with another Hugging Face folder (e.g. one whose generation config
    /// sets different default sampling).
    pub async fn start_model(model: &std::path::Path) -> VllmServer {
        let python = var("TIGHTWAD_VLLM_PYTHON");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("tightwad-test-vllm-{port}.log"));
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "vllm.entrypoints.openai.api_server", "--model"])
            .arg(model)
            .args([
                "--served-model-name",
                SERVED_MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                // float32 like the llama.cpp F16 target's compute: bfloat16 would turn many
                // near-ties into different greedy choices.
                "--dtype",
                "float32",
                "--max-model-len",
                "2048",
                // The proxy learns the end-of-sequence token from /tokenizer_info.
                "--enable-tokenizer-info-endpoint",
                // No torch.compile warm-up: it takes minutes on 2 busy cores and buys nothing here.
                "--enforce-eager",
            ])
            .env("VLLM_CPU_KVCACHE_SPACE", "1");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = spawn_logged(&mut cmd, &log, &python.display().to_string());
        let url = format!("http://127.0.0.1:{port}");
        let readiness = Readiness {
            what: "vLLM",
            log: &log,
            tail_lines: 40,
            poll: Duration::from_millis(500),
            timeout: Duration::from_secs(900),
        };
        readiness.wait(&mut child, &url).await;
        VllmServer {
            child,
            url,
            port,
            log,
        }
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 40)
    }

    /// The prompt's token ids as vLLM's completion endpoint would make them (BOS as the model wants).
    pub async fn tokenize(&self, text: &str) -> Vec<u64> {
        let (status, v) = post_json(
            &format!("{}/tokenize", self.url),
            &json!({"prompt": text, "add_special_tokens": true}),
        )
        .await;
        assert_eq!(status, 200, "vLLM /tokenize failed: {v}");
        v["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .filter_map(Value::as_u64)
            .collect()
    }

    /// vLLM alone, greedy, with the top-two margin at every generated position.
    pub async fn reference(&self, prompt_ids: &[u64], max_tokens: usize) -> Reference {
        let body = json!({
            "prompt": prompt_ids, "max_tokens": max_tokens, "temperature": 0, "logprobs": 2,
            "return_tokens_as_token_ids": true, "return_token_ids": true,
        });
        let (status, v) = post_json(&format!("{}/v1/completions", self.url), &body).await;
        assert_eq!(status, 200, "vLLM reference failed: {v}");
        let choice = &v["choices"][0];
        let tokens: Vec<u64> = choice["token_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut margins = Vec::new();
        let mut runner_up = Vec::new();
        for top in choice["logprobs"]["top_logprobs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let mut ranked: Vec<(u64, f64)> = top
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, lp)| {
                            Some((k.strip_prefix("token_id:")?.parse().ok()?, lp.as_f64()?))
                        })
                        .collect()
                })
                .unwrap_or_default();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            let lp = |i: usize| ranked.get(i).map_or(f64::NEG_INFINITY, |r| r.1);
            margins.push(lp(0) - lp(1));
            runner_up.push(ranked.get(1).map_or(u64::MAX, |r| r.0));
        }
        Reference {
            tokens,
            text: choice["text"].as_str().unwrap_or_default().to_string(),
            margins,
            runner_up,
            stop_type: choice["finish_reason"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// vLLM alone, sampling `max_tokens` after `prompt_ids` with `sampling` (temperature, top_k,
    /// top_p, min_p, seed …): the generated token ids.
    pub async fn sample(
        &self,
        prompt_ids: &[u64],
        max_tokens: usize,
        sampling: &Value,
    ) -> Vec<u64> {
        let mut body = json!({
            "model": SERVED_MODEL, "prompt": prompt_ids, "max_tokens": max_tokens,
            "return_token_ids": true,
        });
        crate::http::merge(&mut body, sampling.clone());
        let (status, v) = post_json(&format!("{}/v1/completions", self.url), &body).await;
        assert_eq!(status, 200, "vLLM sampling failed: {v}");
        v["choices"][0]["token_ids"]
            .as_array()
            .unwrap_or_else(|| panic!("no token_ids in {v}"))
            .iter()
            .filter_map(Value::as_u64)
            .collect()
    }

    /// Kill the server and its engine processes now (a crash or a power cut, as far as a client
    /// can tell).
    pub fn kill(&mut self) {
        // vLLM runs its engine in child processes: end the whole group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VllmServer {
    fn drop(&mut self) {
        self.kill();
    }
}
