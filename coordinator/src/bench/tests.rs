use super::prompts::parse_prompts;
use super::*;
use serde_json::json;

fn m(seconds: f64, tokens: u64, text: &str, spec: Option<(u64, u64, u64)>) -> Measurement {
    Measurement {
        seconds,
        completion_tokens: tokens,
        text: text.into(),
        speculation: spec.map(|(rounds, drafted, accepted)| Speculation {
            served_by: "speculative".into(),
            rounds,
            drafted,
            accepted,
        }),
    }
}

#[test]
fn speedup_is_the_ratio_of_time_per_token() {
    let p = BenchPrompt::new("code", "x");
    let r = PromptResult::from_measurements(
        &p,
        &[m(2.0, 100, "a", None), m(2.0, 100, "b", None)],
        &[
            m(1.0, 100, "a", Some((10, 40, 30))),
            m(1.0, 100, "b", Some((10, 40, 30))),
        ],
    );
    assert_eq!(r.direct_tokens, 200);
    assert!((r.speedup - 2.0).abs() < 1e-12);
    assert!(r.identical);
    assert_eq!((r.rounds, r.drafted, r.accepted), (20, 80, 60));
    let t = Totals::of(&[r]);
    assert!(t.equal_token_counts);
    assert_eq!(t.acceptance, Some(0.75));
    // 60 accepted drafts + one target token per round, over 20 rounds.
    assert_eq!(t.tokens_per_round, Some(4.0));
}

#[test]
fn different_text_or_counts_are_reported() {
    let p = BenchPrompt::new("list", "x");
    let r = PromptResult::from_measurements(&p, &[m(1.0, 10, "a", None)], &[m(1.0, 20, "b", None)]);
    assert!(!r.identical);
    assert!((r.speedup - 2.0).abs() < 1e-12);
    let t = Totals::of(&[r]);
    assert!(!t.equal_token_counts);
    assert_eq!(t.acceptance, None);
    assert_eq!(speedup(0, 0.0, 5, 1.0), 0.0);
}

#[test]
fn prompt_files_are_json_lists_or_lines() {
    let json = r#"[{"category": "code", "prompt": "write"}]"#;
    assert_eq!(parse_prompts(json).map(|p| p.len()), Ok(1));
    let lines = "# comment\n\nfirst\n second \n";
    let p = parse_prompts(lines).unwrap_or_default();
    assert_eq!(p.len(), 2);
    assert_eq!(p[1].prompt, "second");
    assert!(parse_prompts("[nope").is_err());
    assert_eq!(builtin_prompts().len(), 10);
}

#[test]
fn stats_delta_subtracts_counters_and_keeps_the_controller() {
    let before =
        json!({"rounds": 5, "drafted": 20, "accepted": 10, "requests": {"speculative": 1}});
    let after = json!({"rounds": 15, "drafted": 60, "accepted": 40, "requests": {"speculative": 3, "target_only": 1}, "controller": {"state": "on"}});
    let d = stats_delta(&before, &after);
    assert_eq!((d.rounds, d.drafted, d.accepted), (10, 40, 30));
    assert_eq!((d.speculative_requests, d.target_only_requests), (2, 1));
    assert_eq!(d.controller_after, Some(json!({"state": "on"})));
}

#[test]
fn renderings_name_every_prompt_and_the_total() {
    let p = BenchPrompt::new("factual", "q");
    let r = PromptResult::from_measurements(
        &p,
        &[m(1.0, 10, "a", None)],
        &[m(0.5, 10, "a", Some((2, 8, 6)))],
    );
    let report = BenchReport {
        proxy: "http://p".into(),
        target: "http://t".into(),
        model: "tightwad".into(),
        max_tokens: 10,
        repeats: 1,
        warmup: 0,
        environment: Environment::detect(),
        totals: Totals::of(std::slice::from_ref(&r)),
        prompts: vec![r],
        proxy_stats: None,
    };
    let table = render_table(&report);
    assert!(
        table.contains("factual") && table.contains("2.00x"),
        "{table}"
    );
    let md = render_markdown(&report);
    assert!(
        md.contains("| factual |") && md.contains("**2.00x**"),
        "{md}"
    );
    let back: BenchReport =
        serde_json::from_str(&serde_json::to_string(&report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("report round-trips through JSON: {e}"));
    assert_eq!(back.totals, report.totals);
}
