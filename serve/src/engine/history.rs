//! The controllers' decisions over time (for the dashboard's timeline), and the operator's
//! override of a pairing's speculation (on, off, or back to the controller).

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::controller::{Controller, Decision};
use super::pairing::{lock_controller, Pairing};

/// Decisions a controller keeps (a decision comes at most every few seconds; this is hours of a
/// flapping pairing, minutes at worst).
pub const DECISIONS_KEPT: usize = 200;

/// One decision, when it was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `on`, `off`, `probing`, or `auto` (an operator handed the decisions back).
    pub state: &'static str,
    pub reason: String,
    /// Whose controller decided, where the pairing has several (a draft server's URL, `native`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drafter: Option<String>,
}

/// A bounded history of one controller's decisions, oldest first.
#[derive(Debug, Clone, Default)]
pub struct DecisionHistory(VecDeque<DecisionRecord>);

impl DecisionHistory {
    pub fn push(&mut self, d: &Decision) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        if self.0.len() == DECISIONS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(DecisionRecord {
            at_ms,
            state: d.state,
            reason: d.reason.clone(),
            drafter: None,
        });
    }

    pub fn records(&self) -> impl Iterator<Item = &DecisionRecord> {
        self.0.iter()
    }
}

impl Pairing {
    /// Every controller of this pairing with the name the history gives it (`None`: the pairing
    /// has one that decides).
    fn controllers(&self) -> Vec<(Option<String>, &std::sync::Mutex<Controller>)> {
        let several = self.drafts.len() + usize::from(self.native_alternative.is_some()) > 1;
        let mut all: Vec<(Option<String>, &std::sync::Mutex<Controller>)> =
            vec![(None, &*self.controller)];
        for d in &self.drafts {
            all.push((several.then(|| d.url.clone()), &*d.controller));
        }
        if let Some(n) = &self.native_alternative {
            all.push((Some("native".into()), &*n.controller));
        }
        all
    }

    /// An operator's override of speculation for this pairing, applied to every controller:
    /// `Some(true)` on for every request, `Some(false)` off (requests go to the target untouched),
    /// `None` back to the controllers' own decisions.
    pub fn set_override(&self, forced: Option<bool>) {
        let now = Instant::now();
        for (_, c) in self.controllers() {
            lock_controller(c).set_override(now, forced);
        }
        self.publish_controller_state();
    }

    /// The operator's override in force (`None`: the controllers decide).
    pub fn speculation_override(&self) -> Option<bool> {
        lock_controller(&self.controller).forced()
    }

    /// Why the target did not answer the last probe, while no probe has succeeded since.
    pub fn unreachable(&self) -> Option<String> {
        self.probe_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, e)| e.to_string())
    }

    /// The decisions of every controller of this pairing, oldest first; an operator's override
    /// (taken by all of them at once) is listed once.
    pub fn decisions(&self) -> Vec<DecisionRecord> {
        let mut all: Vec<DecisionRecord> = Vec::new();
        for (name, c) in self.controllers() {
            let c = lock_controller(c);
            all.extend(c.history.records().map(|r| DecisionRecord {
                drafter: name.clone(),
                ..r.clone()
            }));
        }
        all.sort_by_key(|r| r.at_ms);
        all.dedup_by(|b, a| {
            a.state == b.state && a.reason == b.reason && b.at_ms.saturating_sub(a.at_ms) < 1000
        });
        all
    }
}

#[cfg(test)]
mod tests {
    use super::super::controller::Controller;
    use super::*;

    #[test]
    fn the_history_is_bounded_and_keeps_the_newest() {
        let mut h = DecisionHistory::default();
        for i in 0..DECISIONS_KEPT + 5 {
            h.push(&Decision {
                state: "off",
                reason: format!("r{i}"),
            });
        }
        let records: Vec<_> = h.records().collect();
        assert_eq!(records.len(), DECISIONS_KEPT);
        assert_eq!(records[0].reason, "r5");
        assert_eq!(
            records.last().map(|r| r.reason.as_str()),
            Some(format!("r{}", DECISIONS_KEPT + 4).as_str())
        );
    }

    #[test]
    fn an_override_rules_the_controller_until_handed_back() {
        let now = Instant::now();
        // Adaptive or pinned on (as the tests' pairings are), the operator's word rules.
        for mut c in [Controller::new(4, None), Controller::fixed(4)] {
            c.set_override(now, Some(false));
            assert!(!c.plan_request(now).speculate);
            assert_eq!(c.choose_k(), 0);
            assert!(
                c.passthrough_while_off(now),
                "forced off forwards every request"
            );
            assert_eq!(c.view().forced, Some(false));
            c.set_override(now, Some(true));
            assert!(c.plan_request(now).speculate);
            assert!(c.choose_k() >= 1);
            assert!(!c.passthrough_while_off(now));
            // A measured loss does not switch a forced-on controller off.
            c.record_target_only(now, 32, 0.1);
            for _ in 0..20 {
                c.record_round(now, 4, 0, 0.5, 0.5);
            }
            assert!(c.plan_request(now).speculate);
            c.set_override(now, None);
            assert_eq!(c.forced(), None);
            let states: Vec<_> = c.history.records().map(|r| r.state).collect();
            assert_eq!(states, ["off", "on", "auto"], "{states:?}");
        }
    }
}
