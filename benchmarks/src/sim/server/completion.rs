//! The simulated server's `/completion`: one prompt or a list of prompts (one batched decode per
//! step), answered whole or streamed as SSE events, with `completion_probabilities` on request.
//! Apart from the other endpoints because it is the one the proxy leans on and the largest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::endpoints::{token_list, SimHttpError};
use super::SimState;
use crate::clock;
use crate::sim::tokenizer::{self, TokenId};

/// `prompt` of `/completion`: a string, one token list, or a list of either.
fn parse_prompts(prompt: &Value) -> Result<(Vec<Vec<TokenId>>, bool), SimHttpError> {
    let one = |p: &Value| -> Result<Vec<TokenId>, SimHttpError> {
        match p {
            Value::String(s) => Ok(tokenizer::tokenize(s, true, true)),
            Value::Array(_) => token_list(p).ok_or_else(|| {
                SimHttpError::bad_request("a prompt must be a string or a list of token ids")
            }),
            _ => Err(SimHttpError::bad_request(
                "a prompt must be a string or a list of token ids",
            )),
        }
    };
    match prompt {
        Value::Array(items) if items.first().is_some_and(|x| x.is_array() || x.is_string()) => {
            let prompts = items.iter().map(one).collect::<Result<Vec<_>, _>>()?;
            Ok((prompts, true))
        }
        other => Ok((vec![one(other)?], false)),
    }
}

fn piece(id: TokenId) -> Value {
    let bytes = tokenizer::token_bytes(id);
    json!({
        "id": id,
        "token": String::from_utf8_lossy(&bytes),
        "bytes": bytes,
    })
}

/// `completion_probabilities` for one generated token: the model is certain of its choice.
fn probabilities(id: TokenId, post_sampling: bool) -> Value {
    let mut entry = piece(id);
    let mut top = piece(id);
    if post_sampling {
        top["prob"] = json!(1.0);
        entry["prob"] = json!(1.0);
        entry["top_probs"] = json!([top]);
    } else {
        top["logprob"] = json!(0.0);
        entry["logprob"] = json!(0.0);
        entry["top_logprobs"] = json!([top]);
    }
    entry
}

/// Options of one `/completion` request that shape its reply.
struct CompletionOptions {
    n_predict: usize,
    n_probs: usize,
    post_sampling: bool,
}

fn result_json(
    opts: &CompletionOptions,
    prompt_len: usize,
    tokens: &[TokenId],
    elapsed: Duration,
) -> Value {
    let mut v = json!({
        "content": tokenizer::detokenize(tokens),
        "tokens": tokens,
        "stop": true,
        "stop_type": "limit",
        "tokens_predicted": tokens.len(),
        "tokens_evaluated": prompt_len,
        "timings": {
            "prompt_n": prompt_len,
            "prompt_ms": 0.0,
            "predicted_n": tokens.len(),
            "predicted_ms": elapsed.as_secs_f64() * 1e3,
        },
    });
    if opts.n_probs > 0 {
        v["completion_probabilities"] = tokens
            .iter()
            .map(|&t| probabilities(t, opts.post_sampling))
            .collect();
    }
    v
}

pub(super) async fn completion(
    State(s): State<Arc<SimState>>,
    Json(body): Json<Value>,
) -> Result<Response, SimHttpError> {
    let (prompts, is_list) = parse_prompts(body.get("prompt").unwrap_or(&Value::Null))?;
    if prompts.is_empty() {
        return Err(SimHttpError::bad_request("empty prompt list"));
    }
    let n_predict = body
        .get("n_predict")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_i64)
        .unwrap_or(-1);
    // -1 means "until the context is full"; cap it so a mistaken request cannot run for hours.
    let n_predict = usize::try_from(n_predict).unwrap_or(4096);
    let opts = CompletionOptions {
        n_predict,
        n_probs: body.get("n_probs").and_then(Value::as_u64).unwrap_or(0) as usize,
        post_sampling: body
            .get("post_sampling_probs")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    let n_ctx = s.config.n_ctx as usize;
    if let Some(p) = prompts.iter().find(|p| p.len() + n_predict.min(1) > n_ctx) {
        return Err(SimHttpError::bad_request(format!(
            "the request exceeds the available context size ({} tokens, n_ctx {n_ctx})",
            p.len()
        )));
    }
    s.counters
        .completion_requests
        .fetch_add(1, Ordering::Relaxed);
    let streamed = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if streamed {
        if is_list {
            return Err(SimHttpError::bad_request(
                "the simulation streams one prompt at a time",
            ));
        }
        let prompt = prompts.into_iter().next().unwrap_or_default();
        return Ok(stream_completion(s, prompt, opts));
    }
    let started = Instant::now();
    clock::sleep(s.config.request_overhead).await;
    let mut contexts = prompts.clone();
    for _ in 0..opts.n_predict {
        s.step(contexts.len()).await;
        for ctx in &mut contexts {
            let next = s.config.speaker.next(ctx);
            ctx.push(next);
        }
    }
    let elapsed = started.elapsed();
    let results: Vec<Value> = prompts
        .iter()
        .zip(&contexts)
        .map(|(p, all)| result_json(&opts, p.len(), &all[p.len()..], elapsed))
        .collect();
    let reply = if is_list {
        Value::Array(results)
    } else {
        results.into_iter().next().unwrap_or(Value::Null)
    };
    Ok(Json(reply).into_response())
}

/// A streamed completion: one SSE event per decoded token, then a final `stop: true` event.
fn stream_completion(s: Arc<SimState>, prompt: Vec<TokenId>, opts: CompletionOptions) -> Response {
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(16);
    tokio::spawn(async move {
        let started = Instant::now();
        clock::sleep(s.config.request_overhead).await;
        let mut ctx = prompt.clone();
        for i in 0..opts.n_predict {
            s.step(1).await;
            let id = s.config.speaker.next(&ctx);
            ctx.push(id);
            let mut event = json!({
                "index": 0,
                "content": tokenizer::detokenize(&[id]),
                "tokens": [id],
                "stop": false,
                "id_slot": 0,
                "tokens_predicted": i + 1,
                "tokens_evaluated": prompt.len(),
            });
            if opts.n_probs > 0 {
                event["completion_probabilities"] = json!([probabilities(id, opts.post_sampling)]);
            }
            if tx.send(Ok(format!("data: {event}\n\n"))).await.is_err() {
                return; // The client went away: stop decoding for nobody.
            }
        }
        let generated = ctx.len() - prompt.len();
        let last = json!({
            "index": 0,
            "content": "",
            "tokens": [],
            "stop": true,
            "stop_type": "limit",
            "tokens_predicted": generated,
            "tokens_evaluated": prompt.len(),
            "timings": {
                "prompt_n": prompt.len(),
                "predicted_n": generated,
                "predicted_ms": started.elapsed().as_secs_f64() * 1e3,
            },
        });
        // Nothing to do when the client has gone before the last event.
        let _ = tx.send(Ok(format!("data: {last}\n\n"))).await;
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A receiver as a `Stream` (what `Body::from_stream` wants).
fn tokio_stream_from(
    rx: mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}
