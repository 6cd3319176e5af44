//! What the charts draw: a ring of samples per pairing (one every [`SAMPLE_EVERY`], the last
//! [`SAMPLES_KEPT`]: ten minutes), and the timeline of the controllers' decisions merged with the
//! operator's actions (drain, resume; speculation on/off/auto is the controllers' own decision).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::requests::unix_ms;
use crate::api::AppState;
use crate::engine::{controller::Mode, Pairing};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
pub const SAMPLES_KEPT: usize = 300;
const EVENTS_KEPT: usize = 100;

/// One pairing at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    /// Tokens/s through the proxy: the controller's measured speculative throughput, else the
    /// smoothed speed of the last speculative requests.
    pub proxy_tok_s: Option<f64>,
    /// Tokens/s of the target alone: the controller's timed target-only stretches, else the
    /// smoothed speed of the last target-only requests.
    pub target_tok_s: Option<f64>,
    /// The draft length the controller would choose now.
    pub k: Option<usize>,
    /// 1 on, 0.5 probing, 0 off.
    pub state: f64,
    /// Tokens returned to clients since the previous sample, per second.
    pub generated_tok_s: f64,
}

/// An operator's action on a pairing, for the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorEvent {
    pub at_ms: u64,
    pub pairing: String,
    pub state: &'static str,
    pub reason: String,
}

/// The dashboard's own state: samples and operator events.
#[derive(Debug, Default)]
pub struct Dashboard {
    samples: Mutex<HashMap<String, (u64, VecDeque<Sample>)>>,
    events: Mutex<VecDeque<OperatorEvent>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Dashboard {
    /// Sample every pairing every [`SAMPLE_EVERY`] for as long as the proxy's state lives.
    pub fn spawn_sampler(state: &Arc<AppState>) {
        let weak: Weak<AppState> = Arc::downgrade(state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                for p in state.pairings.current().iter() {
                    state.dashboard.sample(p);
                }
            }
        });
    }

    /// Take one sample of `p`.
    pub fn sample(&self, p: &Pairing) {
        let view = p.controller_view();
        let stats = p.metrics.snapshot();
        let generated = stats.generated_tokens;
        let state = match view.mode {
            Mode::On => 1.0,
            Mode::Probing { .. } => 0.5,
            Mode::Off { .. } => 0.0,
        };
        let mut all = lock(&self.samples);
        let (last_generated, ring) = all.entry(p.config.name.clone()).or_default();
        let delta = generated.saturating_sub(*last_generated);
        let first = ring.is_empty();
        *last_generated = generated;
        if ring.len() == SAMPLES_KEPT {
            ring.pop_front();
        }
        ring.push_back(Sample {
            at_ms: unix_ms(),
            proxy_tok_s: view
                .speculative_goodput_tok_s
                .or(stats.rates.speculative_tok_s),
            target_tok_s: view.target_tok_s.or(stats.rates.target_only_tok_s),
            k: (state > 0.0).then_some(view.k),
            state,
            generated_tok_s: if first {
                0.0
            } else {
                delta as f64 / SAMPLE_EVERY.as_secs_f64()
            },
        });
    }

    /// Drop the samples of a pairing a reload removed (a pairing added later under its name
    /// starts a fresh chart).
    pub fn forget(&self, pairing: &str) {
        lock(&self.samples).remove(pairing);
    }

    /// Note an operator's action on `pairing` (drain, resume, a reload) for the timeline.
    pub fn event(&self, pairing: &str, state: &'static str, reason: String) {
        let mut events = lock(&self.events);
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(OperatorEvent {
            at_ms: unix_ms(),
            pairing: pairing.to_string(),
            state,
            reason,
        });
    }

    /// The page's charts and timeline, per pairing (see [`super::data`]).
    pub fn json(&self, pairings: &[Arc<Pairing>]) -> Value {
        let samples = lock(&self.samples);
        let events = lock(&self.events);
        let list: Vec<Value> = pairings
            .iter()
            .map(|p| {
                let name = &p.config.name;
                let ring = samples.get(name).map(|(_, r)| r);
                let series = |f: &dyn Fn(&Sample) -> Value| -> Vec<Value> {
                    ring.map(|r| r.iter().map(f).collect()).unwrap_or_default()
                };
                let mut timeline: Vec<Value> =
                    p.decisions()
                        .into_iter()
                        .map(|d| json!(d))
                        .chain(events.iter().filter(|e| &e.pairing == name).map(
                            |e| json!({"at_ms": e.at_ms, "state": e.state, "reason": e.reason}),
                        ))
                        .collect();
                timeline.sort_by_key(|v| v["at_ms"].as_u64().unwrap_or(0));
                let view = p.controller_view();
                json!({
                    "pairing": name,
                    "series": {
                        "t": series(&|s| json!(s.at_ms as f64 / 1000.0)),
                        "proxy_tok_s": series(&|s| json!(s.proxy_tok_s)),
                        "target_tok_s": series(&|s| json!(s.target_tok_s)),
                        "k": series(&|s| json!(s.k)),
                        "state": series(&|s| json!(s.state)),
                        "generated_tok_s": series(&|s| json!(s.generated_tok_s)),
                    },
                    "acceptance_by_position": view.acceptance_by_position,
                    "k": view.k,
                    "mode": view.mode,
                    "forced": p.speculation_override(),
                    "target_error": p.unreachable(),
                    "timeline": timeline,
                })
            })
            .collect();
        json!({
            "now_ms": unix_ms(),
            "sample_every_s": SAMPLE_EVERY.as_secs(),
            "pairings": list,
        })
    }
}
