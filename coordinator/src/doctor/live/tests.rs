use super::*;

/// One slot rule everywhere: k = 4 needs `-np 5`, which is what doctor asks for, what `init`
/// writes into the target's agent snippet (tested there), and what the proxy's `--help`
/// states (k + 1).
#[test]
fn the_slot_rule_is_k_plus_one() {
    let short = slots_check("pairing p", 4, 4, false);
    assert_eq!(short.status, Status::Warn);
    assert_eq!(
        short.hint.as_deref(),
        Some("start the target llama-server with -np 5 --kv-unified (or lower draft_tokens)")
    );
    assert_eq!(slots_check("pairing p", 5, 4, false).status, Status::Pass);
    assert_eq!(slots_check("pairing p", 1, 4, false).status, Status::Fail);
}

/// A target that verifies a draft in one sequence needs no slot per draft position: one slot
/// serves a request at any k, and doctor does not ask for `-np k+1`.
#[test]
fn a_one_pass_target_needs_one_slot_at_any_k() {
    for (slots, k) in [(1, 8), (2, 4), (4, 8)] {
        let c = slots_check("pairing p", slots, k, true);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert_eq!(c.hint, None, "{c:?}");
        assert!(c.message.contains("one sequence"), "{c:?}");
    }
    // A server reporting no slots at all is judged by the usual rule.
    assert_eq!(slots_check("pairing p", 0, 4, true).status, Status::Fail);
}

/// The field report: target alone 19.7 tok/s; rounds of ~32 draft tokens, all accepted,
/// taking 4–6 s each over the network. Fed to the controller's cost model, that predicts a
/// heavy loss (the report measured 0.39x), so doctor would have warned before the run.
#[test]
fn the_field_reports_rounds_predict_a_loss() {
    let rounds: Vec<(usize, usize, f64, f64)> = (0..54)
        .map(|i| (32, 32, 1.5, 3.0 + (i % 3) as f64 * 0.5))
        .collect();
    let (k, speedup, _) = predict(8, 197, 10.0, &rounds).expect("prediction");
    assert!(speedup < 0.5, "predicted {speedup} at k = {k}");
    let check = verdict(
        "payoff".into(),
        speedup,
        String::new(),
        serde_json::Value::Null,
    );
    assert_eq!(check.status, Status::Warn);
    // A slow target with a cheap, accurate draft pays.
    let rounds: Vec<(usize, usize, f64, f64)> = (0..20).map(|_| (4, 4, 0.02, 0.35)).collect();
    let (_, speedup, _) = predict(4, 30, 10.0, &rounds).expect("prediction");
    assert!(speedup > 1.05, "predicted {speedup}");
}
