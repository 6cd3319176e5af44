use super::*;

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
