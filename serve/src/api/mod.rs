//! The OpenAI-compatible HTTP front: routes, request limits, JSON and SSE responses.
//!
//! Each completion request gets a `request` tracing span; the engine adds one span per round.

pub mod dashboard;
pub mod drain;
pub mod error;
pub mod guard;
pub mod openai;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde_json::{json, Value};
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use crate::engine::{Delta, Generation, Pairing};
use crate::metrics::{Metrics, ServedBy};
use error::ApiError;
use openai::{Endpoint, Plan};

/// Everything the handlers share.
pub struct AppState {
    pub pairings: Vec<Arc<Pairing>>,
    pub recent: dashboard::RecentRequests,
    pub hosts: Arc<dashboard::HostsView>,
    pub gate: Arc<guard::Gate>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    pub started: u64,
    /// Pairings drained for a model swap (`tightwad swap`).
    pub drains: drain::Drains,
}

impl AppState {
    fn unknown_pairing(&self, name: &str) -> ApiError {
        let names: Vec<String> = self
            .pairings
            .iter()
            .map(|p| p.config.name.clone())
            .collect();
        ApiError::model_not_found(name, &names).with_code("pairing_not_found")
    }

    fn pairing(&self, model: Option<&str>) -> Result<&Arc<Pairing>, ApiError> {
        match model {
            // A client that names no model gets the first pairing (curl users, simple scripts).
            None | Some("") => self
                .pairings
                .first()
                .ok_or_else(|| ApiError::model_not_found("", &[])),
            Some(name) => self
                .pairings
                .iter()
                .find(|p| p.config.name == name)
                .ok_or_else(|| {
                    let names: Vec<String> = self
                        .pairings
                        .iter()
                        .map(|p| p.config.name.clone())
                        .collect();
                    ApiError::model_not_found(name, &names)
                }),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/tightwad/stats", get(stats))
        .route("/v1/tightwad/requests", get(recent_requests))
        .route("/v1/tightwad/hosts", get(hosts))
        .route("/v1/tightwad/pairings/{name}/drain", post(drain_pairing))
        .route("/v1/tightwad/pairings/{name}/resume", post(resume_pairing))
        .route("/v1/tightwad/logs", get(proxy_logs))
        .route("/", get(dashboard::page))
        .route("/dashboard", get(dashboard::page))
        .fallback(fallback)
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn fallback(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    let data: Vec<Value> = state
        .pairings
        .iter()
        .map(|p| {
            json!({
                "id": p.config.name,
                "object": "model",
                "created": state.started,
                "owned_by": "tightwad",
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn stats(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    let pairings: Vec<Value> = state
        .pairings
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p.metrics.snapshot()).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("target".into(), json!(p.config.target_url));
                m.insert("draft".into(), json!(p.config.draft_url));
                m.insert("target_kind".into(), json!(p.config.target_kind.as_str()));
                m.insert("draft_kind".into(), json!(p.config.draft_kind.as_str()));
                m.insert("draft_tokens".into(), json!(p.config.draft_tokens));
                m.insert("controller".into(), json!(p.controller_view()));
                m.insert("drafters".into(), json!(p.drafter_views()));
                if let Some(paths) = p.paths_view() {
                    m.insert("paths".into(), json!(paths));
                }
            }
            v
        })
        .collect();
    Ok(Json(json!({"pairings": pairings})))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    timeout_s: Option<u64>,
    hold_s: Option<u64>,
}

/// `POST /v1/tightwad/pairings/{name}/drain`: see [`drain`].
async fn drain_pairing(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    let body: DrainBody = if body.is_empty() {
        DrainBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("Bad drain request: {e}"), None))?
    };
    let timeout = std::time::Duration::from_secs(body.timeout_s.unwrap_or(120));
    let hold = body
        .hold_s
        .map(std::time::Duration::from_secs)
        .unwrap_or(drain::DEFAULT_HOLD);
    match state.drains.drain(&name, timeout, hold).await {
        Ok(waited) => Ok(Json(json!({
            "pairing": name,
            "drained": true,
            "waited_ms": waited.as_millis() as u64,
            "hold_s": hold.as_secs(),
        }))),
        Err(drain::DrainError::Unknown(_)) => Err(state.unknown_pairing(&name)),
        Err(e) => Err(ApiError::timeout(e.to_string())),
    }
}

/// `POST /v1/tightwad/pairings/{name}/resume`: requests flow again; the pairing re-probes its
/// servers (the target may now hold another model).
async fn resume_pairing(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    if let Some(p) = state.pairings.iter().find(|p| p.config.name == name) {
        p.invalidate().await;
    }
    match state.drains.resume(&name) {
        Ok(was) => Ok(Json(json!({"pairing": name, "resumed": was}))),
        Err(_) => Err(state.unknown_pairing(&name)),
    }
}

async fn recent_requests(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    Ok(Json(state.recent.json()))
}

async fn hosts(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    Ok(Json(state.hosts.json()))
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_log_tail")]
    tail: usize,
}

fn default_log_tail() -> usize {
    100
}

/// The proxy's own recent log lines (see [`crate::logring`]): numbered above `after`, at most
/// `tail`; `next` is the `after` for the following poll (`tightwad logs proxy -f`).
async fn proxy_logs(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::invalid(format!("bad query: {e}"), None))?;
    let (lines, next) = crate::logring::read(query.after, query.tail);
    Ok(Json(json!({"lines": lines, "next": next})))
}

async fn completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    serve(state, Endpoint::Completions, client, req).await
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    serve(state, Endpoint::ChatCompletions, client, req).await
}

