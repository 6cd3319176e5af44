//! What the controller learns from — target-only stretches, shadow drafts, proxy rounds, whole
//! speculative requests and native-pairing requests — and the decisions a measurement can make:
//! off on a measured loss or a predicted one, the end of a probe.

use std::time::{Duration, Instant};

use super::estimate::Rate;
use super::{
    Controller, Mode, CLEAR_LOSS_BELOW, CLEAR_LOSS_MIN_TOKENS, FIRST_BACKOFF, K_MAX,
    LOSS_BACKOFF_CAP, MAX_BACKOFF, MEASURED_OFF_TOKENS, MIN_ROUNDS_BEFORE_OFF, NATIVE_TRIAL_TOKENS,
    OFF_BELOW, ON_ABOVE, PREDICTED_OFF_BELOW, PROBE_CLEAR_LOSS_ROUNDS, PROBE_SHARE,
};

impl Controller {
    /// A target-only stretch: `tokens` generated in `seconds` (the caller leaves out the first two,
    /// see `target_only`).
    pub fn record_target_only(&mut self, now: Instant, tokens: usize, seconds: f64) {
        if tokens < 4 || seconds <= 0.0 {
            return;
        }
        self.target_tok_s.update(tokens as f64 / seconds, 0.5);
        self.target_measured_at = Some(now);
        if let (Mode::On | Mode::Probing { .. }, Some(reason)) = (self.mode, self.above_threshold())
        {
            self.switch_off(now, reason, FIRST_BACKOFF);
        }
    }

    /// Acceptance seen by shadowing the target while off: `proposed` draft tokens, `agreed` of them
    /// before the first disagreement.
    pub fn record_shadow(&mut self, proposed: usize, agreed: usize) {
        self.record_acceptance(proposed, agreed);
    }

    /// Per position, up to the first rejection. A position's first outcome starts from what the
    /// other positions measured, not from the fixed prior: from 0.6 (worth two outcomes) one
    /// accepted token read 0.73 where the positions before read ~0.9, so the first rounds that
    /// tried a longer draft made it look worse even when every token was accepted (one reason,
    /// with the few rounds that try it, that the H100's fast target settled on k = 6, 1.09x,
    /// where pinned k = 8 gave 1.17x).
    fn record_acceptance(&mut self, drafted: usize, accepted: usize) {
        for j in 0..drafted.min(K_MAX) {
            if self.accept[j].samples() == 0 {
                self.accept[j] = Rate::with_prior(self.pooled_alpha());
            }
            if j < accepted {
                self.accept[j].update(1.0);
            } else {
                self.accept[j].update(0.0);
                break;
            }
        }
    }

    /// One round: `k` draft tokens asked for, `drafted` received, `accepted`, and its wall times.
    pub fn record_round(
        &mut self,
        now: Instant,
        drafted: usize,
        accepted: usize,
        draft_seconds: f64,
        verify_seconds: f64,
    ) {
        if drafted > 0 {
            self.draft_cost.observe(drafted, draft_seconds);
        }
        self.verify_cost.observe(drafted, verify_seconds);
        self.after_round(now, drafted, accepted, Some(draft_seconds + verify_seconds));
    }

    /// A round whose acceptance counts but whose times do not price a sequential round: a
    /// request's first (both servers read the whole prompt in it, a per-request cost the target
    /// alone pays too; fitted as a round's cost it inflated `D(k)` and `V(k)` for the next ~20
    /// rounds and switched off pairings that paid), or a pipelined one under `pipeline = "auto"`
    /// (its draft time hides behind the verification and, on a shared device, slows it: on the
    /// H100 such rounds put `V(4)` at 8.6 ms where sequential ones measured 7.1).
    pub fn record_untimed_round(&mut self, now: Instant, drafted: usize, accepted: usize) {
        self.after_round(now, drafted, accepted, None);
    }

    /// A pipelined round under `pipeline = "auto"`: like [`Controller::record_untimed_round`]
    /// for the cost fits (its draft time hid behind the last verification), but a probe counts
    /// its wall time, `seconds`: that is what the user waited for it. Without it a probe whose
    /// drafter pipelines never ended on its own rounds, and on the H100's fast target a probe
    /// ran a whole pipelined request at 0.65x of the target alone that it did not count.
    pub fn record_pipelined_round(
        &mut self,
        now: Instant,
        drafted: usize,
        accepted: usize,
        seconds: f64,
    ) {
        self.after_round(now, drafted, accepted, Some(seconds));
    }

