//! The operator's controls that the dashboard adds: speculation on, off or automatic per
//! pairing. (Drain, resume and the proxy's log are routes of their own in `api`.) Control routes:
//! with API keys configured a valid key; without, loopback clients only unless
//! `remote_control = true` (`guard::Gate::authorize_control`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use tracing::info;

use super::super::error::ApiError;
use super::super::AppState;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SpeculationBody {
    /// `on`, `off` or `auto`.
    mode: String,
}

/// `POST /v1/tightwad/pairings/{name}/speculation` `{"mode": "on" | "off" | "auto"}`: force
/// speculation on or off for the pairing, or hand it back to the controller. The change is a
/// decision in the pairing's timeline.
pub async fn set_speculation(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    state.gate.authorize_control(&headers, client.ip())?;
    let body: SpeculationBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid(
            format!(
                "Bad speculation request: {e}; send {{\"mode\": \"on\" | \"off\" | \"auto\"}}."
            ),
            Some("mode"),
        )
    })?;
    let forced = match body.mode.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        "auto" => None,
        other => {
            return Err(ApiError::invalid(
                format!("`mode` must be \"on\", \"off\" or \"auto\", not {other:?}."),
                Some("mode"),
            ))
        }
    };
    let pairing = state
        .pairing_named(&name)
        .ok_or_else(|| state.unknown_pairing(&name))?;
    pairing.set_override(forced);
    info!(pairing = %name, mode = %body.mode, %client, "speculation set by an operator");
    Ok(Json(json!({
        "pairing": name,
        "mode": body.mode,
        "controller": pairing.controller_view(),
    })))
}
