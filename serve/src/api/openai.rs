//! The OpenAI request shapes the proxy accepts, and how they become engine requests.
//!
//! Anything the engine drives exactly (prompt, sampling temperature/top-k/top-p/min-p, seed, stop,
//! max tokens, streaming) is parsed into types. Anything else that changes the output (tools,
//! penalties, grammars, logprobs, images…) is not guessed at: the request is forwarded to the target
//! unchanged, so the answer is still the target's own.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::reasoning;
use crate::backend::types::{Sampling, TokenId};
pub use crate::engine::Plan;
use crate::engine::{ForwardReason, GenerationRequest, PromptInput};

/// Which endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields of `/v1/completions` and `/v1/chat/completions` bodies the proxy reads itself.
#[derive(Debug, Deserialize)]
pub struct OpenAiRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub prompt: Option<Value>,
    #[serde(default)]
    pub messages: Option<Value>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub min_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<i64>,
    /// vLLM's extension: also return the generated token ids (the exactness tests use it).
    #[serde(default)]
    pub return_token_ids: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Fields that never change the generated tokens.
const INERT_FIELDS: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "cache_prompt",
];

/// llama.cpp's default temperature: the fallback for a request that sets none when the target
/// does not say its own (the engine takes the target's from its probed facts).
const DEFAULT_TEMPERATURE: f64 = 0.8;

/// Parse a JSON body, naming the offending field in the error.
pub fn parse(body: &[u8]) -> Result<(Value, OpenAiRequest), ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}. Send a JSON object."),
            None,
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    }
    let request: OpenAiRequest = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid(
            format!("Invalid value for `{path}`: {}", e.inner()),
            Some(&path),
        )
    })?;
    Ok((value, request))
}

/// Whether an extra field leaves the generated tokens as the engine would make them: one that
/// never changes them, one at its default (`response_format: {"type": "text"}` is the default
/// format), or `chat_template_kwargs`, which the engine passes to the target's template.
fn is_inert(key: &str, v: &Value) -> bool {
    INERT_FIELDS.contains(&key)
        || is_default_value(v)
        || key == "chat_template_kwargs" && v.is_object()
        || key == "response_format" && v.as_object().is_some_and(is_text_format)
}

/// `{"type": "text"}`: OpenAI's default response format, plain text.
fn is_text_format(format: &Map<String, Value>) -> bool {
    format.len() == 1 && format.get("type").and_then(Value::as_str) == Some("text")
}

/// A message content the target's template renders as text: a string, or an array of text
/// parts (`[{"type": "text", "text": "…"}]`, as the SDKs send). The engine hands the parts to
/// the target's template unchanged, so they render exactly as on its own chat endpoint.
fn is_text_content(content: &Value) -> bool {
    match content {
        Value::String(_) => true,
        Value::Array(parts) => parts.iter().all(|p| {
            p.as_object().is_some_and(|p| {
                p.get("type").and_then(Value::as_str) == Some("text")
                    && p.get("text").is_some_and(Value::is_string)
                    && p.keys().all(|k| k == "type" || k == "text")
            })
        }),
        _ => false,
    }
}

fn is_default_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

