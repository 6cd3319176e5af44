//! A real proxy (the `tightwad-serve` library) on a real loopback port, in the test's process, with
//! the coordinator's hosts view attached as the `tightwad` binary does.

use serde_json::Value;
use tightwad_serve::config::{PairingEntry, ProxyConfig};
use tightwad_serve::server::Proxy;

use crate::exactness::{compare, Agreement};
use crate::http::{get_json, post_json, proxy_token_ids, sse_payloads};
use crate::llama_server::{LlamaServer, ServerOptions};
use crate::test_env::TestEnv;

/// The real SmolLM2 pair behind a proxy: the target (`ServerOptions::target(k)`), the draft, and
/// the proxy speculating k tokens a round (fields in drop order: the proxy stops first).
pub struct Smollm2Pairing {
    pub proxy: RunningProxy,
    pub draft: LlamaServer,
    pub target: LlamaServer,
}

impl Smollm2Pairing {
    pub async fn start(env: &TestEnv, k: usize) -> Smollm2Pairing {
        let (target_model, draft_model) = env.smollm2();
        let target = LlamaServer::start(env, &target_model, ServerOptions::target(k as u32)).await;
        let draft = LlamaServer::start(env, &draft_model, ServerOptions::default()).await;
        let proxy = RunningProxy::start(&target.url, Some(&draft.url), k).await;
        Smollm2Pairing {
            proxy,
            draft,
            target,
        }
    }
}

/// A proxy running in this process on a real loopback port, stopped when dropped.
pub struct RunningProxy {
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningProxy {
    /// The pairing the tests use: speculation pinned on (on these CPU-only machines the
    /// controller would rightly switch it off, and the speculation paths would go untested).
    pub fn entry(target: &str, draft: Option<&str>, draft_tokens: usize) -> PairingEntry {
        let mut entry = PairingEntry::new(target.to_string(), draft.map(str::to_string));
        entry.draft_tokens = Some(draft_tokens);
        entry.name = Some("tightwad-test".into());
        entry.draft_timeout_s = 5;
        entry.target_timeout_s = 30;
        entry.adaptive = false;
        entry
    }

    pub async fn start(target: &str, draft: Option<&str>, draft_tokens: usize) -> RunningProxy {
        Self::start_entry(Self::entry(target, draft, draft_tokens)).await
    }

    pub async fn start_entry(entry: PairingEntry) -> RunningProxy {
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            pairings: vec![entry],
            ..ProxyConfig::default()
        };
        Self::start_with(config).await
    }

    pub async fn start_with(config: ProxyConfig) -> RunningProxy {
        let proxy = Proxy::bind(&config).await.expect("proxy binds");
        tightwad_coordinator::hosts_view::attach(&proxy, &config);
        let addr = proxy.local_addr().expect("proxy address");
        proxy.probe().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = proxy
                .serve(async {
                    let _ = rx.await;
                })
                .await;
        });
        RunningProxy {
            url: format!("http://{addr}"),
            shutdown: Some(tx),
            task,
        }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the proxy's URL ends with its port")
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post_json(&format!("{}{}", self.url, path), body).await
    }

    pub async fn stats(&self) -> Value {
        get_json(&format!("{}/v1/tightwad/stats", self.url)).await
    }

    /// A streamed request: the `data:` payloads in order (the last one is `[DONE]`).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = reqwest::Client::new()
            .post(format!("{}{}", self.url, path))
            .json(body)
            .send()
            .await
            .expect("stream request");
        assert_eq!(r.status(), 200);
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
        let text = r.text().await.expect("stream body");
        sse_payloads(&text)
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// The user's story behind most exactness tests: greedy completions through the proxy, each
/// answered by speculation, compared token by token with the target alone.
pub async fn greedy_through_proxy_matches_target(
    proxy: &RunningProxy,
    target: &LlamaServer,
    prompts: &[String],
    max_tokens: usize,
) -> Vec<Agreement> {
    let mut outcomes = Vec::new();
    for prompt in prompts {
        let (s, through) = proxy
            .post(
                "/v1/completions",
                &serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": true}),
            )
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
        let reference = target
            .reference(serde_json::json!(prompt), max_tokens)
            .await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
    }
    outcomes
}
