//! Native pairing: llama.cpp's own speculation in the target, with the draft model on a remote
//! rpc-server; the proxy fronts it and decides per request how many tokens it may draft.

use serde_json::json;
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, prompts, proxy_token_ids, LlamaServer, RpcServer,
    RunningProxy, ServerOptions,
};

#[tokio::test]
async fn the_proxy_steers_native_pairing_and_output_stays_the_targets() {
    let env = env();
    let rpc = RpcServer::start(&env).await;
    let mut opts = ServerOptions::target(4);
    opts.slots = 1;
    opts.ctx = 4096;
    opts.extra = vec![
        "-md".into(),
        env.model("draft.gguf").display().to_string(),
        "--spec-type".into(),
        "draft-simple".into(),
        "--rpc".into(),
        format!("127.0.0.1:{}", rpc.port),
        "--spec-draft-device".into(),
        "RPC0".into(),
        "-ngld".into(),
        "99".into(),
    ];
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
    let mut opts = ServerOptions::target(4);
    opts.ctx = 8192;
    opts.extra = vec![
        "-md".into(),
        env.model("draft.gguf").display().to_string(),
        "--spec-type".into(),
        "draft-simple".into(),
        "--rpc".into(),
        format!("127.0.0.1:{}", rpc.port),
        "--spec-draft-device".into(),
        "RPC0".into(),
        "-ngld".into(),
        "99".into(),
    ];
    let target = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;
    let mut draft =
        LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let mut entry = RunningProxy::entry(&target.url, Some(&draft.url), 4);
    entry.native = true;
    let proxy = RunningProxy::start_entry(entry).await;

    let mut outcomes = Vec::new();
    for prompt in prompts().iter().take(8) {
        let (s, through) = proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 32, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(s, 200, "{through}");
        assert_eq!(through["tightwad"]["served_by"], "speculative", "{through}");
        let reference = target.reference(json!(prompt), 32).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
    }
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
    let mut outcomes = Vec::new();
    for prompt in prompts().iter().skip(8).take(4) {
        let (s, through) = proxy
            .post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 32, "temperature": 0, "return_token_ids": true}))
            .await;
        assert_eq!(s, 200, "{through}");
        let reference = target.reference(json!(prompt), 32).await;
        outcomes.push(compare(&proxy_token_ids(&through), &reference, prompt));
    }
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
