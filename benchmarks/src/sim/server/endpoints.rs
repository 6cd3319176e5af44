//! The simulated server's endpoints other than `/completion`: the llama-server-shaped error reply,
//! `/health`, `/props`, `/v1/models`, `/tokenize`, `/detokenize`, `/apply-template` (and the
//! simulation's chat template), the non-streamed `/v1/chat/completions` and `/metrics`. Apart from
//! `/completion` so that each file holds one concern.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::SimState;
use crate::clock;
use crate::sim::tokenizer::{self, TokenId, EOS_TEXT, N_VOCAB};

/// A llama-server-shaped error reply.
pub(super) struct SimHttpError {
    status: StatusCode,
    message: String,
}

impl SimHttpError {
    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        SimHttpError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for SimHttpError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.status.as_u16(),
            "message": self.message,
            "type": "invalid_request_error",
        }});
        (self.status, Json(body)).into_response()
    }
}

pub(super) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn props(State(s): State<Arc<SimState>>) -> Json<Value> {
    Json(json!({
        "total_slots": s.config.slots,
        "build_info": concat!("sim-", env!("CARGO_PKG_VERSION")),
        "model_path": s.config.model_name,
        "chat_template": "simulation: <|role|>\\ncontent\\n per message, then <|assistant|>\\n",
        "bos_token": tokenizer::BOS_TEXT,
        "eos_token": EOS_TEXT,
        "default_generation_settings": {"n_ctx": s.config.n_ctx},
    }))
}

pub(super) async fn models(State(s): State<Arc<SimState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": s.config.model_name,
        "object": "model",
        "owned_by": "llamacpp",
        "meta": {"vocab_type": 1, "n_vocab": N_VOCAB},
    }]}))
}

pub(super) async fn tokenize(Json(body): Json<Value>) -> Result<Json<Value>, SimHttpError> {
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| SimHttpError::bad_request("`content` (a string) is required"))?;
    let add_special = body
        .get("add_special")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let parse_special = body
        .get("parse_special")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let tokens = tokenizer::tokenize(content, add_special, parse_special);
    Ok(Json(json!({ "tokens": tokens })))
}

pub(super) async fn detokenize(Json(body): Json<Value>) -> Result<Json<Value>, SimHttpError> {
    let tokens = token_list(body.get("tokens").unwrap_or(&Value::Null))
        .ok_or_else(|| SimHttpError::bad_request("`tokens` (a list of token ids) is required"))?;
    Ok(Json(json!({ "content": tokenizer::detokenize(&tokens) })))
}

/// The simulation's chat template: `<|role|>\ncontent\n` per message, then `<|assistant|>\n`.
pub fn render_chat(messages: &Value) -> Result<String, String> {
    let list = messages
        .as_array()
        .ok_or_else(|| "`messages` must be a list".to_string())?;
    let mut out = String::new();
    for m in list {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        out.push_str(&format!("<|{role}|>\n{content}\n"));
    }
    out.push_str("<|assistant|>\n");
    Ok(out)
}

pub(super) async fn apply_template(Json(body): Json<Value>) -> Result<Json<Value>, SimHttpError> {
    let prompt = render_chat(body.get("messages").unwrap_or(&Value::Null))
        .map_err(SimHttpError::bad_request)?;
    Ok(Json(json!({ "prompt": prompt })))
}

pub(super) fn token_list(v: &Value) -> Option<Vec<TokenId>> {
    v.as_array()?
        .iter()
        .map(|t| t.as_u64().and_then(|n| TokenId::try_from(n).ok()))
        .collect()
}

/// OpenAI chat, non-streamed: what a client talking to the target directly gets. Same template,
/// same tokenizer, same greedy model and the same time per token as `/completion`.
pub(super) async fn chat_completions(
    State(s): State<Arc<SimState>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, SimHttpError> {
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return Err(SimHttpError::bad_request(
            "the simulation answers /v1/chat/completions without streaming only",
        ));
    }
    let rendered = render_chat(body.get("messages").unwrap_or(&Value::Null))
        .map_err(SimHttpError::bad_request)?;
    let prompt = tokenizer::tokenize(&rendered, true, true);
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(256) as usize;
    s.counters
        .completion_requests
        .fetch_add(1, Ordering::Relaxed);
    clock::sleep(s.config.request_overhead).await;
    let mut ctx = prompt.clone();
    for _ in 0..max_tokens {
        s.step(1).await;
        let next = s.config.speaker.next(&ctx);
        ctx.push(next);
    }
    let generated = &ctx[prompt.len()..];
    Ok(Json(json!({
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": 0,
        "model": s.config.model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": tokenizer::detokenize(generated)},
            "finish_reason": "length",
        }],
        "usage": {
            "prompt_tokens": prompt.len(),
            "completion_tokens": generated.len(),
            "total_tokens": prompt.len() + generated.len(),
        },
    })))
}

pub(super) async fn metrics(State(s): State<Arc<SimState>>) -> Response {
    let c = &s.counters;
    let text = format!(
        "# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n\
         # TYPE llamacpp:n_decode_total counter\n\
         llamacpp:n_decode_total {}\n\
         # HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n\
         # TYPE llamacpp:tokens_predicted_total counter\n\
         llamacpp:tokens_predicted_total {}\n",
        c.decodes.load(Ordering::Relaxed),
        c.tokens_predicted.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
