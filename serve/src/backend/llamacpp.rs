//! llama.cpp's `llama-server`, spoken to over its native endpoints.
//!
//! Why the native `/completion` and not `/v1/completions`: only the native endpoint takes token-id
//! prompts, a *list* of prompts processed in one decode (the one-pass verification, see
//! `notes/backends.md`), `return_tokens`, and per-token `bytes` (exact text without re-tokenizing).

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::BackendError;

/// A token id in the model's vocabulary (llama.cpp uses `int32_t`; ids are never negative).
pub type TokenId = u32;

/// Which role a server plays; used in error messages and logs so the user knows which host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Target,
    Draft,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Target => "target",
            Role::Draft => "draft",
        }
    }
}

/// A `llama-server` reachable over HTTP, with a persistent connection pool (a round's fixed cost is
/// what decides whether speculation pays, so connections are never re-opened per request).
#[derive(Debug, Clone)]
pub struct LlamaServer {
    role: Role,
    base: String,
    http: reqwest::Client,
    timeout: Duration,
    /// How long a request waits for a server that refuses connections or is loading its model
    /// (an agent restarting it, e.g. onto a new build by `tightwad build`), before failing.
    restart_wait: Duration,
    /// Since when the server has been refusing: past `restart_wait` it is down, not
    /// restarting, and requests fail at once until it answers again.
    refusing_since: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// The target's `restart_wait`: a llama-server restart (stop, start, load a model) takes a few
/// seconds; the draft gets none (the engine falls back to target-only at once instead).
pub const TARGET_RESTART_WAIT: Duration = Duration::from_secs(10);
const RESTART_POLL: Duration = Duration::from_millis(200);

/// What `/props` tells about a running server.
#[derive(Debug, Clone, Deserialize)]
pub struct Props {
    #[serde(default)]
    pub total_slots: u32,
    #[serde(default)]
    pub build_info: String,
    #[serde(default)]
    pub model_path: String,
    #[serde(default)]
    pub chat_template: String,
    #[serde(default)]
    pub default_generation_settings: GenerationSettings,
    #[serde(default)]
    eos_token: Option<String>,
}

impl Props {
    /// The end-of-sequence token's text (empty when the model has none).
    pub fn eos_token(&self) -> &str {
        self.eos_token.as_deref().unwrap_or("")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationSettings {
    #[serde(default)]
    pub n_ctx: u32,
}

/// The model a server reports at `/v1/models`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    pub n_vocab: Option<u64>,
}

/// The sampler settings forwarded to the target (and the draft, which always decodes greedily).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling::default()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    fn write_into(&self, body: &mut serde_json::Map<String, Value>) {
        body.insert("temperature".into(), json!(self.temperature));
        if let Some(v) = self.top_k {
            body.insert("top_k".into(), json!(v));
        }
        if let Some(v) = self.top_p {
            body.insert("top_p".into(), json!(v));
        }
        if let Some(v) = self.min_p {
            body.insert("min_p".into(), json!(v));
        }
        if let Some(v) = self.seed {
            body.insert("seed".into(), json!(v));
        }
    }
}

/// One candidate of a position's distribution (after the sampler chain when asked for).
#[derive(Debug, Clone, Deserialize)]
pub struct Candidate {
    pub id: TokenId,
    #[serde(default)]
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub prob: Option<f64>,
    #[serde(default)]
    pub logprob: Option<f64>,
}

/// The sampled token at one position, with its exact bytes and (when requested) its neighbours.
#[derive(Debug, Clone, Deserialize)]
pub struct SampledToken {
    pub id: TokenId,
    #[serde(default)]
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub top_probs: Vec<Candidate>,
    #[serde(default)]
    pub top_logprobs: Vec<Candidate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub prompt_n: f64,
    #[serde(default)]
    pub prompt_ms: f64,
    #[serde(default)]
    pub predicted_n: f64,
    #[serde(default)]
    pub predicted_ms: f64,
    /// Tokens llama.cpp's own speculation drafted / accepted (native pairing).
    #[serde(default)]
    pub draft_n: Option<u64>,
    #[serde(default)]
    pub draft_n_accepted: Option<u64>,
}