impl OpenAiRequest {
    pub fn wants_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Check the request and decide how to serve it.
    pub fn plan(&self, endpoint: Endpoint) -> Result<Plan, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid(
                    format!("`n` = {n} is not supported: Tightwad returns one choice per request; send several requests instead."),
                    Some("n"),
                ));
            }
        }
        let max_tokens = match endpoint {
            Endpoint::ChatCompletions => self.max_completion_tokens.or(self.max_tokens),
            Endpoint::Completions => self.max_tokens,
        };
        if let Some(m) = max_tokens {
            if m < 0 {
                return Err(ApiError::invalid(
                    format!("`max_tokens` must be 0 or more, got {m}."),
                    Some("max_tokens"),
                ));
            }
        }
        let temperature = self.temperature.unwrap_or(DEFAULT_TEMPERATURE);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                format!("`temperature` must be between 0 and 2, got {temperature}."),
                Some("temperature"),
            ));
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::invalid(
                    format!("`top_p` must be between 0 and 1, got {p}."),
                    Some("top_p"),
                ));
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(ApiError::invalid(
                    format!("`min_p` must be between 0 and 1, got {p}."),
                    Some("min_p"),
                ));
            }
        }
        let stop = parse_stop(self.stop.as_ref())?;
        let prompt = match endpoint {
            Endpoint::Completions => {
                if self.messages.is_some() {
                    return Err(ApiError::invalid(
                        "`messages` belongs to /v1/chat/completions; /v1/completions takes `prompt`.",
                        Some("messages"),
                    ));
                }
                parse_prompt(self.prompt.as_ref())?
            }
            Endpoint::ChatCompletions => {
                if self.prompt.is_some() {
                    return Err(ApiError::invalid(
                        "`prompt` belongs to /v1/completions; /v1/chat/completions takes `messages`.",
                        Some("prompt"),
                    ));
                }
                if let Some(reason) = check_messages(self.messages.as_ref())? {
                    return Ok(Plan::Forward(reason));
                }
                let reasoning_format =
                    match reasoning::requested_format(self.extra.get("reasoning_format")) {
                        Ok(format) => format,
                        Err(reason) => return Ok(Plan::Forward(reason)),
                    };
                PromptInput::Chat {
                    messages: self.messages.clone().unwrap_or(Value::Null),
                    template_kwargs: self
                        .extra
                        .get("chat_template_kwargs")
                        .filter(|v| !is_default_value(v))
                        .cloned(),
                    reasoning_format,
                }
            }
        };
        if let Some(field) = self
            .extra
            .iter()
            .find(|(k, v)| {
                // A chat's `reasoning_format` was read above.
                let read =
                    endpoint == Endpoint::ChatCompletions && k.as_str() == "reasoning_format";
                !(read || is_inert(k, v))
            })
            .map(|(k, _)| k)
        {
            return Ok(Plan::Forward(ForwardReason::field(field)));
        }
        let top_k = self.top_k.map(|k| k.clamp(0, i32::MAX as i64) as i32);
        Ok(Plan::Generate(GenerationRequest {
            prompt,
            max_tokens: max_tokens.map(|m| m as usize),
            sampling: Sampling {
                temperature: temperature as f32,
                top_k,
                top_p: self.top_p.map(|p| p as f32),
                min_p: self.min_p.map(|p| p as f32),
                seed: self.seed.map(|s| s as u64),
                server_temperature: false,
            },
            default_temperature: self.temperature.is_none(),
            stop,
        }))
    }
}

fn parse_stop(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "`stop` must be a string or an array of up to 16 strings.",
            Some("stop"),
        )
    };
    match stop {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.len() <= 16 => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn parse_prompt(prompt: Option<&Value>) -> Result<PromptInput, ApiError> {
    let one_prompt_only = || {
        ApiError::invalid(
            "Batched prompts are not supported: send one prompt per request.",
            Some("prompt"),
        )
    };
    let bad = || {
        ApiError::invalid(
            "`prompt` must be a string, an array of token ids, or an array holding one of those.",
            Some("prompt"),
        )
    };
    let tokens = |items: &[Value]| -> Option<Vec<TokenId>> {
        items
            .iter()
            .map(|v| v.as_u64().and_then(|n| TokenId::try_from(n).ok()))
            .collect()
    };
    match prompt {
        None => Err(ApiError::invalid("`prompt` is required.", Some("prompt"))),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(items)) => match items.as_slice() {
            [] => Err(bad()),
            [Value::String(s)] => Ok(PromptInput::Text(s.clone())),
            [Value::Array(inner)] => tokens(inner).map(PromptInput::Tokens).ok_or_else(bad),
            [Value::String(_) | Value::Array(_), _, ..] => Err(one_prompt_only()),
            all => tokens(all).map(PromptInput::Tokens).ok_or_else(bad),
        },
        Some(_) => Err(bad()),
    }
}

