//! The dashboard: one page embedded in the binary (no CDN, no build step) that polls the JSON
//! endpoints below, plus those endpoints' state: the recent requests and the hosts' last status.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::response::Html;
use serde::Serialize;
use serde_json::{json, Value};

use crate::engine::Generation;
use crate::metrics::ServedBy;

/// Where the dashboard's host view comes from: the coordinator asks the agents (the serving
/// library knows nothing of them), a test may hand in a fixed snapshot.
pub trait HostsSource: Send + Sync + 'static {
    /// The hosts as `{"hosts": [...]}` JSON, or why they could not be asked.
    fn snapshot(&self) -> futures::future::BoxFuture<'_, anyhow::Result<Value>>;
}

pub const PAGE: &str = include_str!("dashboard.html");
const RECENT: usize = 50;

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// One finished request, as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: String,
    pub model: String,
    pub served_by: ServedBy,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub elapsed_ms: u64,
    pub tok_s: f64,
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
}

/// The last requests, newest first.
#[derive(Debug, Default)]
pub struct RecentRequests(Mutex<VecDeque<RequestRecord>>);

impl RecentRequests {
    pub fn record(&self, id: &str, model: &str, g: &Generation) {
        let secs = g.elapsed.as_secs_f64();
        let rec = RequestRecord {
            id: id.to_string(),
            model: model.to_string(),
            served_by: g.served_by,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            elapsed_ms: g.elapsed.as_millis() as u64,
            tok_s: if secs > 0.0 {
                g.completion_tokens as f64 / secs
            } else {
                0.0
            },
            rounds: g.rounds,
            drafted: g.drafted,
            accepted: g.accepted,
        };
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.push_front(rec);
        q.truncate(RECENT);
    }

    pub fn json(&self) -> Value {
        let q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        json!({ "requests": q.iter().collect::<Vec<_>>() })
    }
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
