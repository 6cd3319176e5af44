//! The last requests, whatever path served them: speculative (one-pass, multi-prompt, native),
//! target-only, passthrough with its reason, or an error with its message.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{json, Value};

use super::super::AppState;
use crate::engine::{ForwardReason, Generation, Verification};
use crate::metrics::ServedBy;

/// Requests kept for the page.
const RECENT: usize = 200;

/// One finished request, as the dashboard lists it. Figures the proxy does not see (a relayed
/// passthrough reply's tokens) are absent rather than zero.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: String,
    pub model: String,
    /// When it finished (ms since the Unix epoch).
    pub at_ms: u64,
    pub served_by: ServedBy,
    /// The path in words: `speculative · one-pass`, `native`, `target only`, `passthrough`, …
    pub path: String,
    /// Why it was passed through, or why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    pub elapsed_ms: Option<u64>,
    pub tok_s: Option<f64>,
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
    pub acceptance: Option<f64>,
}

/// The last requests, newest first.
#[derive(Debug, Default)]
pub struct RecentRequests(Mutex<VecDeque<RequestRecord>>);

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RecentRequests {
    /// A generation the engine finished (`path`: how, in words; see [`AppState::record_generation`]).
    pub fn record_with_path(&self, id: &str, model: &str, g: &Generation, path: String) {
        let secs = g.elapsed.as_secs_f64();
        self.push(RequestRecord {
            id: id.to_string(),
            model: model.to_string(),
            at_ms: unix_ms(),
            served_by: g.served_by,
            path,
            reason: None,
            prompt_tokens: Some(g.prompt_tokens),
            completion_tokens: Some(g.completion_tokens),
            elapsed_ms: Some(g.elapsed.as_millis() as u64),
            tok_s: (secs > 0.0).then(|| g.completion_tokens as f64 / secs),
            rounds: g.rounds,
            drafted: g.drafted,
            accepted: g.accepted,
            acceptance: (g.drafted > 0).then(|| g.accepted as f64 / g.drafted as f64),
        });
    }

    /// A generation, its path named from how it was served alone.
    pub fn record(&self, id: &str, model: &str, g: &Generation) {
        self.record_with_path(id, model, g, path_words(g.served_by, None, false));
    }

    /// A request the engine passed to the target untouched (its reply is relayed as it comes,
    /// so its tokens and time are the target's and not counted here).
    pub fn forwarded(&self, id: &str, model: &str, reason: &ForwardReason) {
        self.push(RequestRecord {
            reason: Some(format!("{}: {reason}", reason.tag())),
            ..Self::bare(id, model, ServedBy::Passthrough, "passthrough")
        });
    }

    /// A request that failed after it was admitted (the target down, a generation cut off).
    pub fn failed(&self, id: &str, model: &str, message: &str) {
        self.push(RequestRecord {
            reason: Some(message.to_string()),
            ..Self::bare(id, model, ServedBy::Error, "error")
        });
    }

    fn bare(id: &str, model: &str, served_by: ServedBy, path: &str) -> RequestRecord {
        RequestRecord {
            id: id.to_string(),
            model: model.to_string(),
            at_ms: unix_ms(),
            served_by,
            path: path.to_string(),
            reason: None,
            prompt_tokens: None,
            completion_tokens: None,
            elapsed_ms: None,
            tok_s: None,
            rounds: 0,
            drafted: 0,
            accepted: 0,
            acceptance: None,
        }
    }

    fn push(&self, rec: RequestRecord) {
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

/// How a generation was served, in words.
fn path_words(served_by: ServedBy, verification: Option<&Verification>, native: bool) -> String {
    match served_by {
        ServedBy::Speculative if native => "native".into(),
        ServedBy::Speculative => match verification {
            Some(Verification::OnePass) => "speculative · one-pass".into(),
            Some(Verification::MultiPrompt { .. }) => "speculative · multi-prompt".into(),
            None => "speculative".into(),
        },
        ServedBy::TargetOnly => "target only".into(),
        ServedBy::Passthrough => "passthrough".into(),
        ServedBy::Error => "error".into(),
    }
}

impl AppState {
    /// Record a finished generation for the dashboard, its path named with the pairing's
    /// verification (one-pass, multi-prompt) or native pairing.
    pub(in crate::api) fn record_generation(&self, id: &str, model: &str, g: &Generation) {
        let pairings = self.pairings.current();
        let pairing = pairings.iter().find(|p| p.config.answers_to(model));
        let native = pairing.is_some_and(|p| p.config.native && p.drafter_views().is_empty());
        let verification = pairing.and_then(|p| p.verification_view());
        let path = path_words(g.served_by, verification.as_ref(), native);
        self.recent.record_with_path(id, model, g, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_listed_with_its_reason() {
        let r = RecentRequests::default();
        r.forwarded("a", "m", &ForwardReason::SpeculationOff);
        r.failed("b", "m", "the target is down");
        let v = r.json();
        let list = v["requests"].as_array().expect("list");
        assert_eq!(list[0]["path"], "error");
        assert_eq!(list[0]["reason"], "the target is down");
        assert_eq!(list[1]["served_by"], "passthrough");
        assert!(
            list[1]["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("speculation_off: ")),
            "{v}"
        );
        assert!(list[1]["tok_s"].is_null());
        assert_eq!(
            path_words(ServedBy::Speculative, Some(&Verification::OnePass), false),
            "speculative · one-pass"
        );
    }
}
