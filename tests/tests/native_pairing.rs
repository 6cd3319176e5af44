//! Native pairing: llama.cpp's own speculation in the target, with the draft model on a remote
//! rpc-server; the proxy fronts it and decides per request how many tokens it may draft.

use serde_json::json;
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, greedy_through_proxy_matches_target, prompts,
    proxy_token_ids, stock_env, LlamaServer, RpcServer, RunningProxy, ServerOptions, TestEnv,
};

/// How the proxy served an answer (`tightwad.served_by`: speculative, target_only, passthrough).
fn served_by(answer: &serde_json::Value) -> String {
    answer["tightwad"]["served_by"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn the_proxy_steers_native_pairing_and_output_stays_the_targets() {
    let env = env();
    let rpc = RpcServer::start(&env).await;
    let mut opts = ServerOptions::native_target(4, &env.model("draft.gguf"), rpc.port);
    opts.slots = 1;
    opts.ctx = 4096;
    let target = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;
    let mut entry = RunningProxy::entry(&target.url, None, 4);
    entry.native = true;
    let proxy = RunningProxy::start_entry(entry).await;

    let mut outcomes = Vec::new();
    let (mut drafted, mut accepted) = (0, 0);
    for prompt in prompts().iter().take(6) {
        let (s, through) = proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 32, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
        drafted += through["tightwad"]["drafted"].as_u64().unwrap_or(0);
        accepted += through["tightwad"]["accepted"].as_u64().unwrap_or(0);
        let reference = target.reference(json!(prompt), 32).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
    }
    assert_ties_are_rare(&outcomes);
    assert!(drafted > 0, "the target's own speculation never drafted");
    assert!(
        accepted > 0,
        "nothing the remote draft proposed was accepted"
    );
}

/// A pairing with both a draft server and a natively paired target: each request takes one of the
/// two paths (both are tried, then the faster is preferred), and whichever it takes, the answer
/// is the target's own.
#[tokio::test]
async fn with_both_paths_each_request_takes_one_and_output_stays_the_targets() {
    let env = env();
    let rpc = RpcServer::start(&env).await;
    let mut opts = ServerOptions::native_target(4, &env.model("draft.gguf"), rpc.port);
    opts.ctx = 8192;
    let target = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;
    let mut draft =
        LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.native = true;
    let proxy = RunningProxy::start_entry(entry).await;

    let outcomes = greedy_through_proxy_matches_target(&proxy, &target, &prompts()[..8], 32).await;
    assert_ties_are_rare(&outcomes);
    let stats = proxy.stats().await;
    let paths = &stats["pairings"][0]["paths"];
    assert!(paths["rounds_requests"].as_u64() >= Some(3), "{stats}");
    assert!(paths["native_requests"].as_u64() >= Some(3), "{stats}");
    assert!(paths["rounds_tok_s"].as_f64() > Some(0.0), "{stats}");
    assert!(paths["native_tok_s"].as_f64() > Some(0.0), "{stats}");
    assert!(
        stats["pairings"][0]["rounds"].as_u64() > Some(0),
        "proxy rounds ran: {stats}"
    );

    // The draft host goes away: the native path carries on alone, still the target's own output.
    draft.kill();
    let outcomes =
        greedy_through_proxy_matches_target(&proxy, &target, &prompts()[8..12], 32).await;
    assert_ties_are_rare(&outcomes);
    let (_, last) = proxy
        .post(
            "/v1/completions",
            &json!({"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0}),
        )
        .await;
    assert_eq!(last["tightwad"]["served_by"], "speculative", "{last}");
    assert!(
        last["tightwad"]["drafted"].as_u64() > Some(0),
        "the target's own speculation drafted: {last}"
    );
    assert_eq!(
        last["tightwad"]["rounds"], 0,
        "no proxy rounds without a draft server: {last}"
    );
}

/// A natively paired target (its draft model on a loopback rpc-server) behind an adaptive proxy
/// whose `disable_above_tok_s` (0.5) is far below the target's own speed: the controller switches
/// speculation off after its first measurement.
async fn native_above_its_limit(env: &TestEnv) -> (RpcServer, LlamaServer, RunningProxy) {
    let rpc = RpcServer::start(env).await;
    let mut opts = ServerOptions::native_target(4, &env.model("draft.gguf"), rpc.port);
    opts.slots = 1;
    opts.ctx = 4096;
    let target = LlamaServer::start(env, &env.model("target.gguf"), opts).await;
    let mut entry = RunningProxy::entry(&target.url, None, 4);
    entry.native = true;
    entry.adaptive = true;
    entry.disable_above_tok_s = Some(0.5);
    let proxy = RunningProxy::start_entry(entry).await;
    (rpc, target, proxy)
}

/// The controller protects a natively paired target too: with `disable_above_tok_s` below the
/// target's own speed, speculation goes off after the first measurement, and "off" really is off
/// (the patched target drafts nothing when told `speculative.n_max` 0 — the effect, not the field).
#[tokio::test]
async fn disable_above_switches_native_speculation_really_off() {
    let (_rpc, _target, proxy) = native_above_its_limit(&env()).await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0});
    let mut last = serde_json::Value::Null;
    for _ in 0..3 {
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 200, "{v}");
        last = v;
    }
    let stats = proxy.stats().await;
    assert_eq!(
        stats["pairings"][0]["native_steering"], "steered",
        "{stats}"
    );
    // Off: through the engine (target-only) or passed through, the target told n_max 0 either way.
    assert!(
        matches!(
            last["tightwad"]["served_by"].as_str(),
            Some("target_only" | "passthrough")
        ),
        "{last} {stats}"
    );
    assert_eq!(
        last["tightwad"]["drafted"], 0,
        "off must draft nothing: {last}"
    );
    let reason = stats["pairings"][0]["speculation_off_reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("disable_above_tok_s"), "{stats}");
}

/// A stock llama-server ignores per-request `speculative.n_max`: the proxy measures that at probe
/// time, says so in the stats and never claims to steer it (no "target-only" answers that were
/// in fact speculated).
#[tokio::test]
async fn a_stock_target_that_ignores_steering_is_never_claimed_as_steered() {
    let (_rpc, _target, proxy) = native_above_its_limit(&stock_env()).await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0});
    for _ in 0..3 {
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 200, "{v}");
        let drafted = v["tightwad"]["drafted"].as_u64().unwrap_or(0);
        let served_by = v["tightwad"]["served_by"].as_str().unwrap_or_default();
        assert!(
            (drafted > 0) == (served_by == "speculative"),
            "served_by must say what the target did: {v}"
        );
    }
    let stats = proxy.stats().await;
    let steering = stats["pairings"][0]["native_steering"]
        .as_str()
        .unwrap_or_default();
    assert!(steering.contains("ignores per-request steering"), "{stats}");
}

