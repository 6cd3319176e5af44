//! Health, honestly: `/health` (also `/v1/health` and `/ready`) answers 200 only while at least one
//! pairing's target answers and has its model loaded, else 503 with each pairing's reason (a load
//! balancer, `docker --health-cmd` and LiteLLM take a pairing out on that, as they do for
//! llama-server's own 503 while loading). `/live` is liveness: 200 while the process serves HTTP.
//!
//! The targets are checked in the background ([`spawn_monitor`]): the proxy serves from the first
//! moment, and a target that is down is reported once, with its cause and the fix, then again only
//! when that changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::AppState;
use crate::engine::Pairing;

/// How long one `/health` check of a target may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Between background checks while every target answers, and while one does not.
const EVERY_WHEN_OK: Duration = Duration::from_secs(10);
const EVERY_WHEN_DOWN: Duration = Duration::from_secs(2);

/// The last check of each pairing's target, by pairing name. A check counts only for the target
/// it was made of: a reload that points a pairing at another target starts it afresh.
#[derive(Default)]
pub struct TargetHealth {
    checks: Mutex<HashMap<String, Check>>,
}

#[derive(Clone)]
struct Check {
    target: String,
    result: Result<(), String>,
    at: Instant,
}

impl TargetHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Check>> {
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, pairing: &Pairing) -> Option<Check> {
        self.lock()
            .get(&pairing.config.name)
            .filter(|c| c.target == pairing.config.target_url)
            .cloned()
    }

    /// Keep only the checks of `names` (a reload removed the others).
    pub(crate) fn retain<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let names: Vec<&str> = names.collect();
        self.lock().retain(|name, _| names.contains(&name.as_str()));
    }

    /// Record a check; the previous result of the same target, to log only changes.
    fn set(&self, pairing: &Pairing, result: Result<(), String>) -> Option<Result<(), String>> {
        let target = pairing.config.target_url.clone();
        self.lock()
            .insert(
                pairing.config.name.clone(),
                Check {
                    target: target.clone(),
                    result,
                    at: Instant::now(),
                },
            )
            .filter(|c| c.target == target)
            .map(|c| c.result)
    }
}

/// Check `pairing`'s target now, record it, and log what changed (a target found down names the
/// cause and the fix; one back says so). A target that answers is probed too (once, cached by the
/// engine), so the log says early whether speculation is on and why.
pub async fn check(state: &AppState, pairing: &Pairing) -> Result<(), String> {
    let result = pairing.check_target(CHECK_TIMEOUT).await;
    let before = state.health.set(pairing, result.clone());
    let name = &pairing.config.name;
    match (&result, before) {
        (Err(reason), None) => {
            warn!(pairing = %name, "target not reachable: {reason}; serving anyway and checking every {} s", EVERY_WHEN_DOWN.as_secs())
        }
        (Err(reason), Some(Ok(()))) => warn!(pairing = %name, "target went down: {reason}"),
        (Err(reason), Some(Err(old))) if *reason != old => {
            warn!(pairing = %name, "target still not serving: {reason}")
        }
        (Ok(()), Some(Err(_))) => info!(pairing = %name, "target answers again"),
        _ => {}
    }
    if result.is_ok() {
        if let Err(e) = pairing.info().await {
            warn!(pairing = %name, error = %e, "target answers /health but could not be probed");
        }
    }
    result
}

/// Check (and so probe) `pairings` now, in the background: what a reload added or changed is
/// looked at at once, as at startup, rather than at the monitor's next round.
pub fn check_soon(state: &Arc<AppState>, pairings: Vec<Arc<Pairing>>) {
    if pairings.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let state = state.clone();
    runtime.spawn(async move {
        for p in &pairings {
            let _ = check(&state, p).await;
        }
    });
}

/// Check every target in the background for as long as the proxy runs.
pub fn spawn_monitor(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut all_ok = true;
            for p in state.pairings.current().iter() {
                all_ok &= check(&state, p).await.is_ok();
            }
            let every = if all_ok {
                EVERY_WHEN_OK
            } else {
                EVERY_WHEN_DOWN
            };
            tokio::time::sleep(every).await;
        }
    })
}

/// `GET /health`, `/v1/health`, `/ready`: 200 when at least one pairing can serve, else 503, with
/// each pairing's state and reason. A pairing not checked yet is checked now. With API keys
/// configured, only a request carrying one sees targets' addresses.
pub(super) async fn health(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let detailed = state.gate.authorize(&headers).is_ok();
    let serving = state.pairings.current();
    let mut pairings = Vec::with_capacity(serving.len());
    let mut any_ok = false;
    for p in serving.iter() {
        let result = match state.health.get(p) {
            Some(c) if c.at.elapsed() < EVERY_WHEN_OK * 2 => c.result,
            _ => check(&state, p).await,
        };
        any_ok |= result.is_ok();
        let mut entry = json!({
            "name": p.config.name,
            "status": if result.is_ok() { "ok" } else { "unavailable" },
        });
        if detailed {
            entry["target"] = json!(p.config.target_url);
        }
        if let Err(reason) = result {
            entry["reason"] = Value::String(if detailed {
                reason
            } else {
                "the target does not serve (send an API key for details)".into()
            });
        }
        pairings.push(entry);
    }
    let (status, word) = if any_ok {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let mut body = json!({"status": word, "pairings": pairings});
    if !any_ok {
        // The one line a person reads first: the first pairing's reason.
        body["reason"] = pairings
            .first()
            .and_then(|p| p.get("reason").cloned())
            .unwrap_or_else(|| json!("no pairing configured"));
    }
    (status, Json(body)).into_response()
}

/// `GET /live`: the process serves HTTP (liveness; says nothing about the targets).
pub(super) async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
