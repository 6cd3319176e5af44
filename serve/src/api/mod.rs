//! The OpenAI-compatible HTTP front: routes, request limits, JSON and SSE responses.
//!
//! Each completion request gets a `request` tracing span; the engine adds one span per round.

mod completions;
pub mod dashboard;
pub mod drain;
pub mod error;
mod forward;
pub mod guard;
pub mod health;
pub mod openai;
mod reasoning;
mod relay;
mod reload;
mod reply;

/// The pure steps the proxy applies to the bodies of forwarded routes, public for the fuzz targets
/// (`fuzz/fuzz_targets/forwarded_*.rs`) that drive them with arbitrary input: the model a body
/// names (which pairing serves it), the token limits a completion gets before the engine or the
/// target sees it, and the rewriting of the target's replies (whole, streamed, errors).
pub mod forwarding {
    pub use super::completions::plan;
    pub use super::forward::model_of;
    pub use super::relay::{Contract, SseEvents};
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::engine::Pairing;
use crate::metrics::Metrics;
use error::ApiError;
pub(crate) use reload::reload_now;

/// Everything the handlers share.
pub struct AppState {
    /// The pairings served now; a reload swaps them (see [`crate::reload`]).
    pub pairings: crate::reload::PairingSet,
    /// Re-reads the configuration for `POST /v1/tightwad/reload` (none: reload unavailable).
    pub reloader: std::sync::OnceLock<crate::reload::Reloading>,
    pub recent: dashboard::RecentRequests,
    pub hosts: Arc<dashboard::HostsView>,
    pub gate: Arc<guard::Gate>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive (408 after).
    pub body_read_timeout: std::time::Duration,
    pub started: u64,
    /// Pairings drained for a model swap (`tightwad swap`).
    pub drains: drain::Drains,
    /// The dashboard's samples and operator events.
    pub dashboard: dashboard::Dashboard,
    /// The last check of each pairing's target (`/health`).
    pub health: health::TargetHealth,
    /// Browser origins allowed to call the API (CORS); `*` for any; empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

impl AppState {
    fn unknown_pairing(&self, name: &str) -> ApiError {
        let names: Vec<String> = self
            .pairings
            .current()
            .iter()
            .map(|p| p.config.name.clone())
            .collect();
        ApiError::model_not_found(name, &names).with_code("pairing_not_found")
    }

    /// The pairing a request is served by, by its name or one of its aliases; the request keeps
    /// it to its end (a reload meanwhile does not change its settings).
    fn pairing(&self, model: Option<&str>) -> Result<Arc<Pairing>, ApiError> {
        let pairings = self.pairings.current();
        match model {
            // A client that names no model gets the first pairing (curl users, simple scripts).
            None | Some("") => pairings
                .first()
                .cloned()
                .ok_or_else(|| ApiError::model_not_found("", &[])),
            Some(name) => pairings
                .iter()
                .find(|p| p.config.answers_to(name))
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<String> = pairings
                        .iter()
                        .flat_map(|p| std::iter::once(&p.config.name).chain(&p.config.aliases))
                        .cloned()
                        .collect();
                    ApiError::model_not_found(name, &names)
                }),
        }
    }

    /// The pairing named `name` (its name, not an alias: the control routes name pairings).
    fn pairing_named(&self, name: &str) -> Option<Arc<Pairing>> {
        self.pairings
            .current()
            .iter()
            .find(|p| p.config.name == name)
            .cloned()
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    dashboard::Dashboard::spawn_sampler(&state);
    let cors = cors_layer(&state.cors_origins);
    let router = Router::new()
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/chat/completions", post(completions::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/completions", post(completions::completions))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/health", get(health::health))
        .route("/v1/health", get(health::health))
        .route("/ready", get(health::health))
        .route("/live", get(health::live))
        .route("/metrics", get(metrics))
        .route("/v1/tightwad/stats", get(stats))
        .route("/v1/tightwad/requests", get(recent_requests))
        .route("/v1/tightwad/hosts", get(hosts))
        .route("/v1/tightwad/pairings/{name}/drain", post(drain_pairing))
        .route("/v1/tightwad/pairings/{name}/resume", post(resume_pairing))
        .route("/v1/tightwad/logs", get(proxy_logs))
        .route("/v1/tightwad/reload", post(reload::reload))
        .route("/v1/tightwad/dashboard", get(dashboard::data))
        .route(
            "/v1/tightwad/pairings/{name}/speculation",
            post(dashboard::controls::set_speculation),
        )
        .route("/", get(dashboard::page))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/assets/{file}", get(dashboard::asset))
        .fallback(forward::fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// CORS for browser apps: the configured origins (`*`: any), every method the API has, any
/// request header (`authorization`, `content-type`, the SDKs' `x-stainless-*`), and the
/// `x-tightwad-served-by` header readable by scripts. No origins configured: no CORS headers, so
/// browsers keep other sites' pages away from the proxy.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| axum::http::HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                axum::http::Method::GET,
                axum::http::Method::POST,
                axum::http::Method::OPTIONS,
            ])
            .allow_headers(Any)
            .expose_headers([axum::http::HeaderName::from_static(relay::SERVED_BY)])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A known route with another method (GET on a POST route): 405 with a JSON body, like every