/// The controller protects a natively paired target whose draft sits across a LAN link: while the
/// link is fast, native speculation pays and is on; made slow (each draft token pays two round
/// trips), it is switched off — `speculative.n_max` 0, nothing drafted — within a few requests,
/// the decision and the measured rates in the stats; fast again, the controller probes it after
/// its back-off and turns it back on. Real llama.cpp speculation over two real rpc-servers; the
/// latencies are SIMULATED by the project's relay: 20 ms in front of the rpc-server holding the
/// target's layers (a target several times slower than its draft, which on 2 shared cores the
/// models alone are not), 0 or 30 ms in front of the draft's.
#[tokio::test]
async fn a_slow_link_to_the_native_draft_turns_it_off_and_a_fast_one_back_on_simulated_slow_target()
{
    use std::time::{Duration, Instant};
    use tightwad_benchmarks::relay::{LanRelay, LinkConfig};
    let env = env();
    let relay_to = |rpc: &RpcServer, rtt_ms: u64| {
        LanRelay::start(
            "127.0.0.1:0".parse().expect("address"),
            format!("127.0.0.1:{}", rpc.port),
            LinkConfig::with_rtt(Duration::from_millis(rtt_ms)),
        )
    };
    let target_rpc = RpcServer::start(&env).await;
    let draft_rpc = RpcServer::start(&env).await;
    let slow_target = relay_to(&target_rpc, 20).await.expect("relay");
    let draft_link = relay_to(&draft_rpc, 0).await.expect("relay");
    let mut opts = ServerOptions::native_target_on_rpc(
        4,
        &env.model("bench-draft.gguf"),
        slow_target.local_addr().port(),
        draft_link.local_addr().port(),
    );
    opts.slots = 1;
    opts.ctx = 4096;
    let target = LlamaServer::start(&env, &env.model("bench-target.gguf"), opts).await;
    let mut entry = RunningProxy::entry(&target.url, None, 4);
    entry.native = true;
    entry.adaptive = true;
    let proxy = RunningProxy::start_entry(entry).await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0});
    let ask = || async {
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 200, "{v}");
        let served = served_by(&v);
        let drafted = v["tightwad"]["drafted"].as_u64().unwrap_or(0);
        (served, drafted)
    };
    let controller = |stats: &serde_json::Value| stats["pairings"][0]["controller"].clone();

    // A fast link: the target's own speculation pays, and the proxy lets it draft.
    let mut fast = Vec::new();
    for _ in 0..3 {
        fast.push(ask().await);
    }
    assert!(
        fast.iter().any(|(s, d)| s == "speculative" && *d > 0),
        "native speculation on a fast link: {fast:?}"
    );
    assert_eq!(controller(&proxy.stats().await)["mode"]["state"], "on");

    // A slow link: off within a few requests, and off means nothing drafted.
    draft_link.set_link(LinkConfig::with_rtt(Duration::from_millis(30)));
    let mut slow = Vec::new();
    for _ in 0..6 {
        let answer = ask().await;
        let off = (answer.0 == "target_only" || answer.0 == "passthrough") && answer.1 == 0;
        slow.push(answer);
        if off {
            break;
        }
    }
    assert!(
        slow.last()
            .is_some_and(|(s, d)| (s == "target_only" || s == "passthrough") && *d == 0),
        "still speculating over a slow link: {slow:?}"
    );
    let stats = proxy.stats().await;
    let off = controller(&stats);
    assert_eq!(off["mode"]["state"], "off", "{stats}");
    let target_alone = off["target_tok_s"].as_f64().unwrap_or(0.0);
    assert!(target_alone > 0.0, "{stats}");
    assert!(
        off["speculative_goodput_tok_s"].as_f64() > Some(0.0),
        "{stats}"
    );
    assert!(
        off["last_decision"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{stats}"
    );

    // Fast again: when the back-off expires the controller probes native speculation, finds it
    // pays, and turns it back on; the next answers are drafted by the target again. (A loss this
    // deep asks for the longest back-off a single loss may, a minute: a probe of it is costly.)
    draft_link.set_link(LinkConfig::with_rtt(Duration::ZERO));
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        ask().await;
        let stats = proxy.stats().await;
        let c = controller(&stats);
        if c["mode"]["state"] == "on" {
            let reason = c["last_decision"]["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("probe delivered"), "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "never back on: {stats}");
        // Wait for the back-off to run out (the stats say when), not for a fixed time.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (served, drafted) = ask().await;
    assert!(
        served == "speculative" && drafted > 0,
        "back on, yet not drafted: {served} {drafted}"
    );
}

/// With both paths (a draft server and a natively paired target), an answer the controllers serve
/// without speculation (target-only through the engine, or passed through) must not let the target
/// draft by itself: it is sent `speculative.n_max` 0 (the
/// target's own counter of drafted tokens stays still), else "the target alone" the controllers
/// measure would be a target speculating over its remote link (measured on a GPU: 0.46x).
#[tokio::test]
async fn with_both_paths_target_only_answers_leave_the_native_target_undrafted() {
    let env = env();
    let rpc = RpcServer::start(&env).await;
    let mut opts = ServerOptions::native_target(4, &env.model("draft.gguf"), rpc.port);
    opts.ctx = 8192;
    let target = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.native = true;
    entry.adaptive = true;
    entry.disable_above_tok_s = Some(0.5);
    let proxy = RunningProxy::start_entry(entry).await;
    let body = json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0});
    // Both paths measure the target once and switch off (it is above disable_above_tok_s).
    for _ in 0..4 {
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 200, "{v}");
    }
    // Off: most answers are passed to the target untouched but for `speculative.n_max` 0 (no
    // proxy cost at all), one in a few still runs through the engine to keep the target timed.
    let counter = "llamacpp:spec_decode_num_draft_tokens_total";
    let before = target.metric(counter).await;
    let mut served = Vec::new();
    for _ in 0..3 {
        let (s, v) = proxy.post("/v1/completions", &body).await;
        assert_eq!(s, 200, "{v}");
        served.push(served_by(&v));
    }
    assert!(
        served
            .iter()
            .all(|s| s == "target_only" || s == "passthrough"),
        "{served:?}"
    );
    assert!(served.iter().any(|s| s == "passthrough"), "{served:?}");
    let after = target.metric(counter).await;
    assert_eq!(
        after, before,
        "the target drafted during answers served without speculation: {served:?}"
    );
}

