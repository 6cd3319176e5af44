//! Off, back-off and probing: when a switched-off controller measures speculation again, for how
//! long, and what a probe or a native trial decides.
use super::*;

/// A controller at k <= 4 against a target alone at 10 tok/s, switched off by ten rounds whose
/// drafts were all rejected; and the time of those rounds.
fn switched_off_by_bad_rounds() -> (Controller, Instant) {
    let mut c = Controller::new(4, None);
    let now = Instant::now();
    c.record_target_only(now, 32, 32.0 / 10.0);
    for _ in 0..10 {
        c.record_round(now, 4, 0, 0.2, 0.2);
    }
    (c, now)
}

#[test]
fn off_probes_again_after_the_backoff_and_comes_back_on_when_it_pays() {
    let (mut c, mut now) = switched_off_by_bad_rounds();
    assert!(matches!(c.mode(), Mode::Off { .. }));
    assert!(!c.plan_request(now + Duration::from_secs(1)).speculate);
    // Conditions improve (the draft host got a GPU): shadowing sees high agreement.
    for _ in 0..40 {
        c.record_shadow(4, 4);
    }
    now += Duration::from_secs(20);
    let plan = c.plan_request(now);
    assert!(plan.speculate, "{:?}", c.view());
    assert!(matches!(c.mode(), Mode::Probing { .. }));
    for _ in 0..16 {
        c.record_round(now, 4, 4, 0.02, 0.1);
    }
    assert_eq!(c.mode(), Mode::On, "{:?}", c.view());
}

/// A probe whose first timed rounds deliver a clear loss stops there and switches off again; a
/// marginal loss still runs the whole probe. Before, on the H200's fast target behind a 2 ms relay,
/// a probe ran 36 rounds (two whole requests at 0.66x of the target alone).
#[test]
fn a_probe_that_measures_a_clear_loss_stops_after_a_few_rounds() {
    for (accepted, clear) in [(1, true), (3, false)] {
        let (mut c, now) = switched_off_by_bad_rounds();
        // The drafts agree again (shadowed), so the model does not rule a probe out.
        for _ in 0..40 {
            c.record_shadow(4, 4);
        }
        let later = now + Duration::from_secs(16);
        assert!(c.plan_request(later).speculate, "{:?}", c.view());
        // Rounds of 0.4 s against 10 tok/s alone: 1 accepted is 5 tok/s (a clear loss), 3
        // accepted 10 tok/s (no gain, not a clear loss).
        for _ in 0..PROBE_CLEAR_LOSS_ROUNDS {
            c.record_round(later, 4, accepted, 0.2, 0.2);
        }
        // Half the target's speed: the next probe's loss would take more than half a percent
        // of a 30 s back-off, so it waits the longest a loss may ask for (60 s).
        assert_eq!(
            matches!(c.mode(), Mode::Off { backoff_s: 60, .. }),
            clear,
            "accepted {accepted}: {:?}",
            c.view()
        );
        if !clear {
            assert!(matches!(c.mode(), Mode::Probing { .. }), "{:?}", c.view());
            for _ in PROBE_CLEAR_LOSS_ROUNDS..16 {
                c.record_round(later, 4, accepted, 0.2, 0.2);
            }
            assert!(
                matches!(c.mode(), Mode::Off { backoff_s: 30, .. }),
                "{:?}",
                c.view()
            );
        }
    }
}

/// A drafter that pipelines (under `pipeline = "auto"`) still gives a probe its verdict: the
/// probe counts a pipelined round's wall time, while the cost fits leave it out, and an opening
/// round counts for neither.
#[test]
fn a_probe_counts_pipelined_rounds_by_their_wall_time() {
    let (mut c, now) = switched_off_by_bad_rounds();
    for _ in 0..40 {
        c.record_shadow(4, 4);
    }
    let later = now + Duration::from_secs(16);
    assert!(c.plan_request(later).speculate, "{:?}", c.view());
    assert!(c.probing(), "{:?}", c.view());
    // A request's opening round reads the whole prompt: not a probe's measurement.
    for _ in 0..PROBE_CLEAR_LOSS_ROUNDS {
        c.record_untimed_round(later, 4, 1);
    }
    assert!(
        c.probing(),
        "opening rounds decided a probe: {:?}",
        c.view()
    );
    // Pipelined rounds of 0.4 s with 1 accepted: 5 tok/s against 10 alone, a clear loss.
    for _ in 0..PROBE_CLEAR_LOSS_ROUNDS {
        c.record_pipelined_round(later, 4, 1, 0.4);
    }
    assert!(
        matches!(c.mode(), Mode::Off { .. }),
        "pipelined rounds at half the target's speed left the probe running: {:?}",
        c.view()
    );
}

