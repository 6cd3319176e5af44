//! llama.cpp's `llama-server`, spoken to over its native endpoints.
//!
//! Why the native `/completion` and not `/v1/completions`: only the native endpoint takes token-id
//! prompts, a *list* of prompts processed in one decode (the one-pass verification, see
//! `notes/backends.md`), `return_tokens`, and per-token `bytes` (exact text without re-tokenizing).

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::http::{truncate, Endpoint};
use super::sse::sse_events;
use super::types::{Completion, DraftOptions, Role, Sampling, StreamEvent, TokenId};
use super::BackendError;

mod prefix;
mod props;
pub use prefix::{fnv1a, PrefixStats, SlotMemory};
pub use props::{Capabilities, GenerationParams, GenerationSettings, Props};

/// A `llama-server` reachable over HTTP, with a persistent connection pool (a round's fixed cost is
/// what decides whether speculation pays, so connections are never re-opened per request).
#[derive(Debug, Clone)]
pub struct LlamaServer {
    ep: Endpoint,
    /// What this proxy left in each of the server's slots (see [`prefix`]).
    prefix: Arc<SlotMemory>,
}

/// The target's `restart_wait`: a llama-server restart (stop, start, load a model) takes a few
/// seconds; the draft gets none (the engine falls back to target-only at once instead).
pub const TARGET_RESTART_WAIT: Duration = Duration::from_secs(10);

