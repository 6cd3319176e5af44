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
