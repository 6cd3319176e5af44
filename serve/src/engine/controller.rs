//! The controller: speculate only when it pays, with as many draft tokens as pay best.
//!
//! The field report's proxy ran a 19.7 tok/s target at 6 tok/s with 100% acceptance because a
//! 32-token round took 4–6 s. This controller keeps running estimates, per pairing, of
//! - the target's plain decode speed `R_t` (timed target-only generations),
//! - the draft's cost per round `D(k) = d0 + d1·k` and the target's verify cost `V(k) = v0 + v1·k`
//!   (both fitted online from every round's wall time, so network and HTTP overhead are inside),
//! - the acceptance rate at each draft position `α_j` (conditional on the earlier ones),
//!
//! and predicts the speedup of a round with `k` draft tokens as
//! `S(k) = E(k) / ((D(k) + V(k)) · R_t)` with `E(k) = 1 + Σ_i Π_{j≤i} α_j` tokens per round.
//! Each round uses the `k` that maximises `S`. Speculation is switched off when the best `S` falls
//! under 1 (or measured throughput under the target's own), or when the target is faster than the
//! configured `disable_above_tok_s`; it is probed again after a growing back-off. Every change and
//! its reason is logged, counted in `/metrics` and shown in the stats JSON.
//!
//! Pure logic: time is passed in, so the unit tests replay recorded measurements. The
//! measurements come in through `record` (`record_round`, `record_speculative_request`, …);
//! this file holds the estimates, the predictions and the per-request plan.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Largest draft length ever tried (speculation.md: k beyond ~8 never pays on these servers).
pub const K_MAX: usize = 8;
/// Largest draft length on a mixture-of-experts target until calibration shows otherwise: each
/// extra token verified can route to other experts, so verification cost grows with k much faster
/// than on a dense model (speculation.md §C).
pub const MOE_K_MAX: usize = 4;
/// "Calibration says otherwise": verifying `K_MAX` tokens measured at most this many times the
/// cost of verifying one (the experts stayed cheap), so the MoE cap is lifted.
const MOE_FLAT_VERIFY_RATIO: f64 = 1.3;
const ACCEPT_PRIOR: f64 = 0.6;
/// Rounds of evidence needed before the controller may switch speculation off.
const MIN_ROUNDS_BEFORE_OFF: u32 = 8;
/// Off when measured throughput is under this share of the target's own (measurements are noisy),
/// or when the model predicts any loss; back on only above `ON_ABOVE` (hysteresis).
const OFF_BELOW: f64 = 0.95;
const PREDICTED_OFF_BELOW: f64 = 1.0;
const ON_ABOVE: f64 = 1.05;
/// A prediction under this is a clear loss, which the model alone may act on: switch off before
/// any whole request was measured, or skip a probe when a back-off ends (doubling it). Between
/// this and 1 the fits are within their own noise (±20% between runs on a shared machine) and
/// only measured requests decide: acting on the model there switched off, within the first
/// request, a pairing that paid 1.3–1.5x on the CPU suite's slow target, and kept it off.
const CLEAR_LOSS_BELOW: f64 = 0.8;
/// Standard errors of acceptance a decision to stop speculating gives the draft the benefit of
/// ([`Controller::optimistic_best_k`]).
const OPTIMISM: f64 = 1.0;
/// Tokens of whole speculative requests measured (since the last decision) before a loss short of
/// a clear one switches off: one 96-token request's rate swings by ±10% with the prompts' drafts.
const MEASURED_OFF_TOKENS: usize = 192;
/// Timed rounds after which a probe measuring a clear loss stops early (a round's rate swings
/// with its draft's acceptance: four rounds of ~5 tokens each keep one bad draft from deciding).
const PROBE_CLEAR_LOSS_ROUNDS: u32 = 4;
/// Tokens of a native request's trial ([`Controller::native_trial_tokens`]): enough for a rate
/// that tells a clear loss from a gain (±10% on 96 tokens; a clear loss is 20% or more).
const NATIVE_TRIAL_TOKENS: usize = 48;
/// Tokens of one measured speculative request after which a clear loss switches off however few
/// rounds it took.
const CLEAR_LOSS_MIN_TOKENS: usize = 32;
/// The most of the time spent off that the next probe may cost ([`Controller`]'s back-off after
/// a measured loss): a probe's loss over the target alone, divided by its back-off.
const PROBE_SHARE: f64 = 0.005;
/// The longest back-off [`PROBE_SHARE`] alone may ask for after one measured loss.
const LOSS_BACKOFF_CAP: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_secs(15);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Every this many rounds, try a neighbouring k (exploration), over the first
/// [`EXPLORE_OFTEN_ROUNDS`]; every [`EXPLORE_SELDOM_EVERY`] rounds after them.
const EXPLORE_EVERY: u64 = 6;
/// Rounds of frequent exploration, while the cost fits take their slopes.
const EXPLORE_OFTEN_ROUNDS: u64 = 48;
/// Exploration once the fits stand: each costs two changes of k (see [`STAY_MARGIN`]).
const EXPLORE_SELDOM_EVERY: u64 = 24;
/// How much more another k must be predicted to deliver before a round leaves the last round's
/// k. On a GPU a verification of a batch shaped otherwise than the one before costs the target a
/// new compute graph: measured on the H100 (fast target, server logs), 4.7–4.9 ms for a
/// verification at the k of the one before, 5.6–6.2 ms after a change, and the adaptive rows
/// changed k in half their rounds (neighbouring k predicted within a few percent of each other).
const STAY_MARGIN: f64 = 1.05;
/// While off, one request in this many still goes through the engine (measurements).
const SAMPLE_EVERY: u64 = 8;
/// How often the target's plain speed is re-measured while speculating.
const TARGET_SPEED_REFRESH: Duration = Duration::from_secs(120);

