//! Several draft servers for one target: which one drafts a request, and what each one did.
//!
//! Drafters differ in two ways that matter: how often the target accepts what they propose and
//! how fast they propose it (a better model on a slower host, a worse one on a faster host). Each
//! drafter therefore has its own [`adapt::Controller`], fed only by the rounds it drafted, and a
//! request goes to the drafter whose measured rounds deliver the most tokens per second
//! ([`adapt::Controller::round_goodput`]: expected tokens per round over draft + verify time, so
//! acceptance × speed). Drafters with too few rounds to rank are tried first, and every
//! [`REVISIT_EVERY`]-th request goes to the one chosen least recently, so a drafter that got
//! better (another model loaded, a busy host freed up) is noticed.
//!
//! Every choice is a "win" in the per-drafter figures (`/metrics`, `/v1/tightwad/stats`,
//! `tightwad status`). A drafter that fails mid-answer is marked failed (re-probed after the retry
//! interval) and the answer continues with the next usable drafter; the output is the target's
//! either way, since every drafter's tokens go through the same verification.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::adapt;
use crate::backend::llamacpp::LlamaServer;
use crate::metrics::DrafterMetrics;

/// Rounds a drafter needs before its estimates are trusted to rank it against the others.
pub const MIN_ROUNDS_TO_RANK: u64 = 8;
/// Every this many requests, the drafter chosen least recently gets one (keeps estimates fresh).
pub const REVISIT_EVERY: u64 = 10;

/// One draft server of a pairing, with its own controller and counters.
pub struct DraftSlot {
    pub url: String,
    pub server: LlamaServer,
    pub controller: Arc<Mutex<adapt::Controller>>,
    pub metrics: DrafterMetrics,
    /// The pairing's request number when this drafter was last chosen (0: never).
    last_chosen: AtomicU64,
}

impl DraftSlot {
    pub fn new(
        url: String,
        server: LlamaServer,
        controller: adapt::Controller,
        metrics: DrafterMetrics,
    ) -> Self {
        DraftSlot {
            url,
            server,
            controller: Arc::new(Mutex::new(controller)),
            metrics,
            last_chosen: AtomicU64::new(0),
        }
    }

    /// Run `f` on this drafter's controller (a poisoned lock still holds plain numbers).
    pub fn with_controller<T>(&self, f: impl FnOnce(&mut adapt::Controller) -> T) -> T {
        let mut guard = self
            .controller
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    fn rank_key(&self) -> (bool, f64) {
        self.with_controller(|c| {
            (
                !matches!(c.mode(), adapt::Mode::Off { .. }),
                c.round_goodput().unwrap_or(0.0),
            )
        })
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
        .filter(|&&i| slots[i].metrics.rounds.get() < MIN_ROUNDS_TO_RANK)
        .min_by_key(|&&i| slots[i].metrics.rounds.get())
    {
        return Some(i);
    }
    if request_no.is_multiple_of(REVISIT_EVERY) {
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
    /// Tokens per second its speculative stretches delivered (smoothed), as measured.
    pub tok_s: Option<f64>,
    /// Tokens per second its rounds are predicted to deliver at the best k (what ranks it).
    pub round_goodput_tok_s: Option<f64>,
    pub controller: adapt::ControllerView,
}

impl DraftSlot {
    pub fn view(&self, unusable: Option<String>) -> DrafterView {
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
        }
    }
}