/// Read the body within the size limit; a larger body is refused whole, never half-read.
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
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

async fn serve(
    state: Arc<AppState>,
    endpoint: Endpoint,
    client: SocketAddr,
    req: Request,
) -> Response {
    let id = format!(
        "{}-{}",
        match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::ChatCompletions => "chatcmpl",
        },
        uuid_like()
    );
    let span = info_span!("request", %id, endpoint = endpoint.path());
    async move {
        match handle(state, endpoint, client, req, id).await {
            Ok(r) => r,
            Err(e) => {
                warn!(status = e.status.as_u16(), message = %e.message, "request refused");
                e.into_response()
            }
        }
    }
    .instrument(span)
    .await
}

async fn handle(
    state: Arc<AppState>,
    endpoint: Endpoint,
    client: SocketAddr,
    req: Request,
    id: String,
) -> Result<Response, ApiError> {
    state.gate.authorize(req.headers())?;
    let mut permit = state.gate.admit(client.ip())?;
    let body = read_body(&state, req).await?;
    let (mut raw, request) = openai::parse(&body)?;
    let pairing = state.pairing(request.model.as_deref())?.clone();
    // While the pairing is drained for a model swap, wait for it to resume (then the new model
    // answers), or give up with 503 after `drain::MAX_WAIT`.
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
    let mut plan = request.plan(endpoint)?;
    if let Some(limit) = state.gate.limits().max_tokens {
        let asked = request.max_completion_tokens.or(request.max_tokens);
        if let Some(m) = asked.filter(|m| *m > limit as i64) {
            return Err(ApiError::invalid(
                format!("`max_tokens` = {m} is above this proxy's limit of {limit}."),
                Some("max_tokens"),
            ));
        }
        if asked.is_none() {
            // The cap holds whoever generates: the engine, or the target on a passthrough.
            raw["max_tokens"] = json!(limit);
            if let Plan::Engine(g) = &mut plan {
                g.max_tokens = Some(limit);
            }
        }
    }
    match plan {
        Plan::Passthrough(reason) => {
            info!(%reason, "forwarding to the target unchanged");
            passthrough(&pairing, endpoint, raw, permit).await
        }
        // Nothing to speculate (no usable draft, or the controller has speculation off): the
        // target answers the request itself, with no proxy work in the token path. Requests that
        // ask for the engine's extras (token ids) still go through it.
        Plan::Engine(_)
            if !request.return_token_ids.unwrap_or(false) && pairing.passthrough_now().await =>
        {
            passthrough(&pairing, endpoint, raw, permit).await
        }
        Plan::Engine(generation) => {
            let model = pairing.config.name.clone();
            let reply = Reply {
                id,
                model,
                created: unix_now(),
                endpoint,
                include_usage: request.include_usage(),
                return_token_ids: request.return_token_ids.unwrap_or(false),
            };
            let prepared = match pairing.prepare(generation).await {
                Ok(p) => p,
                Err(e) => {
                    pairing.record_failure(&e).await;
                    return Err(e.into());
                }
            };
            if request.wants_stream() {
                Ok(stream_response(state.clone(), pairing, prepared, reply, permit).await)
            } else {
                let (tx, mut rx) = mpsc::channel::<Delta>(64);
                let collect = async {
                    let mut text = String::new();
                    while let Some(d) = rx.recv().await {
                        text.push_str(&d.text);
                    }
                    text
                };
                let (result, text) = tokio::join!(pairing.generate_prepared(prepared, tx), collect);
                drop(permit);
                let generation = match result {
                    Ok(g) => g,
                    Err(e) => {
                        pairing.record_failure(&e).await;
                        return Err(e.into());
                    }
                };
                log_generation(&generation);
                state.recent.record(&reply.id, &reply.model, &generation);
                Ok(Json(reply.full(&text, &generation)).into_response())
            }
        }
    }
}

