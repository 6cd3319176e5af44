//! `POST /v1/chat/completions` and `/v1/completions`, one straight line: admit (key, concurrency,
//! body, drain) → parse and plan → the engine routes it (generate, or forward to the target) →
//! the response (JSON, SSE, or the target's own reply relayed).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{info_span, warn, Instrument};

use super::error::ApiError;
use super::openai::{self, Endpoint, OpenAiRequest, Plan};
use super::reply::Reply;
use super::{guard, relay, unix_now, AppState};
use crate::engine::{Job, Pairing, Route};

pub(super) async fn completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    serve(state, Endpoint::Completions, client, req).await
}

pub(super) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    serve(state, Endpoint::ChatCompletions, client, req).await
}

/// One request, in its `request` span; a refusal becomes its OpenAI error.
async fn serve(
    state: Arc<AppState>,
    endpoint: Endpoint,
    client: SocketAddr,
    req: Request,
) -> Response {
    let id = Reply::new_id(endpoint);
    let span = info_span!("request", %id, endpoint = endpoint.path());
    async move { answer(handle(state, endpoint, client, req, id).await) }
        .instrument(span)
        .await
}

/// The response, or the refusal as its OpenAI error (logged).
pub(super) fn answer(result: Result<Response, ApiError>) -> Response {
    match result {
        Ok(r) => r,
        Err(e) => {
            // Debug-formatted: the message may quote client input (a `model` name), whose line
            // breaks must not forge log lines.
            warn!(status = e.status.as_u16(), message = ?e.message, "request refused");
            e.into_response()
        }
    }
}

async fn handle(
    state: Arc<AppState>,
    endpoint: Endpoint,
    client: SocketAddr,
    req: Request,
    id: String,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let admitted = admit(&state, client, req).await?;
    let job = plan(
        state.gate.limits(),
        endpoint,
        &admitted.request,
        admitted.body,
    )?;
    let route = admitted.pairing.route(job).await.inspect_err(|e| {
        // Listed on the dashboard like a generation that failed later.
        state
            .recent
            .failed(&id, &admitted.pairing.config.name, &e.to_string());
    })?;
    let reply = Reply {
        id,
        model: admitted.pairing.config.name.clone(),
        created: unix_now(),
        endpoint,
        include_usage: admitted.request.include_usage(),
        return_token_ids: admitted.request.return_token_ids.unwrap_or(false),
        started,
    };
    Ok(match route {
        Route::Forwarded { response, reason } => {
            state.recent.forwarded(&reply.id, &reply.model, &reason);
            relay::forwarded(response, &reason, endpoint, reply.model, admitted.permit).await
        }
        Route::Generate(prepared) if admitted.request.wants_stream() => {
            reply.stream(state.clone(), admitted.pairing, prepared, admitted.permit)
        }
        Route::Generate(prepared) => {
            reply
                .whole(&state, &admitted.pairing, prepared, admitted.permit)
                .await?
        }
    })
}

/// A request that passed the gate: its key, a concurrency permit, the body within its size limit,
/// its pairing, and (while the pairing is drained for a swap) its turn.
struct Admitted {
    permit: guard::Permit,
    body: serde_json::Value,
    request: OpenAiRequest,
    pairing: Arc<Pairing>,
}

async fn admit(state: &AppState, client: SocketAddr, req: Request) -> Result<Admitted, ApiError> {
    let (permit, body) = admit_body(state, client, req).await?;
    let (body, request) = openai::parse(&body)?;
    let pairing = state.pairing(request.model.as_deref())?;
    let permit = wait_turn(state, &pairing, permit).await?;
    Ok(Admitted {
        permit,
        body,
        request,
        pairing,
    })
}

/// The gate every request the proxy serves or forwards passes: its key, then the body within its
/// time and size limits, then a concurrency place.
pub(super) async fn admit_body(
    state: &AppState,
    client: SocketAddr,
    req: Request,
) -> Result<(guard::Permit, Bytes), ApiError> {
    state.gate.authorize(req.headers())?;
    // The body is read (within its time and size limits) BEFORE a concurrency place is taken: a
    // client that sends headers and no body holds no place (at most a connection, and those are
    // capped per address).
    let body = read_body(state, req).await?;
    let permit = state.gate.admit(client.ip())?;
    Ok((permit, body))
}

/// While the pairing is drained for a model swap, wait for it to resume (then the new model
/// answers), or give up with 503 after `drain::MAX_WAIT`; the permit then holds the turn.
pub(super) async fn wait_turn(
    state: &AppState,
    pairing: &Pairing,
    mut permit: guard::Permit,
) -> Result<guard::Permit, ApiError> {
    let admission = state
        .drains
        .admit(&pairing.config.name)
        .await
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "The model of {} is being swapped and it took too long; retry shortly.",
                pairing.config.name
            ))
        })?;
    permit.hold(admission);
    Ok(permit)
}

