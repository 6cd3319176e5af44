//! Several draft servers for one target: which one drafts a request, and what each one did.
//!
//! Drafters differ in two ways that matter: how often the target accepts what they propose and
//! how fast they propose it (a better model on a slower host, a worse one on a faster host). Each
//! drafter therefore has its own [`controller::Controller`], fed only by the rounds it drafted, and a
//! request goes to the drafter whose speculative stretches delivered the most tokens per second
//! ([`controller::Controller::measured_goodput`]: accepted tokens over wall time, so acceptance ×
//! speed, measured whole requests at a time, which averages out the per-round timing noise of
//! a busy host; the model's per-round prediction only breaks ties before that exists).
//! Drafters with too few rounds to rank are tried first, and every [`REVISIT_EVERY`]-th request
//! goes to the one chosen least recently, so a drafter that got better (another model loaded, a
//! busy host freed up) is noticed.
//!
//! Every choice is a "win" in the per-drafter figures (`/metrics`, `/v1/tightwad/stats`,
//! `tightwad status`). A drafter that fails mid-answer is marked failed (re-probed after the retry
//! interval) and the answer continues with the next usable drafter; the output is the target's
//! either way, since every drafter's tokens go through the same verification.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::controller;
use super::pipelining::{PipelineChooser, Pipelining, PipeliningView};
use crate::backend::Backend;
use crate::metrics::DrafterMetrics;

/// Rounds a drafter needs before its estimates are trusted to rank it against the others.
pub const MIN_ROUNDS_TO_RANK: u64 = 8;
/// Every this many requests, the drafter chosen least recently gets one (keeps estimates fresh).
pub const REVISIT_EVERY: u64 = 8;

/// One draft server of a pairing, with its own controller and counters.
pub struct DraftSlot {
    pub url: String,
    pub server: Backend,
    pub controller: Arc<Mutex<controller::Controller>>,
    pub metrics: DrafterMetrics,
    /// Whether this drafter drafts ahead while the target verifies (`pipeline = "auto"`).
    pub pipelining: Mutex<PipelineChooser>,
    /// The pairing's request number when this drafter was last chosen (0: never).
    last_chosen: AtomicU64,
}

impl DraftSlot {
    pub fn new(
        url: String,
        server: Backend,
        controller: controller::Controller,
        metrics: DrafterMetrics,
    ) -> Self {
        DraftSlot {
            url,
            server,
            controller: Arc::new(Mutex::new(controller)),
            metrics,
            pipelining: Mutex::new(PipelineChooser::default()),
            last_chosen: AtomicU64::new(0),
        }
    }

