//! The bundled patches' per-request `speculative.n_max` (0001) and the draft model that stays idle
//! at `n_max` 0 (0002), against real patched servers with a draft model of their own (`-md`), one
//! of them on a real rpc-server behind the project's relay.

use serde_json::{json, Value};
use tightwad_e2e::patched::{
    completion, prefix, start_target, step, timing, tokenize, DRAFT_MAX, K,
};
use tightwad_e2e::{compare, completion_tokens, env, prompts, LlamaServer, ServerOptions};

#[tokio::test]
async fn speculative_n_max_caps_a_draft_model_target_per_request() {
    let env = env();
    let draft_model = env.model("draft.gguf").display().to_string();
    let target = start_target(
        1,
        4096,
        &["-md", &draft_model, "--spec-type", "draft-simple"],
    )
    .await;
    let prompt = tokenize(&target, "The quick brown fox").await;
    let reference = target.reference(json!(prompt), 48).await;
    let ask = |extra: Value| {
        let mut body = json!({"prompt": prompt, "n_predict": 48, "temperature": 0,
                              "return_tokens": true, "cache_prompt": false});
        tightwad_e2e::merge(&mut body, extra);
        completion(&target, body)
    };

    // Speculation steps of a generation: each yields its accepted tokens plus one.
    let steps = |v: &Value| timing(v, "predicted_n") - timing(v, "draft_n_accepted");

    let default = ask(json!({})).await;
    assert!(
        timing(&default, "draft_n") > 0,
        "the target never drafted: {default}"
    );
    assert!(
        timing(&default, "draft_n") > 2 * steps(&default),
        "with n_max 8 the draft model should draft more than 2 per step: {default}"
    );

    let none = ask(json!({"speculative.n_max": 0})).await;
    assert_eq!(timing(&none, "draft_n"), 0, "{none}");
    compare(&completion_tokens(&none), &reference, "n_max 0");

    let two = ask(json!({"speculative.n_max": 2})).await;
    assert!(timing(&two, "draft_n") > 0, "{two}");
    assert!(
        timing(&two, "draft_n") <= 2 * steps(&two),
        "n_max 2 drafted {} tokens in {} steps: {two}",
        timing(&two, "draft_n"),
        steps(&two)
    );
    compare(&completion_tokens(&two), &reference, "n_max 2");

    // A client draft on a target with its own draft model: verified like anywhere else.
    let v = step(&target, &prompt, &reference.tokens[..K], json!({})).await;
    compare(
        &completion_tokens(&v),
        &prefix(&reference, K + 1),
        "client draft on a -md target",
    );
}

/// Patch 0002: a request at `speculative.n_max` 0 leaves the target's draft model alone. The draft
/// model sits on a real rpc-server behind the project's relay (zero added delay: only the bytes
/// that cross it count), as on a LAN: before the patch every token of an `n_max 0` request was
/// also evaluated on the draft model over RPC. Then a request that drafts again on the same slot
/// (its prompt cached, the draft model's cache emptied) re-evaluates the prompt on both models and
/// drafts as well as before; every answer is the target's own.
#[tokio::test]
async fn at_n_max_0_the_remote_draft_model_does_no_work_and_drafting_resumes_after() {
    use tightwad_benchmarks::relay::{LanRelay, LinkConfig};
    use tightwad_e2e::RpcServer;
    let env = env();
    let rpc = RpcServer::start(&env).await;
    let relay = LanRelay::start(
        "127.0.0.1:0".parse().expect("address"),
        format!("127.0.0.1:{}", rpc.port),
        LinkConfig::with_rtt(std::time::Duration::ZERO),
    )
    .await
    .expect("relay");
    let mut opts =
        ServerOptions::native_target(8, &env.model("draft.gguf"), relay.local_addr().port());
    opts.slots = 1;
    opts.ctx = 4096;
    opts.extra
        .extend(["--spec-draft-n-max".to_string(), DRAFT_MAX.to_string()]);
    let target = LlamaServer::start(&env, &env.model("target.gguf"), opts).await;

    for (i, text) in prompts().iter().take(3).enumerate() {
        let prompt = tokenize(&target, text).await;
        let reference = target.reference(json!(prompt), 48).await;
        let ask = |n_max: u64, cache_prompt: bool| {
            completion(
                &target,
                json!({"prompt": prompt, "n_predict": 48, "temperature": 0, "return_tokens": true,
                       "cache_prompt": cache_prompt, "speculative.n_max": n_max}),
            )
        };

        // Drafting on, the prompt evaluated afresh on both models: the draft model works over
        // the link.
        let before = relay.bytes_relayed();
        let on = ask(8, false).await;
        let drafting_bytes = relay.bytes_relayed() - before;
        assert!(
            timing(&on, "draft_n") > 0,
            "prompt {i}: never drafted: {on}"
        );
        assert!(
            drafting_bytes > 0,
            "prompt {i}: the draft model was not used over RPC"
        );
        compare(&completion_tokens(&on), &reference, "n_max 8");

        // Drafting off: not one byte to the draft model's host, the same answer.
        // Drafting off: the draft model's host hears of it once (the slot's draft cache is
        // emptied: less than one drafting request's traffic), then not one byte, whatever the
        // length of the answer; the same answer.
        let before = relay.bytes_relayed();
        let off = ask(0, true).await;
        let first_off_bytes = relay.bytes_relayed() - before;
        assert!(
            first_off_bytes * 10 < drafting_bytes,
            "prompt {i}: the first request at n_max 0 moved {first_off_bytes} bytes to the draft model's host (drafting moved {drafting_bytes})"
        );
        assert_eq!(timing(&off, "draft_n"), 0, "prompt {i}: {off}");
        compare(&completion_tokens(&off), &reference, "n_max 0");
        let before = relay.bytes_relayed();
        let off = ask(0, true).await;
        assert_eq!(
            relay.bytes_relayed() - before,
            0,
            "prompt {i}: a request at speculative.n_max 0 still used the remote draft model"
        );
        compare(&completion_tokens(&off), &reference, "n_max 0, again");

        // On again, same slot, the prompt cached by the target but not by the draft model: the
        // prompt is evaluated afresh on both, so the draft model drafts exactly as it did the
        // first time (same drafts, same acceptance). Without the re-evaluation it would draft
        // from an empty cache, with no context.
        let again = ask(8, true).await;
        assert_eq!(
            (
                timing(&again, "draft_n"),
                timing(&again, "draft_n_accepted")
            ),
            (timing(&on, "draft_n"), timing(&on, "draft_n_accepted")),
            "prompt {i}: drafting after n_max 0 differs from drafting before it: {again}"
        );
        compare(
            &completion_tokens(&again),
            &reference,
            "n_max 8 after n_max 0",
        );
    }
}