/// One prompt's result from `/completion`.
#[derive(Debug, Clone, Deserialize)]
pub struct Completion {
    #[serde(default)]
    pub tokens: Vec<TokenId>,
    #[serde(default)]
    pub stop_type: String,
    #[serde(default)]
    pub completion_probabilities: Vec<SampledToken>,
    #[serde(default)]
    pub timings: Option<Timings>,
}

/// One event of a streamed `/completion`.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamEvent {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub tokens: Vec<TokenId>,
    /// Tokens generated so far; jumps by more than one where events were skipped.
    #[serde(default)]
    pub tokens_predicted: usize,
    #[serde(default)]
    pub completion_probabilities: Vec<SampledToken>,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub stop_type: String,
    #[serde(default)]
    pub timings: Option<Timings>,
}

#[derive(Serialize)]
struct TokenizeRequest<'a> {
    content: &'a str,
    add_special: bool,
    parse_special: bool,
}

#[derive(Deserialize)]
struct TokenizeResponse {
    tokens: Vec<TokenId>,
}

impl LlamaServer {
    pub fn new(role: Role, base_url: &str, timeout: Duration) -> Result<Self, BackendError> {
        let base = base_url.trim_end_matches('/').to_string();
        let http = super::http_client(role.as_str(), &base)?;
        Ok(LlamaServer {
            role,
            base,
            http,
            timeout,
            restart_wait: match role {
                Role::Target => TARGET_RESTART_WAIT,
                _ => Duration::ZERO,
            },
            refusing_since: Default::default(),
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn map_send_error(&self, path: &str, e: reqwest::Error) -> BackendError {
        super::send_error(self.role.as_str(), self.url(path), path, self.timeout, e)
    }

    async fn check_status(
        &self,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, BackendError> {
        super::check_status(self.role.as_str(), path, resp).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, BackendError> {
        let resp = self
            .send_once_more_if_stale(|| self.http.get(self.url(path)).timeout(self.timeout))
            .await
            .map_err(|e| self.map_send_error(path, e))?;
        let resp = self.check_status(path, resp).await?;
        self.read_json(path, resp).await
    }

    /// Send a request; if it could not even be sent (a pooled keep-alive connection the server had
    /// already closed — llama-server closes the connection after a streamed reply), send it once
    /// more on a fresh connection. Only for requests without side effects beyond the KV cache.
    async fn send_once_more_if_stale(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let result = match build().send().await {
            Err(e) if !e.is_timeout() && (e.is_request() || e.is_connect()) => {
                tracing::debug!(server = self.role.as_str(), error = %e, "retrying once on a fresh connection");
                build().send().await
            }
            other => other,
        };
        self.wait_out_a_restart(result, build).await
    }

    /// A server that refuses connections, or answers 503 while it loads its model, may be
    /// restarting (an agent switching it to a new build): nothing reached it, so the request is
    /// sent again until it answers or `restart_wait` has passed since it began refusing.
    async fn wait_out_a_restart(
        &self,
        mut result: Result<reqwest::Response, reqwest::Error>,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        loop {
            let refused = match &result {
                // Refused at once (not a timeout: an unreachable host is not restarting).
                Err(e) => e.is_connect() && !e.is_timeout(),
                Ok(resp) => resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE,
            };
            let since = {
                let mut slot = match self.refusing_since.lock() {
                    Ok(slot) => slot,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if !refused {
                    *slot = None;
                    return result;
                }
                *slot.get_or_insert_with(std::time::Instant::now)
            };
            if since.elapsed() >= self.restart_wait {
                return result;
            }
            tracing::debug!(
                server = self.role.as_str(),
                "server refusing or loading: waiting for a restart to finish"
            );
            tokio::time::sleep(RESTART_POLL).await;
            result = build().send().await;
        }
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, BackendError> {
        let resp = self
            .send_once_more_if_stale(|| {
                self.http
                    .post(self.url(path))
                    .timeout(self.timeout)
                    .json(body)
            })
            .await
            .map_err(|e| self.map_send_error(path, e))?;
        let resp = self.check_status(path, resp).await?;
        self.read_json(path, resp).await
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<T, BackendError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.map_send_error(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| BackendError::Malformed {
            server: self.role.as_str(),
            path: path.to_string(),
            detail: format!(
                "{e} (reply began {:?})",
                truncate(&String::from_utf8_lossy(&bytes), 200)
            ),
        })
    }

    /// `Ok(true)` when the server has its model loaded and takes requests.
    pub async fn health(&self) -> Result<bool, BackendError> {
        let resp = self
            .http
            .get(self.url("/health"))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.map_send_error("/health", e))?;
        Ok(resp.status().is_success())
    }

    pub async fn props(&self) -> Result<Props, BackendError> {
        self.get_json("/props").await
    }

    pub async fn model_info(&self) -> Result<ModelInfo, BackendError> {
        let v: Value = self.get_json("/v1/models").await?;
        let first =
            v.get("data")
                .and_then(|d| d.get(0))
                .ok_or_else(|| BackendError::Malformed {
                    server: self.role.as_str(),
                    path: "/v1/models".into(),
                    detail: "no model listed".into(),
                })?;
        Ok(ModelInfo {
            id: first
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
            n_vocab: first
                .get("meta")
                .and_then(|m| m.get("n_vocab"))
                .and_then(Value::as_u64),
        })
    }

    /// Tokenize as the server's own OpenAI endpoints do (`add_special` adds BOS where the model
    /// wants it, `parse_special` turns `<|im_start|>`-style text into its special token).
    pub async fn tokenize(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<TokenId>, BackendError> {
        let r: TokenizeResponse = self
            .post_json(
                "/tokenize",
                &TokenizeRequest {
                    content: text,
                    add_special,
                    parse_special: true,
                },
            )
            .await?;
        Ok(r.tokens)
    }

    /// The text of several tokens together (special tokens rendered as text).
    pub async fn detokenize(&self, tokens: &[TokenId]) -> Result<String, BackendError> {
        let v: Value = self
            .post_json("/detokenize", &json!({ "tokens": tokens }))
            .await?;
        Ok(v.get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Render chat messages with the server's own chat template (so the template is the target's).
    pub async fn apply_template(&self, messages: &Value) -> Result<String, BackendError> {
        let v: Value = self
            .post_json("/apply-template", &json!({ "messages": messages }))
            .await?;
        v.get("prompt")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| BackendError::Malformed {
                server: self.role.as_str(),
                path: "/apply-template".into(),
                detail: "no `prompt` in the reply".into(),
            })
    }

    fn completion_body(
        prompt: Value,
        n_predict: usize,
        sampling: &Sampling,
        n_probs: usize,
        post_sampling_probs: bool,
    ) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("prompt".into(), prompt);
        body.insert("n_predict".into(), json!(n_predict));
        body.insert("cache_prompt".into(), json!(true));
        body.insert("return_tokens".into(), json!(true));
        body.insert("n_probs".into(), json!(n_probs));
        body.insert("post_sampling_probs".into(), json!(post_sampling_probs));
        // The proxy applies stop strings and EOS itself; the server must not add text of its own.
        body.insert("ignore_eos".into(), json!(false));
        sampling.write_into(&mut body);
        Value::Object(body)
    }

    /// Generate up to `n_predict` tokens after `prompt` (the draft's proposal).
    pub async fn complete(
        &self,
        prompt: &[TokenId],
        n_predict: usize,
        sampling: &Sampling,
    ) -> Result<Completion, BackendError> {
        let body = Self::completion_body(json!(prompt), n_predict, sampling, 0, false);
        self.post_json("/completion", &body).await
    }

    /// Sample ONE token after each of several prompts, in one request that the server processes in
    /// one decode (it needs at least `prompts.len()` slots). Results come back in prompt order.
    pub async fn next_token_many(
        &self,
        prompts: &[Vec<TokenId>],
        sampling: &Sampling,
        n_probs: usize,
    ) -> Result<Vec<Completion>, BackendError> {
        let post = !sampling.is_greedy();
        let body = Self::completion_body(json!(prompts), 1, sampling, n_probs, post);
        let v: Value = self.post_json("/completion", &body).await?;
        let results: Vec<Completion> = match v {
            Value::Array(items) => items
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(|e| BackendError::Malformed {
                    server: self.role.as_str(),
                    path: "/completion".into(),
                    detail: e.to_string(),
                })?,
            single @ Value::Object(_) => {
                vec![
                    serde_json::from_value(single).map_err(|e| BackendError::Malformed {
                        server: self.role.as_str(),
                        path: "/completion".into(),
                        detail: e.to_string(),
                    })?,
                ]
            }
            other => {
                return Err(BackendError::Malformed {
                    server: self.role.as_str(),
                    path: "/completion".into(),
                    detail: format!(
                        "expected a list of results, got {}",
                        truncate(&other.to_string(), 200)
                    ),
                })
            }
        };
        if results.len() != prompts.len() {
            return Err(BackendError::Malformed {
                server: self.role.as_str(),
                path: "/completion".into(),
                detail: format!("{} results for {} prompts", results.len(), prompts.len()),
            });
        }
        Ok(results)
    }

    /// Stream up to `n_predict` tokens after `prompt`, one event per token, sampled by the server
    /// itself (the target-only path: exact for any sampler by construction).
    pub async fn stream(
        &self,
        prompt: &[TokenId],
        n_predict: usize,
        sampling: &Sampling,
        native_draft_tokens: Option<usize>,
    ) -> Result<impl Stream<Item = Result<StreamEvent, BackendError>> + Send + 'static, BackendError>
    {
        let mut body = Self::completion_body(json!(prompt), n_predict, sampling, 1, false);
        if let Value::Object(m) = &mut body {
            m.insert("stream".into(), json!(true));
            // A target paired natively with its own draft: how many tokens its speculation may
            // draft for this request (0 turns it off).
            if let Some(n) = native_draft_tokens {
                m.insert("speculative.n_max".into(), json!(n));
                m.insert("speculative.n_min".into(), json!(0));
            }
        }
        let path = "/completion";
        // No overall timeout on a stream: it lasts as long as the generation. Stalls are caught by
        // the per-event idle timeout below.
        // llama-server closes the connection after a streamed reply: don't return it to the pool.
        let resp = self
            .send_once_more_if_stale(|| {
                self.http
                    .post(self.url(path))
                    .header(reqwest::header::CONNECTION, "close")
                    .json(&body)
            })
            .await
            .map_err(|e| self.map_send_error(path, e))?;
        let resp = self.check_status(path, resp).await?;
        let role = self.role;
        let idle = self.timeout;
        let bytes = resp.bytes_stream();
        Ok(sse_events::<StreamEvent>(role, idle, bytes))
    }

    /// Send an OpenAI request to the server unchanged and hand back its reply (status and body
    /// stream) for the proxy to relay: the passthrough path.
    pub async fn forward(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, BackendError> {
        let streamed = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        self.send_once_more_if_stale(|| {
            let req = self.http.post(self.url(path)).json(body);
            if streamed {
                req.header(reqwest::header::CONNECTION, "close")
            } else {
                req
            }
        })
        .await
        .map_err(|e| self.map_send_error(path, e))
    }

    /// Read one counter from the server's Prometheus `/metrics` (needs `--metrics`).
    pub async fn metric(&self, name: &str) -> Result<f64, BackendError> {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.map_send_error("/metrics", e))?;
        let resp = self.check_status("/metrics", resp).await?;
        let text = resp
            .text()
            .await
            .map_err(|e| self.map_send_error("/metrics", e))?;
        parse_metric(&text, name).ok_or_else(|| BackendError::Malformed {
            server: self.role.as_str(),
            path: "/metrics".into(),
            detail: format!("no metric named {name}"),
        })
    }
}

/// Find `name value` in Prometheus text exposition (no labels: llama-server's counters have none).
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == name).then(|| parts.next()?.parse().ok())?
    })
}

/// The stream decoder that [`LlamaServer::stream`] uses, fed from plain byte chunks instead of a
/// live HTTP response. Public only so the fuzz targets (`fuzz/fuzz_targets/sse_stream.rs`) and
/// regression tests can drive the exact decoder the target-only path runs, chunk boundaries
/// included; the proxy itself never calls it.
pub fn decode_sse_chunks(
    role: Role,
    idle: Duration,
    chunks: impl Stream<Item = bytes::Bytes> + Send + 'static,
) -> impl Stream<Item = Result<StreamEvent, BackendError>> + Send + 'static {
    sse_events::<StreamEvent>(role, idle, chunks.map(Ok::<_, reqwest::Error>))
}

/// Decode a `text/event-stream` body into typed events, failing on a stall longer than `idle`.
/// Generic over the event type: the vLLM client decodes its own chunk shape with it.
pub(crate) fn sse_events<T: serde::de::DeserializeOwned + Send + 'static>(
    role: Role,
    idle: Duration,
    bytes: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
) -> impl Stream<Item = Result<T, BackendError>> + Send + 'static {
    let state = (Box::pin(bytes), Vec::<u8>::new(), false);
    futures::stream::unfold(state, move |(mut bytes, mut buf, mut done)| async move {
        loop {
            if done {
                return None;
            }
            if let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..pos + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let parsed: Result<T, _> = serde_json::from_str(&data);
                let item = parsed.map_err(|e| BackendError::Malformed {
                    server: role.as_str(),
                    path: "/completion (stream)".into(),
                    detail: format!("{e} in event {:?}", truncate(&data, 200)),
                });
                if item.is_err() {
                    done = true;
                }
                return Some((item, (bytes, buf, done)));
            }
            match tokio::time::timeout(idle, bytes.next()).await {
                Err(_) => {
                    let err = BackendError::Timeout {
                        server: role.as_str(),
                        path: "/completion (stream)".into(),
                        seconds: idle.as_secs(),
                    };
                    return Some((Err(err), (bytes, buf, true)));
                }
                Ok(None) => {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    // A final event without its blank line: process it as complete.
                    buf.extend_from_slice(b"\n\n");
                }
                Ok(Some(Ok(chunk))) => append_normalized(&mut buf, &chunk),
                Ok(Some(Err(e))) => {
                    let err = BackendError::Malformed {
                        server: role.as_str(),
                        path: "/completion (stream)".into(),
                        detail: format!("connection broke mid-stream: {e}"),
                    };
                    return Some((Err(err), (bytes, buf, true)));
                }
            }
        }
    })
}