    /// Run `f` on this drafter's controller (a poisoned lock still holds plain numbers).
    pub fn with_controller<T>(&self, f: impl FnOnce(&mut controller::Controller) -> T) -> T {
        let mut guard = self
            .controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Run `f` on this drafter's pipelining measurements (a poisoned lock still holds numbers).
    pub fn with_pipelining<T>(&self, f: impl FnOnce(&mut PipelineChooser) -> T) -> T {
        let mut guard = self
            .pipelining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    fn rank_key(&self) -> (bool, f64) {
        self.with_controller(|c| {
            (
                !matches!(c.mode(), controller::Mode::Off { .. }),
                c.measured_goodput()
                    .or_else(|| c.round_goodput())
                    .unwrap_or(0.0),
            )
        })
    }

    /// Not enough measured to be ranked against the others yet.
    fn unmeasured(&self) -> bool {
        self.metrics.rounds.get() < MIN_ROUNDS_TO_RANK
            || self.with_controller(|c| c.measured_goodput().is_none())
    }
}

/// The drafter for the next request among `usable` (indices into `slots`), or `None`.
/// `request_no` counts the pairing's requests from 1 (drives the periodic revisit).
pub fn choose(slots: &[DraftSlot], usable: &[usize], request_no: u64) -> Option<usize> {
    let candidates: Vec<usize> = usable
        .iter()
        .copied()
        .filter(|&i| i < slots.len())
        .collect();
    if candidates.len() <= 1 {
        return candidates.first().copied();
    }
    // Unmeasured first: the one with the fewest rounds, so every drafter gets ranked.
    if let Some(&i) = candidates
        .iter()
        .filter(|&&i| slots[i].unmeasured())
        .min_by_key(|&&i| slots[i].metrics.rounds.get())
    {
        return Some(i);
    }
    if request_no % REVISIT_EVERY == 0 {
        return candidates
            .iter()
            .copied()
            .min_by_key(|&i| slots[i].last_chosen.load(Ordering::Relaxed));
    }
    candidates.iter().copied().max_by(|&a, &b| {
        let (on_a, s_a) = slots[a].rank_key();
        let (on_b, s_b) = slots[b].rank_key();
        on_a.cmp(&on_b).then(s_a.total_cmp(&s_b))
    })
}

/// Count a choice (a "win") for `slot`.
pub fn chosen(slot: &DraftSlot, request_no: u64) {
    slot.last_chosen.store(request_no, Ordering::Relaxed);
    slot.metrics.wins.inc();
}

/// One drafter's figures for the stats JSON and `tightwad status`.
#[derive(Debug, Clone, Serialize)]
pub struct DrafterView {
    pub url: String,
    /// `None` when usable; otherwise why not (unreachable, other vocabulary, failed mid-answer).
    pub unusable: Option<String>,
    /// Times this drafter was chosen for a request (or took over from a failed one).
    pub wins: u64,
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
    pub acceptance: Option<f64>,
    pub failures: u64,
    /// Tokens per second its speculative stretches delivered (smoothed): what ranks it.
    pub tok_s: Option<f64>,
    /// Tokens per second its rounds are predicted to deliver at the best k (ranks it until
    /// `tok_s` is measured).
    pub round_goodput_tok_s: Option<f64>,
    pub controller: controller::ControllerView,
    /// Whether it drafts ahead while the target verifies, and the rates that decided it.
    pub pipelining: PipeliningView,
}

impl DraftSlot {
    pub fn view(&self, unusable: Option<String>, setting: Pipelining) -> DrafterView {
        let m = &self.metrics;
        let (drafted, accepted) = (m.drafted.get(), m.accepted.get());
        let (controller, goodput) = self.with_controller(|c| (c.view(), c.round_goodput()));
        DrafterView {
            url: self.url.clone(),
            unusable,
            wins: m.wins.get(),
            rounds: m.rounds.get(),
            drafted,
            accepted,
            acceptance: (drafted > 0).then(|| accepted as f64 / drafted as f64),
            failures: m.failures.get(),
            tok_s: controller.speculative_goodput_tok_s,
            round_goodput_tok_s: goodput,
            controller,
            pipelining: self.with_pipelining(|p| p.view(setting)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::types::Role;
    use std::time::{Duration, Instant};

    fn slot(metrics: &crate::metrics::Metrics, url: &str) -> DraftSlot {
        let server = Backend::new(
            crate::backend::BackendKind::Llamacpp,
            Role::Draft,
            url,
            Duration::from_secs(1),
        )
        .expect("client");
        DraftSlot::new(
            url.into(),
            server,
            controller::Controller::fixed(4),
            metrics.pairing("p").drafter(url),
        )
    }

    /// `rounds` rounds at full or partial acceptance, then one request's measured throughput.
    fn feed(s: &DraftSlot, rounds: u64, accepted: usize, tok_s: f64) {
        for _ in 0..rounds {
            s.metrics.round(4, accepted);
            s.with_controller(|c| c.record_round(Instant::now(), 4, accepted, 0.01, 0.02));
        }
        s.with_controller(|c| c.record_speculative_request(Instant::now(), 100, 100.0 / tok_s));
    }

    #[test]
    fn unmeasured_drafters_first_then_the_best_with_periodic_revisits() {
        let m = crate::metrics::Metrics::new();
        let slots = vec![slot(&m, "http://a:1"), slot(&m, "http://b:2")];
        let usable = [0, 1];
        // Nothing measured: the one with fewest rounds (ties: the first).
        assert_eq!(choose(&slots, &usable, 1), Some(0));
        feed(&slots[0], MIN_ROUNDS_TO_RANK, 4, 50.0);
        assert_eq!(choose(&slots, &usable, 2), Some(1), "b is still unmeasured");
        feed(&slots[1], MIN_ROUNDS_TO_RANK, 1, 20.0);
        assert_eq!(choose(&slots, &usable, 3), Some(0), "a delivers more");
        chosen(&slots[0], 3);
        chosen(&slots[1], 2);
        assert_eq!(
            choose(&slots, &usable, REVISIT_EVERY),
            Some(1),
            "the periodic revisit goes to the one chosen least recently"
        );
        // Only usable drafters count.
        assert_eq!(choose(&slots, &[1], 3), Some(1));
        assert_eq!(choose(&slots, &[], 3), None);
        chosen(&slots[0], 4);
        assert_eq!(slots[0].view(None, Pipelining::Auto).wins, 2);
    }
}
