//! What the controller's estimates predict: acceptance per draft position (as measured, and as
//! high as its evidence allows), the tokens a round of k drafts yields, and the speedup of a
//! round over the target alone — the point estimate chooses k, the optimistic one must still
//! show a loss before speculation stops.

use super::estimate::Rate;
use super::{Controller, ACCEPT_PRIOR, K_MAX, OPTIMISM};

impl Controller {
    /// Acceptance at draft position `j`. A position never drafted takes the mean of those that
    /// were (the prior only before any): conditional acceptance varies little with the position
    /// (0.77–0.99 over positions 1–8 on the H100 benchmark), and a fixed 0.6 for the positions
    /// past the k tried kept the controller at k = 4 (0.80x predicted) where k = 8 gave 1.10x.
    /// A position's first outcomes start from that same mean ([`Controller::pooled_alpha`], see
    /// `record_acceptance`), not from the fixed prior.
    pub(super) fn alpha(&self, j: usize) -> f64 {
        let rate = &self.accept[j];
        let value = if rate.samples() > 0 {
            rate.get()
        } else {
            self.pooled_alpha()
        };
        value.clamp(0.0, 0.999)
    }

    /// Acceptance at position `j` as high as its evidence still allows: `OPTIMISM` standard errors
    /// above [`Controller::alpha`] (a position with few outcomes could well be better than it
    /// reads). Only decisions to stop speculating use it ([`Controller::optimistic_best_k`]).
    fn alpha_optimistic(&self, j: usize) -> f64 {
        let a = self.alpha(j);
        let rate = &self.accept[j];
        let n = if rate.samples() > 0 {
            rate.effective_samples()
        } else {
            Rate::with_prior(a).effective_samples()
        };
        (a + OPTIMISM * (a * (1.0 - a) / n).sqrt()).clamp(0.0, 0.999)
    }

    /// The mean acceptance of the positions drafted so far (`ACCEPT_PRIOR` before any).
    pub(super) fn pooled_alpha(&self) -> f64 {
        let (sum, n) = self
            .accept
            .iter()
            .filter(|r| r.samples() > 0)
            .fold((0.0, 0), |(sum, n), r| (sum + r.get(), n + 1));
        if n == 0 {
            ACCEPT_PRIOR
        } else {
            sum / f64::from(n)
        }
    }

    /// Expected tokens from a round with `k` draft tokens (the target's own token included).
    pub fn expected_tokens(&self, k: usize) -> f64 {
        self.tokens_with(k, |j| self.alpha(j))
    }

    fn tokens_with(&self, k: usize, alpha: impl Fn(usize) -> f64) -> f64 {
        let mut e = 1.0;
        let mut p = 1.0;
        for j in 0..k.min(K_MAX) {
            p *= alpha(j);
            e += p;
        }
        e
    }

    /// Predicted speedup of a round with `k` draft tokens over the target alone.
    pub fn predicted_speedup(&self, k: usize) -> Option<f64> {
        self.speedup_with(k, self.expected_tokens(k))
    }

    fn speedup_with(&self, k: usize, tokens: f64) -> Option<f64> {
        let r_t = self.target_tok_s.get()?;
        let cost = self.draft_cost.predict(k)? + self.verify_cost.predict(k)?;
        (cost > 0.0).then(|| tokens / (cost * r_t))
    }

    /// The best draft length and its speedup with every position's acceptance as high as its
    /// evidence allows ([`Controller::alpha_optimistic`]): what a decision to stop speculating
    /// must find below 1. With a few rounds' outcomes the point estimate swings by 20% (the H100's
    /// fast target, where pinned k = 8 paid 1.16x, switched itself off at "0.99x predicted" in
    /// its warm-up); a pairing that truly loses reads a loss either way.
    pub fn optimistic_best_k(&self) -> Option<(usize, f64)> {
        (1..=self.cap())
            .filter_map(|k| {
                let tokens = self.tokens_with(k, |j| self.alpha_optimistic(j));
                self.speedup_with(k, tokens).map(|s| (k, s))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// Tokens per second its speculative stretches actually delivered (smoothed over requests).
    pub fn measured_goodput(&self) -> Option<f64> {
        self.goodput_tok_s.get()
    }

    /// Tokens per second a round delivers at its best draft length: expected tokens (acceptance)
    /// over the measured draft + verify time (speed). Needs no target-alone speed, so it ranks
    /// drafters of one pairing against each other (`engine::drafters`) from their first rounds.
    pub fn round_goodput(&self) -> Option<f64> {
        (1..=self.cap())
            .filter_map(|k| {
                let cost = self.draft_cost.predict(k)? + self.verify_cost.predict(k)?;
                (cost > 0.0).then(|| self.expected_tokens(k) / cost)
            })
            .max_by(f64::total_cmp)
    }

    /// The best draft length and its predicted speedup (`None` until the estimates exist).
    pub fn best_k(&self) -> Option<(usize, f64)> {
        (1..=self.cap())
            .filter_map(|k| self.predicted_speedup(k).map(|s| (k, s)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}
