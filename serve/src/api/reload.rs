//! A reload as the API sees it (the reload itself is [`crate::reload`]): `POST
//! /v1/tightwad/reload`, and what follows a reload that changed the set of pairings served — the
//! drain states, health checks and dashboard samples follow the new names, and what is new is
//! checked and probed at once.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::reload::{ReloadError, ReloadReport};

/// A reload of `state`, logged (shared by the binary's SIGHUP through
/// `server::ProxyHandle::reload` and `POST /v1/tightwad/reload`).
pub(crate) fn reload_now(state: &Arc<AppState>) -> Result<ReloadReport, ReloadError> {
    let Some(reloading) = state.reloader.get() else {
        return Err(ReloadError::Invalid(
            "this proxy was started without a configuration to re-read".into(),
        ));
    };
    let result = reloading.reload(&state.pairings, &state.metrics);
    match &result {
        Ok(report) => {
            follow(state, report);
            for w in &report.warnings {
                tracing::warn!("{w}");
            }
            tracing::info!(added = ?report.added, removed = ?report.removed, changed = ?report.changed, unchanged = ?report.unchanged, "configuration reloaded");
        }
        Err(e) => tracing::warn!("reload refused: {e}"),
    }
    result
}

/// Bring the per-name state beside the pairings in line with the set a reload swapped in.
fn follow(state: &Arc<AppState>, report: &ReloadReport) {
    let serving = state.pairings.current();
    let names = || serving.iter().map(|p| p.config.name.as_str());
    state.drains.sync(names());
    state.health.retain(names());
    for name in &report.removed {
        state.dashboard.forget(name);
        state
            .dashboard
            .event(name, "removed", "removed by a reload".into());
    }
    for name in &report.added {
        state
            .dashboard
            .event(name, "added", "added by a reload".into());
    }
    for name in &report.changed {
        state
            .dashboard
            .event(name, "reloaded", "new settings from a reload".into());
    }
    let fresh = serving
        .iter()
        .filter(|p| {
            report.added.contains(&p.config.name) || report.changed.contains(&p.config.name)
        })
        .cloned()
        .collect();
    super::health::check_soon(state, fresh);
}

/// `POST /v1/tightwad/reload` (`tightwad reload`): re-read the configuration like SIGHUP does;
/// 200 with the pairings added, removed, changed and kept, 400 with the reason when nothing was
/// changed.
pub(super) async fn reload(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize_control(&headers, client.ip())?;
    match reload_now(&state) {
        Ok(report) => Ok(Json(json!(report))),
        Err(e) => Err(ApiError::invalid(e.to_string(), None).with_code("reload_refused")),
    }
}
