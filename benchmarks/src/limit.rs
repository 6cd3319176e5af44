//! The analytic throughput limit of draft→verify rounds (`shared/notes/speculation.md` §D.2).
//!
//! A round with `k` draft tokens costs, sequentially, the draft's `k / R_d`, the target's verify
//! `T_v(k) = T_t·(1 + β·k)`, two network round trips (draft exchange, verify exchange) and the two
//! requests' fixed overhead `h`. It yields `E(k) = (1 − α^{k+1}) / (1 − α)` tokens on average (the
//! accepted drafts plus the target's own). A pipelined proxy (drafting the next block while the
//! target verifies) could at best reach `E(k) / max(k / R_d, T_v(k) + 2r + h)`. Tightwad's rounds
//! are sequential, so the sequential figure is the one its measurements are held to; both are
//! reported.

use serde::{Deserialize, Serialize};

/// The parameters of one benchmark cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CellModel {
    /// Target alone, tokens per second (`R_t = 1 / T_t`).
    pub target_tok_s: f64,
    /// Draft alone, tokens per second (`R_d`).
    pub draft_tok_s: f64,
    /// Per-position acceptance α.
    pub acceptance: f64,
    /// Verify cost growth per draft token (`T_v(k) = T_t·(1 + β·k)`).
    pub beta: f64,
    /// Network round-trip time per exchange, seconds.
    pub rtt_s: f64,
    /// Fixed overhead of one request at a server, seconds (a round makes two requests).
    pub request_overhead_s: f64,
}

/// Expected tokens per round: `1 + α + … + α^k`.
pub fn expected_tokens(acceptance: f64, k: usize) -> f64 {
    (0..=k).map(|i| acceptance.powi(i as i32)).sum()
}

impl CellModel {
    /// `T_v(k)`, seconds.
    pub fn verify_seconds(&self, k: usize) -> f64 {
        (1.0 + self.beta * k as f64) / self.target_tok_s
    }

    fn exchange_seconds(&self) -> f64 {
        2.0 * self.rtt_s + 2.0 * self.request_overhead_s
    }

    /// Seconds of one sequential round.
    pub fn sequential_round_seconds(&self, k: usize) -> f64 {
        k as f64 / self.draft_tok_s + self.verify_seconds(k) + self.exchange_seconds()
    }

    /// Tokens per second of sequential rounds with `k` draft tokens.
    pub fn sequential_tok_s(&self, k: usize) -> f64 {
        expected_tokens(self.acceptance, k) / self.sequential_round_seconds(k)
    }

    /// Tokens per second of perfectly pipelined rounds (drafting hidden behind verification).
    pub fn pipelined_tok_s(&self, k: usize) -> f64 {
        let round =
            (k as f64 / self.draft_tok_s).max(self.verify_seconds(k) + self.exchange_seconds());
        expected_tokens(self.acceptance, k) / round
    }

    /// The target alone, as a client reaching it directly sees it (one exchange per request of
    /// `tokens` tokens).
    pub fn direct_tok_s(&self, tokens: usize) -> f64 {
        let seconds = tokens as f64 / self.target_tok_s + self.rtt_s + self.request_overhead_s;
        tokens as f64 / seconds
    }

    /// The `k` in `1..=k_max` with the highest sequential throughput.
    pub fn best_sequential_k(&self, k_max: usize) -> usize {
        (1..=k_max.max(1))
            .max_by(|a, b| {
                self.sequential_tok_s(*a)
                    .total_cmp(&self.sequential_tok_s(*b))
            })
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> CellModel {
        CellModel {
            target_tok_s: 10.0,
            draft_tok_s: 500.0,
            acceptance: 0.8,
            beta: 0.1,
            rtt_s: 0.002,
            request_overhead_s: 0.001,
        }
    }

    #[test]
    fn expected_tokens_matches_the_closed_form() {
        for (a, k) in [(0.5, 3usize), (0.9, 8), (0.7, 1)] {
            let closed = (1.0 - f64::powi(a, k as i32 + 1)) / (1.0 - a);
            assert!((expected_tokens(a, k) - closed).abs() < 1e-12);
        }
        assert_eq!(expected_tokens(0.3, 0), 1.0);
    }

    #[test]
    fn a_round_adds_up_its_parts() {
        let c = cell();
        // 4/500 + 0.1·1.4 + 2·0.002 + 2·0.001
        let want = 0.008 + 0.14 + 0.004 + 0.002;
        assert!((c.sequential_round_seconds(4) - want).abs() < 1e-12);
        assert!(c.pipelined_tok_s(4) >= c.sequential_tok_s(4));
    }

    #[test]
    fn best_k_grows_with_acceptance() {
        let low = CellModel {
            acceptance: 0.5,
            ..cell()
        };
        let high = CellModel {
            acceptance: 0.95,
            ..cell()
        };
        assert!(high.best_sequential_k(8) > low.best_sequential_k(8));
    }
}