/// other error.
async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn models(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    // Each pairing under its name, then under each alias (clients pick from this list).
    let data: Vec<Value> = state
        .pairings
        .current()
        .iter()
        .flat_map(|p| std::iter::once(&p.config.name).chain(&p.config.aliases))
        .map(|id| {
            json!({
                "id": id,
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
        .current()
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p.metrics.snapshot()).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("target".into(), json!(p.config.target_url));
                m.insert("draft".into(), json!(p.config.draft_url));
                m.insert("target_kind".into(), json!(p.config.target_kind.as_str()));
                m.insert("draft_kind".into(), json!(p.config.draft_kind.as_str()));
                m.insert("draft_tokens".into(), json!(p.draft_tokens_view()));
                m.insert("draft_p_min".into(), json!(p.config.draft_p_min));
                m.insert(
                    "draft_backend_sampling".into(),
                    json!(p.config.draft_backend_sampling),
                );
                m.insert("aliases".into(), json!(p.config.aliases));
                m.insert("controller".into(), json!(p.controller_view()));
                m.insert("verification".into(), json!(p.verification_view()));
                if let Some(steering) = p.native_steering_view() {
                    m.insert("native_steering".into(), json!(steering));
                }
                m.insert("drafters".into(), json!(p.drafter_views()));
                m.insert("cached_prefix".into(), p.cached_prefix_view());
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
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize_control(&headers, client.ip())?;
    let body: DrainBody = if body.is_empty() {
        DrainBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("Bad drain request: {e}"), None))?
    };
    let timeout = std::time::Duration::from_secs(body.timeout_s.unwrap_or(120));
    for (key, value, max) in [
        ("hold_s", body.hold_s, drain::MAX_HOLD),
        ("timeout_s", body.timeout_s, drain::MAX_HOLD),
    ] {
        if let Some(v) = value.filter(|v| *v > max.as_secs()) {
            return Err(ApiError::invalid(
                format!(
                    "`{key}` = {v} is above the limit of {} s: a drain that outlives its caller must end by itself.",
                    max.as_secs()
                ),
                Some(key),
            ));
        }
    }
    let hold = body
        .hold_s
        .map(std::time::Duration::from_secs)
        .unwrap_or(drain::DEFAULT_HOLD);
    match state.drains.drain(&name, timeout, hold).await {
        Ok(waited) => {
            state.dashboard.event(
                &name,
                "drained",
                format!(
                    "drained by an operator after {} ms; held up to {} s",
                    waited.as_millis(),
                    hold.as_secs()
                ),
            );
            Ok(Json(json!({
            "pairing": name,
            "drained": true,
            "waited_ms": waited.as_millis() as u64,
            "hold_s": hold.as_secs(),
            })))
        }
        Err(drain::DrainError::Unknown(_)) => Err(state.unknown_pairing(&name)),
        Err(e) => Err(ApiError::timeout(e.to_string())),
    }
}

/// `POST /v1/tightwad/pairings/{name}/resume`: requests flow again; the pairing re-probes its
/// servers (the target may now hold another model).
async fn resume_pairing(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize_control(&headers, client.ip())?;
    if let Some(p) = state.pairing_named(&name) {
        p.invalidate().await;
    }
    match state.drains.resume(&name) {
        Ok(was) => {
            if was {
                state
                    .dashboard
                    .event(&name, "resumed", "resumed by an operator".into());
            }
            Ok(Json(json!({"pairing": name, "resumed": was})))
        }
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
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    query: Result<axum::extract::Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize_control(&headers, client.ip())?;
    let axum::extract::Query(query) =
        query.map_err(|e| ApiError::invalid(format!("bad query: {e}"), None))?;
    let (lines, next) = crate::logring::read(query.after, query.tail);
    Ok(Json(json!({"lines": lines, "next": next})))
}
