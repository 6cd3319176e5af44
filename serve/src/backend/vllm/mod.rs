//! vLLM's OpenAI-compatible server (`vllm serve`), as a target or a draft.
//!
//! Only documented endpoints: `/v1/completions` with token-id prompts, `/tokenize` (text, or chat
//! `messages` rendered with the server's own template), `/detokenize`, `/v1/models`, `/version`,
//! `/health`, and `/tokenizer_info` (needs `--enable-tokenizer-info-endpoint`; it names the
//! end-of-sequence token). See `notes/speculation.md` §B.
//!
//! Verification, the part that decides exactness:
//! - **greedy**: ONE request whose prompt is context + k draft tokens, `max_tokens: 1`,
//!   `prompt_logprobs: 1`, `temperature: 0`. `prompt_logprobs[i]` holds the rank-1 token at every
//!   prompt position, i.e. the target's argmax after each prefix, and the generated token is its
//!   argmax after the whole block (the bonus). vLLM skips the prefix cache for requests with
//!   prompt log-probabilities (it recomputes the whole prompt), so these values are never stale
//!   cached ones — exact, at the price of a full prefill per round.
//! - **sampling**: the several-prompts form (`prompt: [ctx, ctx+d1, …]`, `max_tokens: 1`, the
//!   request's sampler, no seed so positions draw independently): each result is the server's own
//!   sample, exact for any sampler vLLM implements. Raw `prompt_logprobs` are pre-sampler values,
//!   so they are never used to sample.

mod verify;

#[cfg(test)]
use verify::argmax;

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{truncate, Endpoint};
use super::sse::sse_events;
use super::types::{Completion, Role, SampledToken, Sampling, StreamEvent, TokenId};
use super::BackendError;

/// A `vllm serve` reachable over HTTP (persistent connection pool, per-call timeouts).
#[derive(Debug, Clone)]
pub struct VllmServer {
    ep: Endpoint,
}

/// What a vLLM server tells about itself.
#[derive(Debug, Clone)]
pub struct VllmFacts {
    pub model: String,
    pub version: String,
    pub max_model_len: usize,
    /// The end-of-sequence token's text from `/tokenizer_info`; `None` when the endpoint is off.
    pub eos_token: Option<String>,
}

/// One entry of `prompt_logprobs[i]` (keyed by token id in the JSON).
#[derive(Debug, Clone, Deserialize)]
struct PromptLogprob {
    #[serde(default)]
    logprob: Option<f64>,
    #[serde(default)]
    rank: Option<u64>,
    #[serde(default)]
    decoded_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CompletionChoice {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    text: String,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    stop_reason: Option<Value>,
    #[serde(default)]
    token_ids: Option<Vec<TokenId>>,
    #[serde(default)]
    prompt_logprobs: Option<Vec<Option<HashMap<String, PromptLogprob>>>>,
}

#[derive(Debug, Deserialize)]
struct CompletionResponse {
    #[serde(default)]
    choices: Vec<CompletionChoice>,
}

/// Exact bytes of a token as vLLM decoded it, when they can be trusted: empty text or a
/// replacement character means the token is part of a multi-byte character (the engine then
/// resolves it with `/detokenize` together with its neighbours).
fn trusted_bytes(text: &str) -> Vec<u8> {
    if text.contains('\u{FFFD}') {
        Vec::new()
    } else {
        text.as_bytes().to_vec()
    }
}

/// A result with the token id and (if trustworthy) its bytes, in the shape the engine reads.
fn completion_for(id: TokenId, text: &str, eos: bool) -> Completion {
    let bytes = trusted_bytes(text);
    Completion {
        tokens: vec![id],
        content: text.into(),
        stop_type: if eos { "eos".into() } else { String::new() },
        // No details when the bytes are unknown: the engine then resolves the text itself.
        completion_probabilities: if bytes.is_empty() {
            Vec::new()
        } else {
            vec![SampledToken {
                id,
                bytes,
                top_probs: Vec::new(),
                top_logprobs: Vec::new(),
            }]
        },
        pieces: Vec::new(),
        timings: None,
        ..Completion::default()
    }
}

/// `finish_reason: "stop"` without a stop string or stop token id means end of sequence.
fn ended_by_eos(choice: &CompletionChoice) -> bool {
    choice.finish_reason.as_deref() == Some("stop")
        && matches!(choice.stop_reason, None | Some(Value::Null))
}

impl VllmServer {
    pub fn new(role: Role, base_url: &str, timeout: Duration) -> Result<Self, BackendError> {
        Ok(VllmServer {
            ep: Endpoint::new(role, base_url, timeout, Duration::ZERO)?,
        })
    }

