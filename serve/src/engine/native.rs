//! Native pairing: the target runs llama.cpp's own speculation (its draft model on a remote
//! rpc-server); the proxy decides per request how many tokens it may draft (0 = off) from measured
//! throughput with and without.

use std::time::Instant;

use tokio::sync::mpsc;

use super::controller;
use super::pairing::{lock_controller, Pairing};
use super::probe::PairingInfo;
use super::request::{EngineError, Event, Run};
use super::target_only::Stretch;
use crate::backend::Sampling;
use crate::metrics::ServedBy;

impl Pairing {
    /// Native pairing: the target speculates by itself; the controller decides per request how
    /// many tokens it may draft (0 = off), from measured throughput with and without.
    pub(super) async fn generate_native(
        &self,
        controller: &std::sync::Mutex<controller::Controller>,
        info: &PairingInfo,
        sampling: &Sampling,
        run: &mut Run,
        tx: &mpsc::Sender<Event>,
    ) -> Result<ServedBy, EngineError> {
        if let Some(Err(_)) = &info.native_steering {
            // The target ignores per-request `speculative.n_max`: it speculates on every request
            // whatever is sent, so nothing is steered and nothing is claimed; the figures are
            // what its own counters report.
            let s = self
                .target_only(info, sampling, run, tx, usize::MAX, None)
                .await?;
            run.drafted += s.drafted;
            run.accepted += s.accepted;
            self.metrics.drafted.inc_by(s.drafted as u64);
            self.metrics.accepted.inc_by(s.accepted as u64);
            return Ok(if s.drafted > 0 {
                ServedBy::Speculative
            } else {
                ServedBy::TargetOnly
            });
        }
        let plan = lock_controller(controller).plan_request(Instant::now());
        self.publish_controller_state();
        if plan.measure_target_tokens > 0 {
            let s = self
                .target_only(info, sampling, run, tx, plan.measure_target_tokens, Some(0))
                .await?;
            let (tokens, seconds) = s.timed();
            lock_controller(controller).record_target_only(Instant::now(), tokens, seconds);
            self.publish_controller_state();
        }
        let k = if plan.speculate {
            lock_controller(controller).choose_k()
        } else {
            0
        };
        // While the path's figure is unknown or being probed, a trial first; what it measured
        // decides the rest ([`controller::Controller::native_trial_tokens`]).
        let trial = (k > 0)
            .then(|| lock_controller(controller).native_trial_tokens())
            .flatten();
        let s = self
            .target_only(
                info,
                sampling,
                run,
                tx,
                trial.unwrap_or(usize::MAX),
                Some(k),
            )
            .await?;
        if k == 0 {
            let (tokens, seconds) = s.timed();
            lock_controller(controller).record_target_only(Instant::now(), tokens, seconds);
            // The measurement may have switched speculation off: the stats say so now, not at
            // the next request through the engine (the next ones may be passed through).
            self.publish_controller_state();
            return Ok(ServedBy::TargetOnly);
        }
        self.record_native_stretch(controller, run, k, &s);
        if trial.is_some() && run.out.finish.is_none() {
            // Still speculating after the trial: the rest natively. Else (`choose_k` is 0 once
            // the trial switched off) the caller serves the rest target-only (`n_max` 0).
            let k = lock_controller(controller).choose_k();
            if k > 0 {
                let s = self
                    .target_only(info, sampling, run, tx, usize::MAX, Some(k))
                    .await?;
                self.record_native_stretch(controller, run, k, &s);
            }
        }
        Ok(ServedBy::Speculative)
    }

    /// A stretch the target generated with its own speculation at `k`: its counters into the
    /// run, the metrics and the controller.
    fn record_native_stretch(
        &self,
        controller: &std::sync::Mutex<controller::Controller>,
        run: &mut Run,
        k: usize,
        s: &Stretch,
    ) {
        run.drafted += s.drafted;
        run.accepted += s.accepted;
        self.metrics.drafted.inc_by(s.drafted as u64);
        self.metrics.accepted.inc_by(s.accepted as u64);
        let (tokens, seconds) = s.timed();
        lock_controller(controller).record_native(
            Instant::now(),
            k,
            s.drafted,
            s.accepted,
            tokens,
            seconds,
        );
        self.publish_controller_state();
    }
}