/// Where the controller stands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Mode {
    On,
    Off {
        #[serde(skip)]
        retry_at: Instant,
        backoff_s: u64,
    },
    /// Trying speculation again for a while to measure it.
    Probing {
        rounds_left: u32,
    },
}

/// What one request should do, decided when it starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestPlan {
    pub speculate: bool,
    /// Generate this many tokens target-only first, timed, to refresh `R_t`.
    pub measure_target_tokens: usize,
}

/// A decision worth telling the user about.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub state: &'static str,
    pub reason: String,
}

/// The controller of one pairing.
#[derive(Debug)]
pub struct Controller {
    /// `false`: always speculate with `k_cap` (for exactness tests and users who insist).
    adaptive: bool,
    mode: Mode,
    k_cap: usize,
    /// The target is a mixture-of-experts model: k ≤ `MOE_K_MAX` unless verification measures
    /// flat (see [`Controller::cap`]).
    moe_target: bool,
    disable_above_tok_s: Option<f64>,
    target_tok_s: Ewma,
    target_measured_at: Option<Instant>,
    draft_cost: LinearCost,
    verify_cost: LinearCost,
    accept: [Rate; K_MAX],
    /// Tokens/s actually delivered by speculative requests (whole speculative phase).
    goodput_tok_s: Ewma,
    rounds_in_mode: u32,
    /// Tokens of whole speculative requests measured since the last decision.
    tokens_in_mode: usize,
    probe_tokens: usize,
    probe_seconds: f64,
    /// Timed rounds the current probe has measured.
    probe_rounds: u32,
    /// Rounds chosen so far (drives exploration) and requests seen while off (drives sampling).
    rounds_chosen: std::cell::Cell<u64>,
    /// The k of the last round that was not an exploration (0: none yet), kept unless another
    /// is predicted [`STAY_MARGIN`] better.
    settled_k: std::cell::Cell<usize>,
    requests_while_off: u64,
    /// The back-off of the last switch-off, kept through the probe that follows it so a probe
    /// that fails again doubles it; cleared when speculation is decided on.
    last_backoff: Option<Duration>,
    pub last_decision: Option<Decision>,
    /// An operator's override ([`Controller::set_override`]): `Some(true)` speculate on every
    /// request, `Some(false)` never (every request goes to the target untouched), `None` decide.
    forced: Option<bool>,
    /// Every decision with its time, for the dashboard's timeline (bounded).
    pub history: super::history::DecisionHistory,
}