    /// The server's HTTP side: role, base URL, health (shared by both server kinds).
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// The server's version (`/version`, for audits).
    pub async fn version(&self) -> Result<String, BackendError> {
        let v: Value = self.ep.get_json("/version").await?;
        v.get("version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.ep.malformed("/version", "no `version` in the reply"))
    }

    /// Model id, context length, version and (if the endpoint is on) the EOS token's text.
    pub async fn facts(&self) -> Result<VllmFacts, BackendError> {
        let models: Value = self.ep.get_json("/v1/models").await?;
        let first = models
            .get("data")
            .and_then(|d| d.get(0))
            .ok_or_else(|| self.ep.malformed("/v1/models", "no model listed"))?;
        let model = first
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| self.ep.malformed("/v1/models", "the model has no `id`"))?
            .to_string();
        let max_model_len = first
            .get("max_model_len")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                self.ep
                    .malformed("/v1/models", "the model has no `max_model_len`")
            })? as usize;
        let version = self.version().await?;
        // `/tokenizer_info` exists only with --enable-tokenizer-info-endpoint (404 otherwise).
        let eos_token = match self.ep.get_json::<Value>("/tokenizer_info").await {
            Ok(info) => eos_text(&info),
            Err(BackendError::Status { status: 404, .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(VllmFacts {
            model,
            version,
            max_model_len,
            eos_token,
        })
    }

    /// Tokenize text as vLLM's own completion endpoint would (`add_special_tokens` adds BOS where
    /// the model wants one).
    pub async fn tokenize(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<TokenId>, BackendError> {
        let v: Value = self
            .ep
            .post_json(
                "/tokenize",
                &json!({ "prompt": text, "add_special_tokens": add_special }),
            )
            .await?;
        self.tokens_of("/tokenize", &v)
    }

    /// Render chat messages with the server's own chat template and tokenize them, in one call.
    pub async fn tokenize_chat(
        &self,
        messages: &Value,
        template_kwargs: Option<&Value>,
    ) -> Result<Vec<TokenId>, BackendError> {
        let mut body = json!({ "messages": messages, "add_generation_prompt": true });
        if let Some(kwargs) = template_kwargs {
            body["chat_template_kwargs"] = kwargs.clone();
        }
        let v: Value = self.ep.post_json("/tokenize", &body).await?;
        self.tokens_of("/tokenize", &v)
    }

    fn tokens_of(&self, path: &str, v: &Value) -> Result<Vec<TokenId>, BackendError> {
        serde_json::from_value(v.get("tokens").cloned().unwrap_or(Value::Null)).map_err(|e| {
            self.ep
                .malformed(path, format!("no token list in the reply: {e}"))
        })
    }

    /// The text of several tokens together.
    pub async fn detokenize(&self, tokens: &[TokenId]) -> Result<String, BackendError> {
        let v: Value = self
            .ep
            .post_json("/detokenize", &json!({ "tokens": tokens }))
            .await?;
        v.get("prompt")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| self.ep.malformed("/detokenize", "no `prompt` in the reply"))
    }

    fn completion_body(prompt: Value, max_tokens: usize, sampling: &Sampling) -> Value {
        let mut body = serde_json::Map::new();
        body.insert("prompt".into(), prompt);
        body.insert("max_tokens".into(), json!(max_tokens));
        body.insert("return_token_ids".into(), json!(true));
        // The proxy applies stop strings itself; special tokens stay out of the text as in
        // vLLM's own answers.
        sampling.write_fields(&mut body);
        Value::Object(body)
    }

    async fn completions(&self, body: &Value) -> Result<CompletionResponse, BackendError> {
        self.ep.post_json("/v1/completions", body).await
    }

    /// Generate up to `n` tokens after `prompt` (the draft's proposal). Only `tokens` is filled.
    pub async fn complete(
        &self,
        prompt: &[TokenId],
        n: usize,
        sampling: &Sampling,
    ) -> Result<Completion, BackendError> {
        let path = "/v1/completions";
        let resp = self
            .completions(&Self::completion_body(json!(prompt), n, sampling))
            .await?;
        let choice = resp
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| self.ep.malformed(path, "no choices in the reply"))?;
        let tokens = choice.token_ids.clone().ok_or_else(|| {
            self.ep
                .malformed(path, "no `token_ids` (a vLLM without return_token_ids?)")
        })?;
        if tokens.len() > n {
            return Err(self
                .ep
                .malformed(path, format!("{} tokens for max_tokens {n}", tokens.len())));
        }
        Ok(Completion {
            tokens,
            content: String::new(),
            stop_type: if ended_by_eos(&choice) {
                "eos".into()
            } else {
                String::new()
            },
            completion_probabilities: Vec::new(),
            pieces: Vec::new(),
            timings: None,
            ..Completion::default()
        })
    }

    /// Stream up to `n` tokens after `prompt`, sampled by vLLM itself (target-only stretches), in
    /// the engine's event shape: one event per chunk with its token ids, then a final stop event.
    pub async fn stream(
        &self,
        prompt: &[TokenId],
        n: usize,
        sampling: &Sampling,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<StreamEvent, BackendError>> + Send>>, BackendError>
    {
        let path = "/v1/completions";
        let mut body = Self::completion_body(json!(prompt), n, sampling);
        if let Value::Object(m) = &mut body {
            m.insert("stream".into(), json!(true));
        }
        // No overall timeout: the stream lasts as long as the generation; stalls are caught by the
        // idle timeout of the event decoder.
        let resp = self
            .ep
            .send(path, |c| c.post(self.ep.url(path)).json(&body))
            .await?;
        let role = self.ep.role();
        let chunks = sse_events::<Value>(role, self.ep.timeout(), resp.bytes_stream());
        Ok(Box::pin(to_stream_events(role, chunks)))
    }

    /// Send an OpenAI request to the server for the proxy to relay (passthrough). vLLM refuses
    /// model names it does not serve, and clients use the pairing's name: the name is dropped, so
    /// vLLM uses its served model.
    pub async fn forward(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, BackendError> {
        let mut body = body.clone();
        if let Value::Object(m) = &mut body {
            m.remove("model");
        }
        self.ep
            .send_once_head_within(path, |c| c.post(self.ep.url(path)).json(&body))
            .await
    }
}

impl VllmServer {
    /// Send any request to vLLM as the client sent it (see [`super::Backend::forward_raw`]).
    pub async fn forward_raw(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, BackendError> {
        self.ep
            .send_once_head_within(path_and_query, |c| {
                self.ep
                    .raw_request(c, &method, path_and_query, content_type, &body)
            })
            .await
    }
}

/// The EOS token's text from a `/tokenizer_info` reply (a string, or an added-token object).
fn eos_text(info: &Value) -> Option<String> {
    match info.get("eos_token")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        _ => None,
    }
}

/// Turn vLLM's streamed completion chunks into the engine's events. The chunk with
/// `finish_reason` is followed by a stop event; a stream that ends without one is an error (a
/// vLLM that died mid-answer), never a silently short answer.
fn to_stream_events(
    role: Role,
    chunks: impl Stream<Item = Result<Value, BackendError>> + Send + 'static,
) -> impl Stream<Item = Result<StreamEvent, BackendError>> + Send + 'static {
    let path = "/v1/completions (stream)";
    let malformed = move |detail: String| BackendError::Malformed {
        server: role.as_str(),
        path: path.into(),
        detail,
    };
    futures::stream::unfold(
        (Box::pin(chunks), 0usize, false),
        move |(mut chunks, mut predicted, done)| async move {
            if done {
                return None;
            }
            loop {
                let chunk = match chunks.next().await {
                    None => {
                        let err = malformed("the stream ended without a finish_reason".into());
                        return Some((vec![Err(err)], (chunks, predicted, true)));
                    }
                    Some(Err(e)) => return Some((vec![Err(e)], (chunks, predicted, true))),
                    Some(Ok(v)) => v,
                };
                if let Some(err) = chunk.get("error") {
                    let err = malformed(format!("vLLM reported an error: {err}"));
                    return Some((vec![Err(err)], (chunks, predicted, true)));
                }
                let choices = match chunk.get("choices") {
                    Some(Value::Array(c)) => c,
                    _ => {
                        let err = malformed(format!(
                            "a chunk without `choices`: {}",
                            truncate(&chunk.to_string(), 200)
                        ));
                        return Some((vec![Err(err)], (chunks, predicted, true)));
                    }
                };
                // The usage-only chunk has no choices.
                let Some(first) = choices.first() else {
                    continue;
                };
                let choice: CompletionChoice = match serde_json::from_value(first.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        let err = malformed(format!("unreadable chunk: {e}"));
                        return Some((vec![Err(err)], (chunks, predicted, true)));
                    }
                };
                let Some(ids) = choice.token_ids.clone() else {
                    let err = malformed("a chunk without `token_ids`".into());
                    return Some((vec![Err(err)], (chunks, predicted, true)));
                };
                let mut events = Vec::new();
                if !ids.is_empty() {
                    predicted += ids.len();
                    events.push(Ok(StreamEvent {
                        content: choice.text.clone(),
                        tokens: ids,
                        tokens_predicted: predicted,
                        completion_probabilities: Vec::new(),
                        stop: false,
                        stop_type: String::new(),
                        timings: None,
                    }));
                }
                let finished = choice.finish_reason.is_some();
                if finished {
                    events.push(Ok(StreamEvent {
                        content: String::new(),
                        tokens: Vec::new(),
                        tokens_predicted: predicted,
                        completion_probabilities: Vec::new(),
                        stop: true,
                        stop_type: if ended_by_eos(&choice) {
                            "eos".into()
                        } else {
                            "limit".into()
                        },
                        timings: None,
                    }));
                }
                if events.is_empty() {
                    continue;
                }
                return Some((events, (chunks, predicted, finished)));
            }
        },
    )
    .flat_map(futures::stream::iter)
}

#[cfg(test)]
mod tests;