/// Validate chat messages. `Ok(Some(reason))`: valid, but only the target can render them.
fn check_messages(messages: Option<&Value>) -> Result<Option<ForwardReason>, ApiError> {
    let Some(Value::Array(items)) = messages else {
        return Err(ApiError::invalid(
            "`messages` is required: an array of {\"role\", \"content\"} objects.",
            Some("messages"),
        ));
    };
    if items.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must hold at least one message.",
            Some("messages"),
        ));
    }
    let mut passthrough = None;
    for (i, m) in items.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let Some(role) = role else {
            return Err(ApiError::invalid(
                format!("`messages[{i}].role` must be a string."),
                Some(&format!("messages[{i}].role")),
            ));
        };
        if !matches!(
            role,
            "system" | "user" | "assistant" | "tool" | "developer" | "function"
        ) {
            return Err(ApiError::invalid(
                format!("`messages[{i}].role` is {role:?}; use system, user, assistant or tool."),
                Some(&format!("messages[{i}].role")),
            ));
        }
        match m.get("content") {
            Some(c) if is_text_content(c) => {}
            _ => passthrough = Some(ForwardReason::NonTextContent),
        }
    }
    Ok(passthrough)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(body: &str, endpoint: Endpoint) -> Result<Plan, ApiError> {
        let (_, r) = parse(body.as_bytes())?;
        r.plan(endpoint)
    }

    #[test]
    fn a_plain_chat_request_goes_through_the_engine() {
        let p = plan(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"max_tokens":5}"#,
            Endpoint::ChatCompletions,
        )
        .expect("valid");
        let Plan::Generate(g) = p else {
            panic!("expected the engine")
        };
        assert_eq!(g.max_tokens, Some(5));
        assert!(g.sampling.is_greedy());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = plan(
            r#"{"prompt":"x","max_tokens":"ten"}"#,
            Endpoint::Completions,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn n_above_one_and_negative_max_tokens_are_refused() {
        assert_eq!(
            plan(r#"{"prompt":"x","n":2}"#, Endpoint::Completions)
                .unwrap_err()
                .param
                .as_deref(),
            Some("n")
        );
        assert_eq!(
            plan(r#"{"prompt":"x","max_tokens":-1}"#, Endpoint::Completions)
                .unwrap_err()
                .param
                .as_deref(),
            Some("max_tokens")
        );
    }

    #[test]
    fn features_the_engine_does_not_drive_are_passed_through() {
        let p = plan(
            r#"{"prompt":"x","presence_penalty":0.5}"#,
            Endpoint::Completions,
        )
        .expect("valid");
        assert!(matches!(p, Plan::Forward(_)));
        let p = plan(
            r#"{"prompt":"x","presence_penalty":0,"user":"bob"}"#,
            Endpoint::Completions,
        )
        .expect("valid");
        assert!(matches!(p, Plan::Generate(_)));
    }

    /// What the SDKs send by default reaches the engine: text parts, the default response
    /// format, template kwargs (handed to the target's template).
    #[test]
    fn the_requests_sdks_send_are_generated_by_the_engine() {
        let p = plan(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":" there"}]}],
                "response_format":{"type":"text"},"chat_template_kwargs":{"enable_thinking":false}}"#,
            Endpoint::ChatCompletions,
        )
        .expect("valid");
        let Plan::Generate(g) = p else {
            panic!("expected the engine, got {p:?}")
        };
        let PromptInput::Chat {
            messages,
            template_kwargs,
            ..
        } = g.prompt
        else {
            panic!("a chat prompt")
        };
        assert_eq!(messages[0]["content"][1]["text"], " there");
        assert_eq!(
            template_kwargs,
            Some(serde_json::json!({"enable_thinking": false}))
        );
        for body in [
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
        ] {
            assert!(
                matches!(plan(body, Endpoint::ChatCompletions), Ok(Plan::Forward(_))),
                "{body}"
            );
        }
    }

    /// A chat's known `reasoning_format` is the engine's (it splits the answer as the target
    /// would); an unknown one, or one on a completion, is the target's.
    #[test]
    fn a_known_reasoning_format_is_the_engines() {
        let chat = |f: &str| {
            format!(r#"{{"messages":[{{"role":"user","content":"x"}}],"reasoning_format":"{f}"}}"#)
        };
        assert!(matches!(
            plan(&chat("none"), Endpoint::ChatCompletions),
            Ok(Plan::Generate(_))
        ));
        for (body, endpoint) in [
            (chat("bogus"), Endpoint::ChatCompletions),
            (
                r#"{"prompt":"x","reasoning_format":"none"}"#.into(),
                Endpoint::Completions,
            ),
        ] {
            assert!(
                matches!(plan(&body, endpoint), Ok(Plan::Forward(ForwardReason::Field(f))) if f == "reasoning_format"),
                "{body}"
            );
        }
    }

    #[test]
    fn prompts_in_every_accepted_shape() {
        for body in [
            r#"{"prompt":"hi"}"#,
            r#"{"prompt":["hi"]}"#,
            r#"{"prompt":[1,2,3]}"#,
            r#"{"prompt":[[1,2,3]]}"#,
        ] {
            assert!(
                matches!(plan(body, Endpoint::Completions), Ok(Plan::Generate(_))),
                "{body}"
            );
        }
        for body in [
            r#"{"prompt":["a","b"]}"#,
            r#"{"prompt":[-1]}"#,
            r#"{"prompt":{}}"#,
            r#"{}"#,
        ] {
            assert!(plan(body, Endpoint::Completions).is_err(), "{body}");
        }
    }

    #[test]
    fn malformed_json_and_non_objects_are_refused() {
        assert!(parse(b"{not json").is_err());
        assert!(parse(b"[1,2]").is_err());
    }
}