/// With both paths, a path whose controller switched speculation off leaves the requests to the
/// other path while that one still speculates: they are served by proxy rounds, not passed to the
/// target untouched. The native target's draft model sits on an rpc-server behind a SIMULATED
/// 30 ms link (every drafted token pays round trips: a clear loss, switched off after its first
/// trial); the draft server is on loopback. Before, the chooser kept picking the path that was off
/// (it had fewer measured requests), so the rounds path served one request in nine and the rest
/// went untouched (the CPU run of the GPU benchmark: 0.96x where rounds alone gave 1.17x).
#[tokio::test]
async fn with_both_paths_a_path_switched_off_leaves_its_requests_to_the_other_simulated_slow_link()
{
    use std::time::Duration;
    use tightwad_benchmarks::relay::{LanRelay, LinkConfig};
    let env = env();
    let rpc = RpcServer::start(&env).await;
    let slow_link = LanRelay::start(
        "127.0.0.1:0".parse().expect("address"),
        format!("127.0.0.1:{}", rpc.port),
        LinkConfig::with_rtt(Duration::from_millis(30)),
    )
    .await
    .expect("relay");
    let mut opts = ServerOptions::native_target(
        4,
        &env.model("bench-draft.gguf"),
        slow_link.local_addr().port(),
    );
    opts.ctx = 8192;
    let target = LlamaServer::start(&env, &env.model("bench-target.gguf"), opts).await;
    let draft = LlamaServer::start(
        &env,
        &env.model("bench-draft.gguf"),
        ServerOptions::default(),
    )
    .await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.native = true;
    entry.adaptive = true;
    let proxy = RunningProxy::start_entry(entry).await;

    let mut answers = Vec::new();
    for prompt in prompts().iter().take(7) {
        let (s, v) = proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 64, "temperature": 0}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let served = served_by(&v);
        let rounds = v["tightwad"]["rounds"].as_u64().unwrap_or(0);
        let drafted = v["tightwad"]["drafted"].as_u64().unwrap_or(0);
        answers.push((served, rounds, drafted));
    }
    // The first request tries the native path (the likelier winner on a GPU) and measures its
    // loss; the native controller is off from then on.
    let stats = proxy.stats().await;
    assert!(
        answers[0].1 == 0 && answers[0].2 > 0,
        "the first request went natively and drafted: {answers:?} {stats}"
    );
    assert_eq!(
        stats["pairings"][0]["paths"]["native_requests"], 1,
        "{stats}"
    );
    // Every later request is served by proxy rounds while their controller speculates (on these
    // models rounds pay on the CPU; should they measure a loss and switch off, the requests
    // before that decision still went by rounds).
    let by_rounds = answers[1..]
        .iter()
        .take_while(|(served, rounds, _)| served == "speculative" && *rounds > 0)
        .count();
    let rounds_off = stats["pairings"][0]["controller"]["mode"]["state"] == "off";
    if rounds_off {
        assert!(by_rounds >= 2, "{answers:?} {stats}");
    } else {
        assert_eq!(
            by_rounds,
            answers.len() - 1,
            "requests after the native path switched off went by rounds: {answers:?} {stats}"
        );
        assert_eq!(
            stats["pairings"][0]["requests"]["passthrough"], 0,
            "nothing passed through while the rounds path speculated: {stats}"
        );
    }
}
