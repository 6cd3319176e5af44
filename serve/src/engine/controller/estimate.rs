//! The controller's two estimators: a moving average (speeds, acceptance) and a linear cost fit
//! over k (the draft's and the verification's seconds per round), both forgetting old samples so
//! they follow a machine whose load changes.

use serde::Serialize;

/// An exponentially weighted moving average.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Ewma {
    value: Option<f64>,
}

impl Ewma {
    pub fn update(&mut self, x: f64, weight: f64) {
        if !x.is_finite() {
            return;
        }
        self.value = Some(match self.value {
            Some(v) => (1.0 - weight) * v + weight * x,
            None => x,
        });
    }
    pub fn get(&self) -> Option<f64> {
        self.value
    }
}

/// A probability estimated from 0/1 outcomes (a draft position's acceptance): it starts at a
/// prior worth `PRIOR_SAMPLES` outcomes, averages its first outcomes evenly, then forgets old ones
/// like an EWMA of weight `FORGET`.
///
/// Why not an [`Ewma`] seeded by its first sample: one early rejection then pinned a position
/// near 0, so the controller never chose a k long enough to correct it. Measured on the CPU
/// suite's slow target: the third position read 0.09 after 7 rounds at k = 2 (pinned k = 4 saw
/// 0.77 there), the controller predicted 0.94x and switched off where k = 4 gave 1.33x.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rate {
    value: f64,
    samples: u32,
}

impl Rate {
    const PRIOR_SAMPLES: f64 = 2.0;
    const FORGET: f64 = 0.1;

    pub const fn with_prior(prior: f64) -> Self {
        Rate {
            value: prior,
            samples: 0,
        }
    }

    pub fn update(&mut self, outcome: f64) {
        if !outcome.is_finite() {
            return;
        }
        self.samples = self.samples.saturating_add(1);
        let weight = (1.0 / (f64::from(self.samples) + Self::PRIOR_SAMPLES)).max(Self::FORGET);
        self.value = (1.0 - weight) * self.value + weight * outcome;
    }

    pub fn get(&self) -> f64 {
        self.value
    }

    /// Outcomes seen (the prior not counted).
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// How many outcomes the value is worth: the prior's and those seen while they are averaged
    /// evenly, then at most what a moving average of weight `FORGET` keeps ((2 − w) / w).
    pub fn effective_samples(&self) -> f64 {
        (f64::from(self.samples) + Self::PRIOR_SAMPLES).min((2.0 - Self::FORGET) / Self::FORGET)
    }
}

/// `y ≈ a + b·k`, least squares with exponential forgetting, so costs track a changing machine.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LinearCost {
    s1: f64,
    sk: f64,
    skk: f64,
    sy: f64,
    sky: f64,
}

impl LinearCost {
    const DECAY: f64 = 0.95;

    pub fn observe(&mut self, k: usize, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let k = k as f64;
        let d = Self::DECAY;
        self.s1 = d * self.s1 + 1.0;
        self.sk = d * self.sk + k;
        self.skk = d * self.skk + k * k;
        self.sy = d * self.sy + seconds;
        self.sky = d * self.sky + k * seconds;
    }

    /// Predicted seconds for `k`; `None` before any observation.
    pub fn predict(&self, k: usize) -> Option<f64> {
        if self.s1 < 1e-9 {
            return None;
        }
        let mean_k = self.sk / self.s1;
        let mean_y = self.sy / self.s1;
        let var = self.skk / self.s1 - mean_k * mean_k;
        let slope = if var > 1e-6 {
            ((self.sky / self.s1 - mean_k * mean_y) / var).max(0.0)
        } else {
            // One k seen so far: assume cost proportional to tokens handled beyond a fixed half.
            mean_y / (2.0 * (mean_k + 1.0))
        };
        let intercept = (mean_y - slope * mean_k).max(0.0);
        Some(intercept + slope * k as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_early_rejection_does_not_pin_a_rate_near_zero() {
        let mut r = Rate::with_prior(0.6);
        r.update(0.0);
        assert!((r.get() - 0.4).abs() < 1e-9, "{}", r.get());
        for _ in 0..3 {
            r.update(1.0);
        }
        assert!(
            r.get() > 0.6,
            "three acceptances after one rejection: {}",
            r.get()
        );
    }

    #[test]
    fn a_rate_follows_a_change_once_warm() {
        let mut r = Rate::with_prior(0.6);
        for _ in 0..50 {
            r.update(1.0);
        }
        assert!(r.get() > 0.99);
        for _ in 0..20 {
            r.update(0.0);
        }
        assert!(r.get() < 0.15, "forgets at weight 0.1: {}", r.get());
        assert_eq!(r.samples(), 70);
    }
}