    fn after_round(&mut self, now: Instant, drafted: usize, accepted: usize, seconds: Option<f64>) {
        self.record_acceptance(drafted, accepted);
        self.rounds_in_mode += 1;
        if let Mode::Probing { rounds_left } = self.mode {
            // A probe measures rounds whose wall time is what the user waits for (not a
            // request's opening round, which reads the whole prompt).
            let Some(seconds) = seconds else { return };
            self.probe_tokens += accepted + 1;
            self.probe_seconds += seconds;
            self.probe_rounds += 1;
            if rounds_left <= 1 || self.probe_is_a_clear_loss() {
                self.finish_probe(now);
            } else {
                self.mode = Mode::Probing {
                    rounds_left: rounds_left - 1,
                };
            }
            return;
        }
        if self.mode == Mode::On
            && self.rounds_in_mode >= MIN_ROUNDS_BEFORE_OFF
            && !self.measured_to_pay()
        {
            let requests_measured = self.goodput_tok_s.get().is_some();
            if let Some((k, s)) = self.optimistic_best_k() {
                if s < CLEAR_LOSS_BELOW || (s < PREDICTED_OFF_BELOW && requests_measured) {
                    self.switch_off(
                        now,
                        format!("predicted speedup at most {s:.2}x (the best k = {k}, acceptance as high as measured allows), below 1"),
                        FIRST_BACKOFF,
                    );
                }
            }
        }
    }

    /// Whole speculative requests measured clearly faster than the target alone. The model's
    /// prediction then does not switch speculation off: its cost fits extrapolate from a few
    /// rounds on a noisy machine (on the CPU suite's slow target it predicted 0.99x while
    /// speculative requests delivered 47 tok/s against 38), and what requests deliver is the
    /// thing the user gets. A measured loss still switches off (`record_speculative_request`).
    fn measured_to_pay(&self) -> bool {
        match (self.goodput_tok_s.get(), self.target_tok_s.get()) {
            (Some(g), Some(r_t)) => g >= ON_ABOVE * r_t,
            _ => false,
        }
    }

    /// A probe whose first timed rounds already deliver under `CLEAR_LOSS_BELOW` of the target
    /// alone ends there: the rest of its 16 rounds would only repeat the loss. On the H200's fast
    /// target behind a 2 ms relay a probe took 36 rounds (its untimed ones do not count), two
    /// whole requests at 0.66x, which alone cost a 20-request run 5% against the target alone.
    fn probe_is_a_clear_loss(&self) -> bool {
        if self.probe_rounds < PROBE_CLEAR_LOSS_ROUNDS {
            return false;
        }
        let measured = self.probe_rate();
        self.target_tok_s
            .get()
            .is_some_and(|r_t| measured < CLEAR_LOSS_BELOW * r_t)
    }

    /// Tokens/s the current probe has delivered over its timed rounds (or native stretches).
    fn probe_rate(&self) -> f64 {
        self.probe_tokens as f64 / self.probe_seconds.max(1e-9)
    }

    fn finish_probe(&mut self, now: Instant) {
        let measured = self.probe_rate();
        let r_t = self.target_tok_s.get();
        match r_t {
            Some(r_t) if measured >= ON_ABOVE * r_t => {
                self.mode = Mode::On;
                self.decide(
                    "on",
                    format!("probe delivered {measured:.1} tok/s against {r_t:.1} tok/s for the target alone"),
                );
            }
            Some(r_t) => {
                let backoff = match self.last_backoff {
                    Some(b) => (b * 2).min(MAX_BACKOFF),
                    None => FIRST_BACKOFF,
                };
                let backoff = Self::backoff_after_loss(backoff, measured, r_t);
                self.switch_off(
                    now,
                    format!("probe delivered {measured:.1} tok/s, the target alone {r_t:.1} tok/s"),
                    backoff,
                );
            }
            None => {
                self.mode = Mode::On;
                self.decide("on", "no target speed known yet; speculating".into());
            }
        }
    }