fn log_generation(g: &Generation) {
    info!(
        served_by = ?g.served_by,
        prompt_tokens = g.prompt_tokens,
        completion_tokens = g.completion_tokens,
        rounds = g.rounds,
        drafted = g.drafted,
        accepted = g.accepted,
        ms = g.elapsed.as_millis() as u64,
        "completed"
    );
}

/// A process-unique id without pulling in a UUID crate for it: time + counter + randomness.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    format!("{:x}{:04x}{:08x}", unix_now(), n & 0xffff, r)
}

/// The identity of one response, shared by its chunks.
struct Reply {
    id: String,
    model: String,
    created: u64,
    endpoint: Endpoint,
    include_usage: bool,
    return_token_ids: bool,
}

impl Reply {
    fn usage(g: &Generation) -> Value {
        json!({
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens,
        })
    }

    fn speculation(g: &Generation) -> Value {
        json!({
            "served_by": g.served_by,
            "rounds": g.rounds,
            "drafted": g.drafted,
            "accepted": g.accepted,
            "pipelined_rounds": g.prefetched,
            "elapsed_ms": g.elapsed.as_millis() as u64,
        })
    }

    fn full(&self, text: &str, g: &Generation) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": g.finish.as_str(),
            }),
            Endpoint::ChatCompletions => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": g.finish.as_str(),
            }),
        };
        if self.return_token_ids {
            choice["token_ids"] = json!(g.token_ids);
        }
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::ChatCompletions => "chat.completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": Self::usage(g),
            "tightwad": Self::speculation(g),
        })
    }

    fn chunk(&self, choice: Value) -> Value {
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::ChatCompletions => "chat.completion.chunk",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    fn delta_chunk(&self, text: &str) -> Value {
        self.chunk(match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null})
            }
            Endpoint::ChatCompletions => {
                json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null})
            }
        })
    }

    fn role_chunk(&self) -> Value {
        self.chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
    }

    fn final_chunk(&self, g: &Generation) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": g.finish.as_str()})
            }
            Endpoint::ChatCompletions => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": g.finish.as_str()})
            }
        };
        if self.return_token_ids {
            choice["token_ids"] = json!(g.token_ids);
        }
        let mut chunk = self.chunk(choice);
        chunk["tightwad"] = Self::speculation(g);
        chunk
    }

    fn usage_chunk(&self, g: &Generation) -> Value {
        let mut chunk = self.chunk(Value::Null);
        chunk["choices"] = json!([]);
        chunk["usage"] = Self::usage(g);
        chunk
    }
}

/// Aborts the generation task when the response stream is dropped (the client went away), so the
/// backends stop working for nobody.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum StreamItem {
    Delta(Delta),
    Done(Box<Result<Generation, ApiError>>),
}