/// Append a network chunk, turning each CRLF of the original byte stream into LF exactly once,
/// wherever the chunk boundaries fall: a `\r` that ended the previous chunk pairs with a `\n`
/// starting this one (a chunk's trailing `\r` is never consumed before the next chunk arrives,
/// since events end with `\n\n`).
fn append_normalized(buf: &mut Vec<u8>, chunk: &[u8]) {
    if buf.last() == Some(&b'\r') && chunk.first() == Some(&b'\n') {
        buf.pop();
    }
    for (i, b) in chunk.iter().enumerate() {
        if *b == b'\r' && chunk.get(i + 1) == Some(&b'\n') {
            continue;
        }
        buf.push(*b);
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_prometheus_counters() {
        let text = "# HELP llamacpp:n_decode_total decodes\n# TYPE x counter\nllamacpp:n_decode_total 42\nllamacpp:prompt_tokens_total 7\n";
        assert_eq!(parse_metric(text, "llamacpp:n_decode_total"), Some(42.0));
        assert_eq!(
            parse_metric(text, "llamacpp:prompt_tokens_total"),
            Some(7.0)
        );
        assert_eq!(parse_metric(text, "missing"), None);
    }

    #[tokio::test]
    async fn splits_sse_events_across_chunk_boundaries() {
        let chunks: Vec<Result<bytes::Bytes, reqwest::Error>> = vec![
            Ok(bytes::Bytes::from_static(b"data: {\"tokens\":[5],\"st")),
            Ok(bytes::Bytes::from_static(b"op\":false}\r\n\r\ndata: {\"tokens\":[6],\"stop\":true,\"stop_type\":\"eos\"}\n\n")),
        ];
        let events: Vec<_> = sse_events::<StreamEvent>(
            Role::Target,
            Duration::from_secs(1),
            futures::stream::iter(chunks),
        )
        .collect()
        .await;
        assert_eq!(events.len(), 2);
        let first = events[0].as_ref().expect("first event parses");
        assert_eq!(first.tokens, vec![5]);
        let second = events[1].as_ref().expect("second event parses");
        assert!(second.stop);
        assert_eq!(second.stop_type, "eos");
    }

    #[tokio::test]
    async fn garbage_in_a_stream_is_an_error_not_a_panic() {
        let chunks: Vec<Result<bytes::Bytes, reqwest::Error>> =
            vec![Ok(bytes::Bytes::from_static(b"data: {not json\n\n"))];
        let events: Vec<_> = sse_events::<StreamEvent>(
            Role::Draft,
            Duration::from_secs(1),
            futures::stream::iter(chunks),
        )
        .collect()
        .await;
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0], Err(BackendError::Malformed { .. })));
    }
}