    /// The back-off after a measured loss: at least `base`, and long enough that the next probe
    /// (at most a trial of `NATIVE_TRIAL_TOKENS` at the rate just measured) costs no more than
    /// `PROBE_SHARE` of the time spent off, up to `LOSS_BACKOFF_CAP` (a link that got fast
    /// again is noticed within a minute). A path far below the target alone (a native draft
    /// driven over a slow rpc-server link: 0.17x on the CPU, 0.4x on the H200) is probed less
    /// often; one near the line as before.
    pub(super) fn backoff_after_loss(base: Duration, measured: f64, r_t: f64) -> Duration {
        if measured <= 0.0 || r_t <= 0.0 || measured >= r_t {
            return base;
        }
        let probe_cost_s = NATIVE_TRIAL_TOKENS as f64 * (1.0 / measured - 1.0 / r_t);
        let floor = (probe_cost_s / PROBE_SHARE).min(LOSS_BACKOFF_CAP.as_secs_f64());
        base.max(Duration::from_secs_f64(floor))
    }

    /// A speculative request finished: its speculative phase made `tokens` in `seconds`.
    pub fn record_speculative_request(&mut self, now: Instant, tokens: usize, seconds: f64) {
        if tokens < 8 || seconds <= 0.0 {
            return;
        }
        let rate = tokens as f64 / seconds;
        self.goodput_tok_s.update(rate, 0.3);
        self.tokens_in_mode += tokens;
        if self.mode != Mode::On {
            return;
        }
        if let (Some(g), Some(r_t)) = (self.goodput_tok_s.get(), self.target_tok_s.get()) {
            // A clear loss measured over `CLEAR_LOSS_MIN_TOKENS` decides on its own: a
            // native request counts its target's drafting steps as rounds, and a trial of
            // `NATIVE_TRIAL_TOKENS` at a loss makes fewer than `MIN_ROUNDS_BEFORE_OFF` of them.
            let clear = g < CLEAR_LOSS_BELOW * r_t;
            if self.rounds_in_mode < MIN_ROUNDS_BEFORE_OFF
                && !(clear && tokens >= CLEAR_LOSS_MIN_TOKENS)
            {
                return;
            }
            let enough = self.tokens_in_mode >= MEASURED_OFF_TOKENS || clear;
            if g < OFF_BELOW * r_t && enough {
                self.switch_off(
                    now,
                    format!("speculation delivered {g:.1} tok/s, the target alone {r_t:.1} tok/s"),
                    Self::backoff_after_loss(FIRST_BACKOFF, g, r_t),
                );
            }
        }
    }

    /// A request served by native pairing: the target drafted with up to `k` tokens per step,
    /// `drafted`/`accepted` by its own counters, `tokens` in `seconds` after the first token.
    /// There are no proxy rounds to time, so the decision rests on measured throughput.
    pub fn record_native(
        &mut self,
        now: Instant,
        k: usize,
        drafted: usize,
        accepted: usize,
        tokens: usize,
        seconds: f64,
    ) {
        // Spread the counters over the steps they came from, position by position.
        let steps = drafted.div_ceil(k.max(1));
        let mut left = accepted;
        for _ in 0..steps {
            let here = left.min(k);
            self.record_acceptance(k, here);
            left -= here;
        }
        self.rounds_in_mode += steps.max(1) as u32;
        if let Mode::Probing { .. } = self.mode {
            self.probe_tokens += tokens;
            self.probe_seconds += seconds;
            self.finish_probe(now);
            return;
        }
        self.record_speculative_request(now, tokens, seconds);
    }

    /// How many tokens a native request may speculate before its figure is checked: a trial of
    /// `NATIVE_TRIAL_TOKENS` while no speculative request was measured yet or a probe runs, else
    /// no limit (`None`). Why: the target drafts a whole native request with the `n_max` it was
    /// sent, so unlike proxy rounds a bad one cannot stop midway; on the H200's fast target a
    /// native request at 0.6x of the target alone (its draft over a remote rpc-server) was the
    /// largest single cost of the auto row. The caller serves the rest as the trial decided.
    pub fn native_trial_tokens(&self) -> Option<usize> {
        if !self.adaptive || self.forced.is_some() {
            return None;
        }
        match self.mode {
            Mode::Probing { .. } => Some(NATIVE_TRIAL_TOKENS),
            Mode::On if self.goodput_tok_s.get().is_none() => Some(NATIVE_TRIAL_TOKENS),
            _ => None,
        }
    }
}
