//! The dashboard: one page embedded in the binary (no CDN, no build step) with its charts
//! (uPlot, vendored in `vendor/`), the JSON it polls, and that JSON's state: the recent requests
//! ([`requests`]), a ring of samples and the decision timeline ([`history`]), the operator's
//! controls ([`controls`]), and the hosts' last status (the [`HostsSource`] seam).

pub mod controls;
pub mod history;
pub mod requests;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
pub use history::Dashboard;
pub use requests::{RecentRequests, RequestRecord};

/// Where the dashboard's host view comes from: the coordinator asks the agents (the serving
/// library knows nothing of them), a test may hand in a fixed snapshot.
pub trait HostsSource: Send + Sync + 'static {
    /// The hosts as `{"hosts": [...]}` JSON, or why they could not be asked.
    fn snapshot(&self) -> futures::future::BoxFuture<'_, anyhow::Result<Value>>;
}

pub const PAGE: &str = include_str!("page.html");
/// The vendored charting library's version (see `vendor/README.md`).
pub const UPLOT_VERSION: &str = "1.6.32";

/// The page's own files and the vendored library, by the name the page asks for.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "page.js",
        "text/javascript; charset=utf-8",
        include_str!("page.js"),
    ),
    (
        "page.css",
        "text/css; charset=utf-8",
        include_str!("page.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("vendor/uPlot.LICENSE"),
    ),
];

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `GET /dashboard/assets/{file}`: the page's script and styles, and uPlot with its licence.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::not_found(&format!("/dashboard/assets/{file}")).into_response(),
    }
}

/// `GET /v1/tightwad/dashboard`: per pairing the sampled series (tokens/s through the proxy and
/// of the target alone, k, state), acceptance by draft position, the decision timeline with the
/// operator's actions, the override and whether the target answers.
pub async fn data(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize(&headers)?;
    Ok(Json(state.dashboard.json(&state.pairings.current())))
}

/// The hosts' status as last asked of their agents (refreshed in the background when the config
/// lists `[[hosts]]`, so the page never waits on a slow host).
#[derive(Debug, Default)]
pub struct HostsView(RwLock<Value>);

impl HostsView {
    pub fn json(&self) -> Value {
        let v = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if v.is_null() {
            json!({ "hosts": [] })
        } else {
            v.clone()
        }
    }

    /// Ask `source` every `every`, for as long as the proxy runs.
    pub fn spawn_refresher(self: &Arc<Self>, source: Arc<dyn HostsSource>, every: Duration) {
        let view = self.clone();
        tokio::spawn(async move {
            loop {
                let fresh = match source.snapshot().await {
                    Ok(v) => v,
                    Err(e) => json!({ "hosts": [], "error": format!("{e:#}") }),
                };
                *view
                    .0
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                tokio::time::sleep(every).await;
            }
        });
    }
}