async fn stream_response(
    state: Arc<AppState>,
    pairing: Arc<Pairing>,
    prepared: crate::engine::Prepared,
    reply: Reply,
    permit: guard::Permit,
) -> Response {
    let (tx, rx) = mpsc::channel::<StreamItem>(64);
    let (id, model) = (reply.id.clone(), reply.model.clone());
    let task = {
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let (dtx, mut drx) = mpsc::channel::<Delta>(64);
                let forward_tx = tx.clone();
                let forward = async move {
                    while let Some(d) = drx.recv().await {
                        if forward_tx.send(StreamItem::Delta(d)).await.is_err() {
                            break;
                        }
                    }
                };
                let (result, ()) = tokio::join!(pairing.generate_prepared(prepared, dtx), forward);
                let result = match result {
                    Ok(g) => {
                        log_generation(&g);
                        state.recent.record(&id, &model, &g);
                        Ok(g)
                    }
                    Err(e) => {
                        pairing.record_failure(&e).await;
                        warn!(error = %e, "generation failed mid-stream");
                        Err(ApiError::from(e))
                    }
                };
                drop(permit);
                let _ = tx.send(StreamItem::Done(Box::new(result))).await;
            }
            .instrument(span),
        )
    };
    let events = sse_stream(rx, reply, AbortOnDrop(task));
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn sse_stream(
    rx: mpsc::Receiver<StreamItem>,
    reply: Reply,
    guard: AbortOnDrop,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = match reply.endpoint {
        Endpoint::ChatCompletions => Some(reply.role_chunk()),
        Endpoint::Completions => None,
    };
    let state = (rx, reply, guard, first, false);
    futures::stream::unfold(state, |(mut rx, reply, guard, first, done)| async move {
        if done {
            return None;
        }
        if let Some(chunk) = first {
            return Some((
                vec![Event::default().data(chunk.to_string())],
                (rx, reply, guard, None, false),
            ));
        }
        let events = match rx.recv().await {
            Some(StreamItem::Delta(d)) => {
                vec![Event::default().data(reply.delta_chunk(&d.text).to_string())]
            }
            Some(StreamItem::Done(result)) => {
                let mut events = Vec::new();
                match *result {
                    Ok(g) => {
                        events.push(Event::default().data(reply.final_chunk(&g).to_string()));
                        if reply.include_usage {
                            events.push(Event::default().data(reply.usage_chunk(&g).to_string()));
                        }
                    }
                    Err(e) => events.push(Event::default().data(e.body().to_string())),
                }
                events.push(Event::default().data("[DONE]"));
                return Some((events, (rx, reply, guard, None, true)));
            }
            None => {
                // The task ended without a result (it panicked or was aborted): say so, then end.
                let e = ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "the generation ended unexpectedly".into(),
                    kind: "server_error",
                    param: None,
                    code: None,
                };
                let events = vec![
                    Event::default().data(e.body().to_string()),
                    Event::default().data("[DONE]"),
                ];
                return Some((events, (rx, reply, guard, None, true)));
            }
        };
        Some((events, (rx, reply, guard, None, false)))
    })
    .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
}

use futures::StreamExt as _;

/// Forward a request the engine does not drive to the target's own OpenAI endpoint, streaming its
/// reply back byte for byte.
async fn passthrough(
    pairing: &Pairing,
    endpoint: Endpoint,
    body: Value,
    permit: guard::Permit,
) -> Result<Response, ApiError> {
    let resp = pairing
        .target()
        .forward(endpoint.path(), &body)
        .await
        .map_err(|e| ApiError::backend(&e))?;
    pairing.metrics.request(ServedBy::Passthrough);
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    // The permit lives as long as the relayed body does. If the target breaks off a stream, the
    // client gets an OpenAI error event and `[DONE]` instead of a silently truncated stream.
    let is_sse = content_type.starts_with("text/event-stream");
    let stream = resp
        .bytes_stream()
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(false, move |failed, item| {
            let _held = &permit;
            let out = match item {
                _ if *failed => None,
                Some(Ok(bytes)) => Some(Ok::<Bytes, std::io::Error>(bytes)),
                Some(Err(e)) if is_sse => {
                    *failed = true;
                    let err = ApiError {
                        status: StatusCode::BAD_GATEWAY,
                        message: format!("the target broke off the stream: {e}"),
                        kind: "server_error",
                        param: None,
                        code: Some("backend_error"),
                    };
                    Some(Ok(Bytes::from(format!(
                        "data: {}\n\ndata: [DONE]\n\n",
                        err.body()
                    ))))
                }
                Some(Err(e)) => Some(Err(std::io::Error::other(e))),
                None => None,
            };
            futures::future::ready(out)
        });
    Ok(Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::not_found(endpoint.path()).into_response()))
}