/// The engine's job for a parsed request: its plan, with the proxy's `max_tokens` cap applied to
/// whoever generates (the engine, or the target on a forward). Public for the fuzz targets
/// (`api::forwarding`).
pub fn plan(
    limits: &guard::Limits,
    endpoint: Endpoint,
    request: &OpenAiRequest,
    mut body: serde_json::Value,
) -> Result<Job, ApiError> {
    let mut plan = request.plan(endpoint)?;
    let asked = match endpoint {
        Endpoint::ChatCompletions => request.max_completion_tokens.or(request.max_tokens),
        Endpoint::Completions => request.max_tokens,
    };
    let n_predict = request.extra.get("n_predict").filter(|v| !v.is_null());
    // OpenAI refuses a count of 0; llama-server would still generate a token on a forward while
    // the engine generates none: one answer for both paths. `n_predict: 0` too: the engine
    // treats it as unset (a default value), so it would generate with no count at all — past
    // `max_tokens_limit` (what fuzz/fuzz_targets/forwarded_request.rs checks).
    for (field, value) in [
        ("max_tokens", asked),
        ("n_predict", n_predict.and_then(|v| v.as_i64())),
    ] {
        if value == Some(0) {
            return Err(ApiError::invalid(
                format!("`{field}` must be at least 1, got 0."),
                Some(field),
            ));
        }
    }
    if let Some(limit) = limits.max_tokens {
        // Every spelling a target reads is held to the limit (llama-server takes `n_predict`
        // before `max_tokens`; the endpoints differ in which of `max_tokens` and
        // `max_completion_tokens` they honour): none may ask for more, whichever wins.
        if let Some(v) = n_predict {
            if v.as_i64().is_none_or(|n| n < 0 || n > limit as i64) {
                return Err(ApiError::invalid(
                    format!("`n_predict` = {v} is above this proxy's limit of {limit} tokens (a negative value means no limit)."),
                    Some("n_predict"),
                ));
            }
        }
        for (field, value) in [
            ("max_tokens", request.max_tokens),
            ("max_completion_tokens", request.max_completion_tokens),
        ] {
            if let Some(m) = value.filter(|m| *m > limit as i64) {
                return Err(ApiError::invalid(
                    format!("`{field}` = {m} is above this proxy's limit of {limit}."),
                    Some(field),
                ));
            }
        }
        let asked = asked.or(n_predict.and_then(|v| v.as_i64()));
        if asked.is_none() {
            body["max_tokens"] = json!(limit);
            if let Plan::Generate(g) = &mut plan {
                g.max_tokens = Some(limit);
            }
        }
    } else if let (Some(default), None) = (limits.default_max_tokens, asked) {
        // No answer runs to the end of the context unless the configuration says so.
        body["max_tokens"] = json!(default);
        if let Plan::Generate(g) = &mut plan {
            g.max_tokens = Some(default);
        }
    }
    Ok(Job {
        plan,
        path: endpoint.path(),
        body,
        // Requests that ask for the engine's extras (token ids) always go through it.
        engine_only: request.return_token_ids.unwrap_or(false),
    })
}

/// Read the body within the size and time limits; a larger body is refused whole (413), never
/// half-read; one that does not arrive in time is 408, one cut off or malformed 400.
async fn read_body(state: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let limit = state.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(ApiError::too_large(limit));
        }
    }
    let read = axum::body::to_bytes(req.into_body(), limit);
    match tokio::time::timeout(state.body_read_timeout, read).await {
        Err(_) => Err(ApiError::body_timeout(state.body_read_timeout)),
        Ok(Ok(body)) => Ok(body),
        Ok(Err(e)) if is_length_limit(&e) => Err(ApiError::too_large(limit)),
        Ok(Err(e)) => Err(ApiError::invalid(
            format!("The request body could not be read: {e}."),
            None,
        )),
    }
}

/// Whether reading a body failed on the size limit (not a client that broke off or sent bad
/// chunked encoding).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_tokens: Option<usize>) -> guard::Limits {
        guard::Limits {
            api_keys: vec![],
            max_concurrent: 4,
            max_concurrent_per_client: 4,
            max_tokens,
            default_max_tokens: None,
            remote_control: false,
        }
    }

    fn job(limits: &guard::Limits, body: &str) -> Result<Job, ApiError> {
        let (value, request) = openai::parse(body.as_bytes()).expect("a valid body");
        plan(limits, Endpoint::Completions, &request, value)
    }

    /// `n_predict: 0` passed the limit check and counted as "asked", so nothing capped the
    /// generation: the engine (which ignores a zero `n_predict`) generated to the end of the
    /// context, past `max_tokens_limit`. Now refused like `max_tokens: 0`.
    #[test]
    fn n_predict_zero_is_refused_rather_than_generating_past_the_limit() {
        let refused = job(&limits(Some(8)), r#"{"prompt":"x","n_predict":0}"#)
            .expect_err("n_predict 0 is refused");
        assert_eq!(refused.status, 400);
        assert_eq!(refused.param.as_deref(), Some("n_predict"));
        assert!(job(&limits(None), r#"{"prompt":"x","n_predict":0}"#).is_err());
    }

    #[test]
    fn a_generation_under_a_limit_is_capped_at_it() {
        let limits = limits(Some(8));
        let Plan::Generate(g) = job(&limits, r#"{"prompt":"x"}"#).expect("planned").plan else {
            panic!("a plain prompt is generated by the engine");
        };
        assert_eq!(g.max_tokens, Some(8));
        let forwarded = job(&limits, r#"{"prompt":"x","n_predict":4}"#).expect("planned");
        assert!(matches!(forwarded.plan, Plan::Forward(_)));
        assert_eq!(
            forwarded.body["n_predict"], 4,
            "the client's own count, within the limit"
        );
        assert!(job(&limits, r#"{"prompt":"x","n_predict":9}"#).is_err());
    }
}