/// A snapshot for the stats JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerView {
    pub mode: Mode,
    pub k: usize,
    pub predicted_speedup: Option<f64>,
    pub target_tok_s: Option<f64>,
    pub speculative_goodput_tok_s: Option<f64>,
    pub acceptance_by_position: Vec<f64>,
    pub draft_round_ms: Option<f64>,
    pub verify_round_ms: Option<f64>,
    pub last_decision: Option<Decision>,
    /// An operator's override: `true` forced on, `false` forced off, absent when automatic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<bool>,
}

impl Controller {
    pub fn new(k_cap: usize, disable_above_tok_s: Option<f64>) -> Self {
        Controller {
            adaptive: true,
            mode: Mode::On,
            k_cap: k_cap.clamp(1, K_MAX),
            moe_target: false,
            disable_above_tok_s,
            target_tok_s: Ewma::default(),
            target_measured_at: None,
            draft_cost: LinearCost::default(),
            verify_cost: LinearCost::default(),
            accept: [Rate::with_prior(ACCEPT_PRIOR); K_MAX],
            goodput_tok_s: Ewma::default(),
            rounds_in_mode: 0,
            tokens_in_mode: 0,
            probe_tokens: 0,
            probe_seconds: 0.0,
            probe_rounds: 0,
            rounds_chosen: std::cell::Cell::new(0),
            settled_k: std::cell::Cell::new(0),
            requests_while_off: 0,
            last_backoff: None,
            last_decision: None,
            forced: None,
            history: Default::default(),
        }
    }

    /// A controller that never changes its mind: speculate every round with `k` tokens.
    pub fn fixed(k: usize) -> Self {
        Controller {
            adaptive: false,
            ..Controller::new(k, None)
        }
    }

    /// A controller for a mixture-of-experts target (config `moe = true`, set by `tightwad init`
    /// from the GGUF's expert count).
    pub fn for_moe_target(mut self) -> Self {
        self.moe_target = true;
        self
    }

    /// Set the configured cap (a pinned controller's k) to `k`, 1 to `K_MAX`: the pairing learns
    /// the length its target takes only when it probes it ([`super::draft_length`]). What was
    /// measured stays: costs and acceptance do not depend on the cap.
    pub fn set_cap(&mut self, k: usize) {
        self.k_cap = k.clamp(1, K_MAX);
    }

