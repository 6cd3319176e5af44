//! Several drafters for one target: the one whose rounds deliver most (acceptance × speed) drafts,
//! one that cannot speak for the target (another vocabulary) is never used, and one killed in the
//! middle of an answer hands over to the next without the client seeing anything but the
//! target's own tokens.

use serde_json::{json, Value};
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, greedy_through_proxy_matches_target, prompts,
    proxy_token_ids, stream_token_ids, LlamaServer, OpenStream, RunningProxy, ServerOptions,
};

fn drafter<'a>(stats: &'a Value, url: &str) -> &'a Value {
    stats["pairings"][0]["drafters"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["url"] == url))
        .unwrap_or_else(|| panic!("no drafter {url} in {stats}"))
}

fn wins(stats: &Value, url: &str) -> u64 {
    drafter(stats, url)["wins"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn the_best_drafter_is_chosen_and_a_killed_one_hands_over_with_identical_output() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    // Same size and speed, so acceptance decides: a noisy copy of the target, an exact copy, and
    // one of another vocabulary that must be refused.
    let mut poor =
        LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let mut good = LlamaServer::start(
        &env,
        &env.model("draft-identical.gguf"),
        ServerOptions::default(),
    )
    .await;
    let other = LlamaServer::start(
        &env,
        &env.model("draft-othervocab.gguf"),
        ServerOptions::default(),
    )
    .await;
    let mut entry = RunningProxy::entry(&target.url, Some(&poor.url), 4);
    entry.drafts = vec![other.url.clone(), good.url.clone()];
    let proxy = RunningProxy::start_entry(entry).await;

    let outcomes = greedy_through_proxy_matches_target(&proxy, &target, &prompts()[..12], 32).await;
    assert_ties_are_rare(&outcomes);

    let stats = proxy.stats().await;
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&stats["pairings"][0]["drafters"]).unwrap_or_default()
    );
    let o = drafter(&stats, &other.url);
    assert_eq!(o["wins"], 0, "{o}");
    assert!(
        o["unusable"]
            .as_str()
            .unwrap_or_default()
            .contains("vocabulary"),
        "{o}"
    );
    let (g, p) = (drafter(&stats, &good.url), drafter(&stats, &poor.url));
    assert!(
        g["acceptance"].as_f64() > p["acceptance"].as_f64(),
        "good {g}\npoor {p}"
    );
    assert!(
        wins(&stats, &good.url) > wins(&stats, &poor.url),
        "the better drafter did not win more often:\ngood {g}\npoor {p}"
    );
    assert!(
        p["rounds"].as_u64() > Some(0),
        "the poor drafter was never measured: {p}"
    );

    // Kill the drafter chosen for a long streamed answer, a few events in: the next usable one
    // takes over and the answer is still the target's own.
    let prompt = "The history of lighthouses";
    let reference = target.reference(json!(prompt), 160).await;
    let before = proxy.stats().await;
    let stream = OpenStream::start(
        &format!("{}/v1/completions", proxy.url),
        &json!({"prompt": prompt, "max_tokens": 160, "temperature": 0, "stream": true, "return_token_ids": true}),
        4,
    )
    .await;
    let during = proxy.stats().await;
    let good_chosen = wins(&during, &good.url) > wins(&before, &good.url);
    let (survivor, killed) = if good_chosen {
        good.kill();
        (poor.url.clone(), good.url.clone())
    } else {
        poor.kill();
        (good.url.clone(), poor.url.clone())
    };
    let body = stream.finish().await;
    assert!(
        !body.contains("\"error\""),
        "the client saw an error: {body}"
    );
    let events: Vec<Value> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let ids = stream_token_ids(&body);
    assert_ties_are_rare(&[compare(&ids, &reference, prompt)]);
    let after = proxy.stats().await;
    let k = drafter(&after, &killed);
    assert!(k["failures"].as_u64() >= Some(1), "{k}");
    assert!(k["unusable"].is_string(), "{k}");
    // `tightwad status` shows the same figures, per drafter.
    let shown = tightwad_coordinator::fleet::status::drafters_text(&after);
    eprint!("{shown}");
    assert!(
        shown.contains(&survivor) && shown.contains(&killed) && shown.contains("UNUSABLE"),
        "{shown}"
    );
    let s_before = drafter(&during, &survivor);
    let s_after = drafter(&after, &survivor);
    assert!(
        s_after["wins"].as_u64() > s_before["wins"].as_u64()
            && s_after["rounds"].as_u64() > s_before["rounds"].as_u64(),
        "the survivor did not take over speculation:\nbefore {s_before}\nafter {s_after}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["tightwad"]["drafted"].as_u64() > Some(0)),
        "no speculation in the answer"
    );

    // Later requests speculate with the survivor alone and stay exact.
    let mut outcomes = Vec::new();
    for prompt in prompts().iter().skip(12).take(4) {
        let (s, through) = proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
        let reference = target.reference(json!(prompt), 24).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
    }
    assert_ties_are_rare(&outcomes);
    let text = reqwest::get(format!("{}/metrics", proxy.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        text.contains(&format!(
            "tightwad_drafter_wins_total{{pairing=\"tightwad-test\",drafter=\"{survivor}\"}}"
        )),
        "{text}"
    );
}