/// The model a server reports at `/v1/models`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub id: String,
    pub n_vocab: Option<u64>,
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
        let restart_wait = match role {
            Role::Target => TARGET_RESTART_WAIT,
            _ => Duration::ZERO,
        };
        Ok(LlamaServer {
            ep: Endpoint::new(role, base_url, timeout, restart_wait)?,
            prefix: Arc::default(),
        })
    }

    /// The server's HTTP side: role, base URL, health (shared by both server kinds).
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    pub fn base_url(&self) -> &str {
        self.ep.base_url()
    }

    /// What the proxy remembers of the server's slots, for rounds that send only what a slot does
    /// not hold yet (configured from `/props` at every probe).
    pub fn slot_memory(&self) -> &SlotMemory {
        &self.prefix
    }

    pub async fn health(&self) -> Result<bool, BackendError> {
        self.ep.healthy().await
    }

    pub async fn props(&self) -> Result<Props, BackendError> {
        self.ep.get_json("/props").await
    }

    pub async fn model_info(&self) -> Result<ModelInfo, BackendError> {
        let v: Value = self.ep.get_json("/v1/models").await?;
        let first =
            v.get("data")
                .and_then(|d| d.get(0))
                .ok_or_else(|| BackendError::Malformed {
                    server: self.ep.server(),
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
            .ep
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
            .ep
            .post_json("/detokenize", &json!({ "tokens": tokens }))
            .await?;
        Ok(v.get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Render chat messages with the server's own chat template (so the template is the target's).
    pub async fn apply_template(&self, messages: &Value) -> Result<String, BackendError> {
        self.apply_template_with(messages, None).await
    }

    /// [`LlamaServer::apply_template`] with the request's `chat_template_kwargs` (the server
    /// parses the body as its chat endpoint does, so they render the same prompt).
    pub async fn apply_template_with(
        &self,
        messages: &Value,
        template_kwargs: Option<&Value>,
    ) -> Result<String, BackendError> {
        let mut body = json!({ "messages": messages });
        if let Some(kwargs) = template_kwargs {
            body["chat_template_kwargs"] = kwargs.clone();
        }
        let v: Value = self.ep.post_json("/apply-template", &body).await?;
        v.get("prompt")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| BackendError::Malformed {
                server: self.ep.server(),
                path: "/apply-template".into(),
                detail: "no `prompt` in the reply".into(),
            })
    }

    /// `/apply-template` of a whole chat body (`messages`, `chat_template_kwargs`,
    /// `add_generation_prompt`, …), read by the server as its chat endpoint reads it.
    pub async fn render_chat(&self, body: &Value) -> Result<String, BackendError> {
        let v: Value = self.ep.post_json("/apply-template", body).await?;
        v.get("prompt")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                self.ep
                    .malformed("/apply-template", "no `prompt` in the reply")
            })
    }

    /// One answer of the server's own chat endpoint (the reasoning probe's check).
    pub async fn chat(&self, body: &Value) -> Result<Value, BackendError> {
        self.ep.post_json("/v1/chat/completions", body).await
    }

    /// A `/completion` body for `prompt` (token ids, or a list of prompts).
    fn completion_body(
        prompt: Value,
        n_predict: usize,
        sampling: &Sampling,
        n_probs: usize,
        post_sampling_probs: bool,
    ) -> serde_json::Map<String, Value> {
        let mut body = Self::completion_fields(n_predict, sampling, n_probs, post_sampling_probs);
        body.insert("prompt".into(), prompt);
        body
    }

    /// Everything of a `/completion` body but its prompt, for the requests whose prompt
    /// [`LlamaServer::complete_body`] writes (whole, or after a slot's cached prefix).
    fn completion_fields(
        n_predict: usize,
        sampling: &Sampling,
        n_probs: usize,
        post_sampling_probs: bool,
    ) -> serde_json::Map<String, Value> {
        let mut body = serde_json::Map::new();
        body.insert("n_predict".into(), json!(n_predict));
        body.insert("cache_prompt".into(), json!(true));
        body.insert("return_tokens".into(), json!(true));
        body.insert("n_probs".into(), json!(n_probs));
        body.insert("post_sampling_probs".into(), json!(post_sampling_probs));
        // The proxy applies stop strings and EOS itself; the server must not add text of its own.
        body.insert("ignore_eos".into(), json!(false));
        sampling.write_fields(&mut body);
        // A greedy answer does not depend on the seed, but without one every sampler the request
        // builds draws its seed from `std::random_device`: ~0.1 ms a request on the CPU machine
        // (wall 2.45 against 2.57 ms, three alternating runs), and a round makes two.
        if sampling.is_greedy() && sampling.seed.is_none() {
            body.insert("seed".into(), json!(GREEDY_SEED));
        }
        body.insert("response_fields".into(), json!(COMPLETION_FIELDS));
        body
    }

    /// A verification request of the proxy's rounds: the target's own draft model (a target
    /// paired natively, `-md`) must do nothing for it. With the bundled patch, `speculative.n_max`
    /// 0 also keeps the draft model from following the request's tokens, which costs round trips
    /// per token when that model sits on a remote rpc-server; servers without a draft model, and
    /// stock servers (which ignore the field), are unaffected.
    fn no_native_drafting(body: &mut serde_json::Map<String, Value>) {
        body.insert("speculative.n_max".into(), json!(0));
    }

    /// Generate up to `n_predict` tokens after `prompt` (the draft's proposal).
    pub async fn complete(
        &self,
        prompt: &[TokenId],
        n_predict: usize,
        sampling: &Sampling,
    ) -> Result<Completion, BackendError> {
        let body = Self::completion_body(json!(prompt), n_predict, sampling, 0, false);
        self.ep.post_json("/completion", &body).await
    }

    /// A draft of up to `n_predict` greedy tokens after `prompt`, ended early after a token the
    /// model gave less than `opts.p_min` probability (`stop_p_min`, the bundled patch 0004; a
    /// stock server ignores the field and drafts `n_predict` tokens; `p_min` 0 sends no field),
    /// sampled on the server's device when `opts.backend_sampling` (stock llama-server).
    pub async fn draft(
        &self,
        prompt: &[TokenId],
        n_predict: usize,
        opts: DraftOptions,
    ) -> Result<Completion, BackendError> {
        let mut body = Self::completion_fields(n_predict, &Sampling::greedy(), 0, false);
        if opts.p_min > 0.0 {
            body.insert("stop_p_min".into(), json!(opts.p_min));
        }
        if opts.backend_sampling {
            body.insert("backend_sampling".into(), json!(true));
        }
        self.complete_body(prompt, body).await
    }

    /// One-pass verification (needs the bundled patch, see [`Capabilities::draft_tokens`]): the
    /// server evaluates the prompt's uncached tail and `draft` in one decode, accepts the longest
    /// prefix its own sampler agrees with, and returns those tokens plus the one it samples next.
    pub async fn verify_draft(
        &self,
        prompt: &[TokenId],
        draft: &[TokenId],
        sampling: &Sampling,
        n_probs: usize,
    ) -> Result<Completion, BackendError> {
        let mut body = Self::completion_fields(draft.len() + 1, sampling, n_probs, false);
        body.insert("draft_tokens".into(), json!(draft));
        // Each returned token's text (a patched server that predates the field ignores it, and
        // the engine then learns the text as `engine::pieces` says).
        body.insert("return_pieces".into(), json!(true));
        Self::no_native_drafting(&mut body);
        self.complete_body(prompt, body).await
    }

    /// How many tokens the server's own speculation drafted for `n_predict` greedy tokens after
    /// `prompt` when the request says `speculative.n_max = n_max` (`timings.draft_n`). A server
    /// that honours per-request steering drafts nothing at `n_max` 0 (stock llama.cpp ignores the
    /// field): this measures the effect, not the field.
    pub async fn drafted_with_n_max(
        &self,
        prompt: &[TokenId],
        n_predict: usize,
        n_max: usize,
    ) -> Result<u64, BackendError> {
        let mut body =
            Self::completion_body(json!(prompt), n_predict, &Sampling::greedy(), 0, false);
        body.insert("speculative.n_max".into(), json!(n_max));
        body.insert("speculative.n_min".into(), json!(0));
        let c: Completion = self.ep.post_json("/completion", &body).await?;
        Ok(c.timings.and_then(|t| t.draft_n).unwrap_or(0))
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
        let mut body = Self::completion_body(json!(prompts), 1, sampling, n_probs, post);
        Self::no_native_drafting(&mut body);
        let v: Value = self.ep.post_json("/completion", &body).await?;
        let results: Vec<Completion> = match v {
            Value::Array(items) => items
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .map_err(|e| BackendError::Malformed {
                    server: self.ep.server(),
                    path: "/completion".into(),
                    detail: e.to_string(),
                })?,
            single @ Value::Object(_) => {
                vec![
                    serde_json::from_value(single).map_err(|e| BackendError::Malformed {
                        server: self.ep.server(),
                        path: "/completion".into(),
                        detail: e.to_string(),
                    })?,
                ]
            }
            other => {
                return Err(BackendError::Malformed {
                    server: self.ep.server(),
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
                server: self.ep.server(),
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
        // No `n_probs`: the stream's text comes from each event's `content`, so candidates would
        // be computed (a sort of the vocabulary per token) and sent for nothing.
        let mut body = Self::completion_body(json!(prompt), n_predict, sampling, 0, false);
        body.insert("stream".into(), json!(true));
        // The whole final event: `response_fields` filters it (not the others), and a stream's
        // `stop` and `tokens_predicted` are not among a completion's fields. One per stream.
        body.remove("response_fields");
        // A target paired natively with its own draft: how many tokens its speculation may draft
        // for this request (0 turns it off).
        if let Some(n) = native_draft_tokens {
            body.insert("speculative.n_max".into(), json!(n));
            body.insert("speculative.n_min".into(), json!(0));
        }
        let path = "/completion";
        // No overall timeout on a stream: it lasts as long as the generation. Stalls are caught by
        // the per-event idle timeout below.
        // llama-server closes the connection after a streamed reply: don't return it to the pool.
        let resp = self
            .ep
            .send(path, |c| {
                c.post(self.ep.url(path))
                    .header(reqwest::header::CONNECTION, "close")
                    .json(&body)
            })
            .await?;
        let role = self.ep.role();
        let idle = self.ep.timeout();
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
        self.ep
            .send_raw_head_within(path, |c| {
                let req = c.post(self.ep.url(path)).json(body);
                if streamed {
                    req.header(reqwest::header::CONNECTION, "close")
                } else {
                    req
                }
            })
            .await
    }

    /// Send any request to the server as the client sent it (see [`super::Backend::forward_raw`]),
    /// with the same retry and restart wait as the passthrough.
    pub async fn forward_raw(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, BackendError> {
        self.ep
            .send_raw_head_within(path_and_query, |c| {
                self.ep
                    .raw_request(c, &method, path_and_query, content_type, &body)
            })
            .await
    }

    /// Read one counter from the server's Prometheus `/metrics` (needs `--metrics`).
    pub async fn metric(&self, name: &str) -> Result<f64, BackendError> {
        let path = "/metrics";
        let resp = self
            .ep
            .send_once(path, |c| {
                c.get(self.ep.url(path)).timeout(self.ep.timeout())
            })
            .await?;
        let resp = self.ep.check_status(path, resp).await?;
        let text = resp.text().await.map_err(|e| self.ep.send_error(path, e))?;
        parse_metric(&text, name).ok_or_else(|| BackendError::Malformed {
            server: self.ep.server(),
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

/// The seed of greedy requests: any fixed value but llama.cpp's "draw one" (`0xFFFFFFFF`).
const GREEDY_SEED: u32 = 0;

/// The reply fields a [`Completion`] reads: sent as `response_fields`, so the server leaves out the
/// rest — above all `prompt`, the whole context's text (18 KB at 3000 tokens, against 0.4 KB for
/// these), and the bundled patch 0005 then skips detokenizing it. A server without the field
/// (older than llama.cpp's `response_fields`) sends everything, which parses the same.
pub const COMPLETION_FIELDS: &[&str] = &[
    "tokens",
    "content",
    "stop_type",
    "completion_probabilities",
    "pieces",
    "timings",
    "id_slot",
    "tokens_evaluated",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_requests_carry_a_fixed_seed_and_sampled_ones_their_own_or_none() {
        let seed = |s: &Sampling| {
            let body = LlamaServer::completion_body(json!([1, 2]), 4, s, 0, false);
            body.get("seed").cloned().unwrap_or(Value::Null)
        };
        assert_eq!(seed(&Sampling::greedy()), json!(GREEDY_SEED));
        let sampled = Sampling {
            temperature: 0.8,
            ..Sampling::default()
        };
        assert_eq!(
            seed(&sampled),
            Value::Null,
            "the server draws a seed per request"
        );
        let seeded = Sampling {
            seed: Some(42),
            ..sampled
        };
        assert_eq!(seed(&seeded), json!(42));
        let server_default = Sampling {
            server_temperature: true,
            ..Sampling::default()
        };
        assert_eq!(seed(&server_default), Value::Null, "not known to be greedy");
    }

    /// Every field a `Completion` reads must be listed: one left out would arrive as its default
    /// (no pieces, no timings) without any error. llama-server keeps the listed top-level fields
    /// (`json_get_nested_values`); the filtered reply must parse as the whole one does.
    #[test]
    fn the_listed_reply_fields_are_all_a_completion_reads() {
        let whole = json!({
            "index": 0, "content": "Hi", "tokens": [5, 6], "id_slot": 0, "stop": true,
            "model": "m", "tokens_predicted": 2, "tokens_evaluated": 3,
            "generation_settings": {"n_predict": 2}, "prompt": "a long context", "has_new_line": false,
            "truncated": false, "stop_type": "limit", "stopping_word": "", "tokens_cached": 4,
            "timings": {"prompt_n": 1, "prompt_ms": 1.0, "predicted_n": 2, "predicted_ms": 2.0,
                        "draft_n": 3, "draft_n_accepted": 1},
            "completion_probabilities": [{"id": 5, "token": "H", "logprob": -0.1, "bytes": [72],
                                          "top_logprobs": [{"id": 5, "token": "H", "logprob": -0.1, "bytes": [72]}]}],
            "pieces": ["H", [105]],
        });
        let body = LlamaServer::completion_body(json!([1]), 2, &Sampling::greedy(), 0, false);
        let fields: Vec<String> = serde_json::from_value(body["response_fields"].clone()).unwrap();
        let filtered: serde_json::Map<String, Value> = fields
            .iter()
            .filter_map(|f| whole.get(f).map(|v| (f.clone(), v.clone())))
            .collect();
        let parse = |v: Value| format!("{:?}", serde_json::from_value::<Completion>(v).unwrap());
        assert_eq!(parse(Value::Object(filtered)), parse(whole.clone()));
        assert!(!fields.iter().any(|f| f == "prompt"), "{fields:?}");
    }

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
}