    /// The largest k this controller will choose now: the configured cap, held to `MOE_K_MAX` on
    /// a MoE target until the fitted verify cost says 8 tokens cost at most 1.3× one token.
    pub fn cap(&self) -> usize {
        if !self.moe_target {
            return self.k_cap;
        }
        let flat = match (self.verify_cost.predict(K_MAX), self.verify_cost.predict(1)) {
            (Some(v8), Some(v1)) if v1 > 0.0 => v8 <= MOE_FLAT_VERIFY_RATIO * v1,
            _ => false,
        };
        if flat {
            self.k_cap
        } else {
            self.k_cap.min(MOE_K_MAX)
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether a probe is measuring speculation (after a back-off): its requests take the way
    /// of pipelining that requests would take, never a trial of the other (see `round`).
    pub fn probing(&self) -> bool {
        matches!(self.mode, Mode::Probing { .. })
    }

    fn decide(&mut self, state: &'static str, reason: String) {
        tracing::info!(state, %reason, "speculation controller");
        if state == "on" {
            self.last_backoff = None;
        }
        let decision = Decision { state, reason };
        self.history.push(&decision);
        self.last_decision = Some(decision);
        self.rounds_in_mode = 0;
        self.tokens_in_mode = 0;
    }

    /// An operator's override: `Some(true)` speculate on every request whatever it costs,
    /// `Some(false)` never, `None` hand the decisions back to the controller (which starts afresh
    /// in "on" and measures). Logged and kept in the history like any decision.
    pub fn set_override(&mut self, now: Instant, forced: Option<bool>) {
        self.forced = forced;
        let (mode, state, reason) = match forced {
            Some(true) => (Mode::On, "on", "switched on by an operator"),
            Some(false) => (
                Mode::Off {
                    retry_at: now,
                    backoff_s: 0,
                },
                "off",
                "switched off by an operator",
            ),
            None => (
                Mode::On,
                "auto",
                "handed back to the controller by an operator",
            ),
        };
        self.mode = mode;
        self.decide(state, reason.into());
    }

    /// The operator's override, if any ([`Controller::set_override`]).
    pub fn forced(&self) -> Option<bool> {
        self.forced
    }

    fn switch_off(&mut self, now: Instant, reason: String, backoff: Duration) {
        if !self.adaptive || self.forced.is_some() {
            return;
        }
        self.mode = Mode::Off {
            retry_at: now + backoff,
            backoff_s: backoff.as_secs(),
        };
        self.decide(
            "off",
            format!("{reason}; retrying in {} s", backoff.as_secs()),
        );
        self.last_backoff = Some(backoff);
    }

    fn above_threshold(&self) -> Option<String> {
        let (limit, r_t) = (self.disable_above_tok_s?, self.target_tok_s.get()?);
        (r_t > limit).then(|| {
            format!("the target alone runs at {r_t:.1} tok/s, above disable_above_tok_s = {limit}")
        })
    }

    /// Called when a request starts.
    pub fn plan_request(&mut self, now: Instant) -> RequestPlan {
        let stale = self
            .target_measured_at
            .is_none_or(|t| now.duration_since(t) > TARGET_SPEED_REFRESH);
        if let Some(on) = self.forced {
            return RequestPlan {
                speculate: on,
                measure_target_tokens: if on && stale && self.adaptive { 16 } else { 0 },
            };
        }
        if !self.adaptive {
            return RequestPlan {
                speculate: true,
                measure_target_tokens: 0,
            };
        }
        match self.mode {
            Mode::On | Mode::Probing { .. } => RequestPlan {
                speculate: true,
                measure_target_tokens: if stale { 16 } else { 0 },
            },
            Mode::Off { backoff_s, .. } => {
                // The same gate a two-path pairing asks before choosing this path.
                if !self.would_speculate(now) {
                    return RequestPlan {
                        speculate: false,
                        measure_target_tokens: 0,
                    };
                }
                // Worth a probe only if the model does not rule it out.
                if let Some((k, s)) = self.optimistic_best_k() {
                    if s < CLEAR_LOSS_BELOW {
                        let backoff = Duration::from_secs(backoff_s * 2).min(MAX_BACKOFF);
                        self.switch_off(
                            now,
                            format!("still predicted {s:.2}x at k = {k}"),
                            backoff,
                        );
                        return RequestPlan {
                            speculate: false,
                            measure_target_tokens: 0,
                        };
                    }
                }
                self.mode = Mode::Probing { rounds_left: 16 };
                self.probe_tokens = 0;
                self.probe_seconds = 0.0;
                self.probe_rounds = 0;
                self.decide(
                    "probing",
                    "back-off over: measuring speculation again".into(),
                );
                RequestPlan {
                    speculate: true,
                    measure_target_tokens: if stale { 16 } else { 0 },
                }
            }
        }
    }

    /// The draft length for the next round; 0 means "stop speculating for this request".
    ///
    /// Mostly the best predicted k, or the last round's where that is predicted within
    /// [`STAY_MARGIN`] of the best; now and then a neighbour of it, so the cost fits see more
    /// than one k (otherwise a pessimistic first guess of the slope would keep the controller at
    /// k = 1 for ever): every `EXPLORE_EVERY`-th round at first, every `EXPLORE_SELDOM_EVERY`-th
    /// once the fits stand.
    pub fn choose_k(&self) -> usize {
        if self.forced == Some(false) {
            return 0;
        }
        if !self.adaptive {
            return self.k_cap;
        }
        if let Mode::Off { .. } = self.mode {
            return 0;
        }
        let n = self.rounds_chosen.get() + 1;
        self.rounds_chosen.set(n);
        let cap = self.cap();
        let warm_up = n <= EXPLORE_OFTEN_ROUNDS;
        let best = match self.best_k() {
            None => cap.min(4),
            Some((best, _)) if warm_up => best,
            Some(best) => self.stay_or_move(best, cap),
        };
        let every = if warm_up {
            EXPLORE_EVERY
        } else {
            EXPLORE_SELDOM_EVERY
        };
        if n % every == 0 {
            let up = (n / every) % 2 == 1;
            return if (up && best < cap) || best == 1 {
                (best + 1).min(cap)
            } else {
                best - 1
            };
        }
        self.settled_k.set(best);
        best
    }

    /// `best` (the best predicted k and its speedup), unless the last settled k is predicted
    /// within [`STAY_MARGIN`] of it.
    fn stay_or_move(&self, (best, best_speedup): (usize, f64), cap: usize) -> usize {
        let last = self.settled_k.get();
        if (1..=cap).contains(&last) && last != best {
            if let Some(s) = self.predicted_speedup(last) {
                if s * STAY_MARGIN >= best_speedup {
                    return last;
                }
            }
        }
        best
    }

    /// Whether a request starting `now` may speculate or probe: not while speculation is off and
    /// its back-off runs, nor above `disable_above_tok_s`, nor when an operator forced it off. At
    /// the end of a back-off the request's plan still decides (`plan_request` skips a probe the
    /// model rules out). A pairing with two paths serves a request by the path whose controller would, when
    /// only one would (`Pairing::choose_path`).
    pub fn would_speculate(&self, now: Instant) -> bool {
        if let Some(on) = self.forced {
            return on;
        }
        match self.mode {
            Mode::Off { retry_at, .. } if self.adaptive => {
                now >= retry_at && self.above_threshold().is_none()
            }
            _ => true,
        }
    }

    /// While off, most requests can go to the target untouched (no proxy cost at all); one in
    /// `SAMPLE_EVERY` still runs through the engine so the target's speed and the draft's shadow
    /// acceptance stay measured. Never during a probe or after the back-off expired.
    pub fn passthrough_while_off(&mut self, now: Instant) -> bool {
        if let Some(on) = self.forced {
            return !on;
        }
        if !self.adaptive {
            return false;
        }
        match self.mode {
            Mode::Off { retry_at, .. } if now < retry_at => {
                self.requests_while_off += 1;
                self.requests_while_off % SAMPLE_EVERY != 0
            }
            _ => false,
        }
    }

    pub fn view(&self) -> ControllerView {
        let best = self.best_k();
        // Pinned (`adaptive = false`), every round drafts `k_cap`: report that, not a best guess.
        let k = if self.adaptive {
            best.map(|(k, _)| k).unwrap_or(self.k_cap.min(4))
        } else {
            self.k_cap
        };
        ControllerView {
            mode: self.mode,
            k,
            predicted_speedup: best.map(|(_, s)| s),
            target_tok_s: self.target_tok_s.get(),
            speculative_goodput_tok_s: self.goodput_tok_s.get(),
            acceptance_by_position: (0..self.k_cap).map(|j| self.alpha(j)).collect(),
            draft_round_ms: self.draft_cost.predict(k).map(|s| s * 1000.0),
            verify_round_ms: self.verify_cost.predict(k).map(|s| s * 1000.0),
            last_decision: self.last_decision.clone(),
            forced: self.forced,
        }
    }
}

mod estimate;
mod predict;
mod record;
#[cfg(test)]
mod tests;

pub use estimate::{Ewma, LinearCost, Rate};