/// A native request speculates a trial's worth of tokens while the path has no measured request
/// (or probes); a clear loss over the trial switches off although the target made fewer drafting
/// steps than rounds are otherwise needed, and one that pays lifts the limit.
#[test]
fn a_native_trial_at_a_clear_loss_switches_off_and_one_that_pays_lifts_the_limit() {
    let now = Instant::now();
    let fresh = || {
        let mut c = Controller::new(4, None);
        c.record_target_only(now, 32, 32.0 / 300.0);
        assert_eq!(c.native_trial_tokens(), Some(NATIVE_TRIAL_TOKENS));
        c
    };
    // 48 tokens at 180 tok/s, 24 drafted at k = 4: six steps.
    let mut losing = fresh();
    losing.record_native(now, 4, 24, 20, NATIVE_TRIAL_TOKENS - 1, 47.0 / 180.0);
    assert!(
        matches!(losing.mode(), Mode::Off { .. }),
        "{:?}",
        losing.view()
    );
    let mut paying = fresh();
    paying.record_native(now, 4, 24, 22, NATIVE_TRIAL_TOKENS - 1, 47.0 / 400.0);
    assert_eq!(paying.mode(), Mode::On, "{:?}", paying.view());
    assert_eq!(paying.native_trial_tokens(), None);
    // A pinned controller never limits a request.
    assert_eq!(Controller::fixed(4).native_trial_tokens(), None);
}

/// Each probe that measures no gain doubles the back-off (15 s, 30 s, 60 s …, up to 600 s). Before,
/// the back-off was read back from the last decision's text, which by then was the probe's own
/// ("back-off over: measuring speculation again"), so every failed probe restarted at 15 s.
#[test]
fn each_failed_probe_doubles_the_backoff() {
    let (mut c, mut now) = switched_off_by_bad_rounds();
    assert!(
        matches!(c.mode(), Mode::Off { backoff_s: 15, .. }),
        "{:?}",
        c.view()
    );
    for want in [30, 60, 120] {
        // The draft agrees while shadowed, so the model allows a probe ...
        for _ in 0..40 {
            c.record_shadow(4, 4);
        }
        let Mode::Off { backoff_s, .. } = c.mode() else {
            panic!("off expected: {:?}", c.view())
        };
        now += Duration::from_secs(backoff_s + 1);
        assert!(c.plan_request(now).speculate, "{:?}", c.view());
        assert!(matches!(c.mode(), Mode::Probing { .. }));
        // ... which measures 10 tok/s, the target's own speed: no gain.
        for _ in 0..16 {
            c.record_round(now, 4, 4, 0.05, 0.45);
        }
        assert!(
            matches!(c.mode(), Mode::Off { backoff_s, .. } if backoff_s == want),
            "want {want} s: {:?}",
            c.view()
        );
    }
}

/// What a two-path pairing asks before choosing a path (`Pairing::choose_path`): a controller that
/// is off would not speculate until its back-off ends (then its request decides whether to probe);
/// one forced off never would, one forced on or pinned always would.
#[test]
fn an_off_controller_would_speculate_only_once_its_backoff_ends() {
    let (mut c, now) = switched_off_by_bad_rounds();
    let Mode::Off { retry_at, .. } = c.mode() else {
        panic!("switched off: {:?}", c.view());
    };
    assert!(!c.would_speculate(now));
    assert!(!c.would_speculate(retry_at - Duration::from_millis(1)));
    assert!(c.would_speculate(retry_at));
    // Every draft was rejected: at the end of the back-off the model still predicts a clear loss,
    // so the request skips the probe and a longer back-off starts, during which it would not.
    assert!(!c.plan_request(retry_at).speculate);
    assert!(!c.would_speculate(retry_at));
    c.set_override(now, Some(false));
    assert!(!c.would_speculate(now + Duration::from_secs(3600)));
    c.set_override(now, Some(true));
    assert!(c.would_speculate(now));
    assert!(Controller::fixed(4).would_speculate(now));
}
