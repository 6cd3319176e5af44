//! The round loop against a SIMULATION of the servers ([`crate::backend::simulated`]): acceptance,
//! an end-of-generation token inside a draft, stop strings across a round boundary, a draft that
//! fails mid-answer, k changing between rounds, pipelining. Each answer is compared token by token
//! with the same pairing's target-only answer, so a change to the loop is caught in seconds; the
//! integration suite checks the same against real llama-servers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::output::FinishReason;
use super::{
    Event, Generation, GenerationRequest, Pairing, PairingConfig, PromptInput, Verification,
    VerifyMode,
};
use crate::backend::simulated::{NextToken, SimulatedServer};
use crate::backend::{Backend, BackendKind, Sampling, TokenId};
use crate::metrics::{Metrics, ServedBy};

/// The simulated models' end-of-generation token.
const EOS: TokenId = 25;

/// A deterministic "model": a hash of the whole context picks one of 25 letters.
fn model(seed: u64) -> NextToken {
    Arc::new(move |ctx: &[TokenId]| {
        let h = ctx.iter().fold(seed, |h, t| {
            h.wrapping_mul(6364136223846793005)
                .wrapping_add(u64::from(*t) + 1)
        });
        ((h >> 33) % 25) as TokenId
    })
}

/// `base`, but choosing another letter whenever the context length is a multiple of `every`.
fn disagreeing(base: NextToken, every: usize) -> NextToken {
    Arc::new(move |ctx: &[TokenId]| {
        let t = base(ctx);
        if ctx.len() % every == 0 {
            (t + 1) % 25
        } else {
            t
        }
    })
}

/// `base`, ending with EOS once the context is `len` long.
fn ending_at(base: NextToken, len: usize) -> NextToken {
    Arc::new(move |ctx: &[TokenId]| if ctx.len() >= len { EOS } else { base(ctx) })
}

fn config(k: usize) -> PairingConfig {
    PairingConfig {
        aliases: Vec::new(),
        name: "sim".into(),
        target_url: "simulated://target".into(),
        draft_url: Some("simulated://draft".into()),
        drafts: Vec::new(),
        prompt_lookup_fallback: false,
        draft_tokens: Some(k),
        draft_p_min: 0.0,
        draft_backend_sampling: false,
        target_timeout: Duration::from_secs(5),
        draft_timeout: Duration::from_secs(5),
        disable_above_tok_s: None,
        adaptive: false,
        pipeline: crate::engine::Pipelining::Off,
        native: false,
        moe: false,
        target_kind: BackendKind::Llamacpp,
        draft_kind: BackendKind::Llamacpp,
        verify: VerifyMode::Auto,
    }
}

/// The target's two ways to verify a draft: one prompt per position, or one sequence.
fn targets(next: NextToken) -> [Arc<SimulatedServer>; 2] {
    [
        Arc::new(SimulatedServer::new(next.clone(), EOS)),
        Arc::new(SimulatedServer::new(next, EOS).with_one_pass(8)),
    ]
}

fn pairing(
    config: PairingConfig,
    target: &Arc<SimulatedServer>,
    draft: Option<SimulatedServer>,
) -> Pairing {
    let drafts = draft
        .map(|d| {
            vec![(
                "simulated://draft".to_string(),
                Backend::Simulated(Arc::new(d)),
            )]
        })
        .unwrap_or_default();
    let metrics = Metrics::new().pairing("sim");
    Pairing::with_backends(config, metrics, Backend::Simulated(target.clone()), drafts)
}

/// Generate through the engine; the text as sent, and the figures.
async fn generate(
    p: &Pairing,
    prompt: &[TokenId],
    max_tokens: usize,
    stop: &[&str],
) -> (String, Generation) {
    let request = GenerationRequest {
        prompt: PromptInput::Tokens(prompt.to_vec()),
        max_tokens: Some(max_tokens),
        sampling: Sampling::greedy(),
        default_temperature: false,
        stop: stop.iter().map(|s| s.to_string()).collect(),
    };
    let prepared = p.prepare(request).await.expect("prepared");
    let (tx, mut rx) = mpsc::channel(64);
    let collect = async {
        let mut text = String::new();
        while let Some(event) = rx.recv().await {
            match event {
                Event::Text(t) => text.push_str(&t),
                Event::Done(result) => return (text, result.expect("generated")),
            }
        }
        panic!("the engine ended without Done");
    };
    let ((), out) = tokio::join!(p.run(prepared, tx), collect);
    out
}

/// The same request served by the target alone (no draft): what every answer must equal.
async fn target_alone(
    target: NextToken,
    prompt: &[TokenId],
    max_tokens: usize,
    stop: &[&str],
) -> (String, Generation) {
    let server = Arc::new(SimulatedServer::new(target, EOS));
    let mut c = config(4);
    c.draft_url = None;
    let (text, g) = generate(&pairing(c, &server, None), prompt, max_tokens, stop).await;
    assert_eq!(g.served_by, ServedBy::TargetOnly);
    (text, g)
}

fn prompts() -> Vec<Vec<TokenId>> {
    (0..12u32)
        .map(|i| (0..(3 + i % 5)).map(|j| (i * 7 + j * 3) % 25).collect())
        .collect()
}

/// Every one of [`prompts`] through `p`: token for token and byte for byte the answer of
/// `target` alone.
async fn answers_every_prompt_as_the_target_alone(
    p: &Pairing,
    target: NextToken,
    max_tokens: usize,
) {
    for prompt in prompts() {
        let (text, g) = generate(p, &prompt, max_tokens, &[]).await;
        let (want_text, want) = target_alone(target.clone(), &prompt, max_tokens, &[]).await;
        assert_eq!(g.token_ids, want.token_ids, "prompt {prompt:?}");
        assert_eq!(text, want_text, "prompt {prompt:?}");
    }
}

#[tokio::test]
async fn rounds_emit_exactly_the_targets_greedy_tokens() {
    for (prompt, target) in prompts()
        .into_iter()
        .flat_map(|p| targets(model(1)).map(|t| (p.clone(), t)))
    {
        let draft = SimulatedServer::new(disagreeing(model(1), 3), EOS);
        let p = pairing(config(4), &target, Some(draft));
        p.info().await.expect("probed");
        // One-pass: the probe warmed one verification of each draft length 1..=4 (a GPU's first
        // batch of each size is slow); multi-prompt verification is not warmed.
        let warmed = target.decodes();
        assert_eq!(
            warmed,
            if target.facts().one_pass_max.is_some() {
                4
            } else {
                0
            }
        );
        let (text, g) = generate(&p, &prompt, 40, &[]).await;
        let (want_text, want) = target_alone(model(1), &prompt, 40, &[]).await;
        assert_eq!(g.token_ids, want.token_ids, "prompt {prompt:?}");
        assert_eq!(text, want_text);
        assert_eq!(g.finish, FinishReason::Length);
        assert_eq!(g.served_by, ServedBy::Speculative);
        let one_pass = matches!(p.verification_view(), Some(Verification::OnePass));
        assert_eq!(one_pass, target.facts().one_pass_max.is_some());
        assert!(g.accepted > 0 && g.accepted < g.drafted, "{g:?}");
        // One verification per round, one decode each.
        assert_eq!(target.decodes() - warmed, g.rounds, "{g:?}");
        // Every round emits its accepted tokens plus the target's own next one.
        assert_eq!(g.accepted + g.rounds, g.completion_tokens, "{g:?}");
    }
}

/// The warm-up runs once per target: a re-probe of the same target (every 60 s, or after a
/// failure) does not repeat it.
#[tokio::test]
async fn a_re_probe_of_the_same_target_does_not_warm_it_again() {
    let target = Arc::new(SimulatedServer::new(model(1), EOS).with_one_pass(8));
    let draft = SimulatedServer::new(model(1), EOS);
    let p = pairing(config(4), &target, Some(draft));
    p.info().await.expect("probed");
    assert_eq!(
        target.decodes(),
        4,
        "one warm-up verification per draft length"
    );
    p.invalidate().await;
    p.info().await.expect("probed again");
    assert_eq!(target.decodes(), 4, "not warmed twice");
}

#[tokio::test]
async fn one_pass_rounds_ask_for_token_details_only_until_the_pieces_are_learnt() {
    let target = Arc::new(SimulatedServer::new(model(1), EOS).with_one_pass(8));
    let draft = SimulatedServer::new(disagreeing(model(1), 3), EOS);
    let p = pairing(config(4), &target, Some(draft));
    answers_every_prompt_as_the_target_alone(&p, model(1), 60).await;
    let rounds = p.metrics.rounds.get() as usize;
    // Details are asked while a draft holds a token never seen; the target's own next token is
    // learnt from the text (`content`) of the rounds that did not ask.
    assert!(
        target.details_asked() * 2 < rounds,
        "{} of {rounds} rounds asked for token details",
        target.details_asked()
    );
    // Every token's text was known or derived: none needed a `/detokenize`.
    assert_eq!(target.detokenized(), 0);
    // The stats count the rounds that asked.
    assert_eq!(
        p.metrics.snapshot().one_pass_detail_rounds as usize,
        target.details_asked()
    );
}

/// A target that returns each token's text (`return_pieces`) is never asked for token details,
/// from the first round on, and the text is its own.
#[tokio::test]
async fn one_pass_rounds_of_a_target_that_returns_pieces_never_ask_for_token_details() {
    let target = Arc::new(
        SimulatedServer::new(model(1), EOS)
            .with_one_pass(8)
            .with_pieces(),
    );
    let draft = SimulatedServer::new(disagreeing(model(1), 3), EOS);
    let p = pairing(config(4), &target, Some(draft));
    answers_every_prompt_as_the_target_alone(&p, model(1), 60).await;
    assert!(p.metrics.rounds.get() > 10);
    assert_eq!(target.details_asked(), 0);
    assert_eq!(target.detokenized(), 0);
    assert_eq!(p.metrics.snapshot().one_pass_detail_rounds, 0);
}

#[tokio::test]
async fn an_end_of_generation_token_inside_a_draft_ends_the_answer_there() {
    let prompt: Vec<TokenId> = vec![1, 2, 3];
    // The target ends after 6 tokens; the draft agrees, so the EOS sits inside an accepted block.
    let target_model = ending_at(model(2), prompt.len() + 6);
    for target in targets(target_model.clone()) {
        let draft = SimulatedServer::new(target_model.clone(), EOS);
        let p = pairing(config(4), &target, Some(draft));
        let (text, g) = generate(&p, &prompt, 40, &[]).await;
        let (want_text, want) = target_alone(target_model.clone(), &prompt, 40, &[]).await;
        assert_eq!(g.finish, FinishReason::Stop);
        assert_eq!(g.token_ids, want.token_ids);
        assert_eq!(g.completion_tokens, want.completion_tokens);
        assert_eq!(text, want_text);
        assert_eq!(text.len(), 6, "six letters, then the end: {text:?}");
    }
}

#[tokio::test]
async fn a_stop_string_across_a_round_boundary_ends_where_the_target_would() {
    let prompt: Vec<TokenId> = vec![4, 5, 6];
    let server = SimulatedServer::new(model(3), EOS);
    let letters = server.detokenize(&server.greedy(&prompt, 12));
    // With k = 3 and full acceptance, rounds emit tokens 1-4, 5-8, …: letters 4 and 5 (0-based
    // 3..5) straddle the first boundary.
    let stop = &letters[3..5];
    let target = Arc::new(SimulatedServer::new(model(3), EOS));
    let draft = SimulatedServer::new(model(3), EOS);
    let p = pairing(config(3), &target, Some(draft));
    let (text, g) = generate(&p, &prompt, 12, &[stop]).await;
    let (want_text, want) = target_alone(model(3), &prompt, 12, &[stop]).await;
    assert_eq!(g.finish, FinishReason::Stop);
    assert_eq!(want.finish, FinishReason::Stop);
    assert_eq!(text, want_text);
    assert!(
        !text.contains(stop),
        "{text:?} holds the stop string {stop:?}"
    );
    assert_eq!(
        text,
        letters[..letters.find(stop).expect("stop in letters")]
    );
    assert!(
        g.rounds >= 2,
        "the stop string must span a round boundary: {g:?}"
    );
}

#[tokio::test]
async fn a_draft_failing_mid_answer_hands_over_to_the_target_alone() {
    let prompt: Vec<TokenId> = vec![7, 8, 9];
    for target in targets(model(4)) {
        // Two proposals, then the draft host is gone.
        let draft = SimulatedServer::new(disagreeing(model(4), 4), EOS).failing_from_call(3);
        let p = pairing(config(4), &target, Some(draft));
        let (text, g) = generate(&p, &prompt, 30, &[]).await;
        let (want_text, want) = target_alone(model(4), &prompt, 30, &[]).await;
        assert_eq!(g.token_ids, want.token_ids);
        assert_eq!(text, want_text);
        assert_eq!(g.served_by, ServedBy::Speculative);
        assert_eq!(g.rounds, 2, "{g:?}");
        assert_eq!(p.metrics.draft_failures.get(), 1);
    }
}

#[tokio::test]
async fn k_shrinks_to_what_max_tokens_leaves_between_rounds() {
    let prompt: Vec<TokenId> = vec![10, 11];
    let target = Arc::new(SimulatedServer::new(model(5), EOS));
    let draft = SimulatedServer::new(model(5), EOS);
    let p = pairing(config(4), &target, Some(draft));
    // Full acceptance: round 1 drafts 4 and emits 5; 2 tokens are left, so round 2 drafts 1.
    let (_, g) = generate(&p, &prompt, 7, &[]).await;
    let (_, want) = target_alone(model(5), &prompt, 7, &[]).await;
    assert_eq!(g.token_ids, want.token_ids);
    assert_eq!((g.rounds, g.drafted, g.accepted), (2, 5, 5), "{g:?}");
    assert_eq!(g.completion_tokens, 7);
}

#[tokio::test]
async fn pipelined_drafting_is_exact_and_wins_on_full_acceptance() {
    let prompt: Vec<TokenId> = vec![12, 13, 14];
    let target = Arc::new(SimulatedServer::new(model(6), EOS));
    let draft = SimulatedServer::new(model(6), EOS);
    let mut c = config(4);
    c.pipeline = crate::engine::Pipelining::On;
    let p = pairing(c, &target, Some(draft));
    let (text, g) = generate(&p, &prompt, 30, &[]).await;
    let (want_text, want) = target_alone(model(6), &prompt, 30, &[]).await;
    assert_eq!(g.token_ids, want.token_ids);
    assert_eq!(text, want_text);
    assert!(
        g.prefetched > 0,
        "an always-right draft must win its bets: {g:?}"
    );
}

/// A SIMULATED draft that ends after a token its model is unsure of (`draft_p_min`): the answers
/// stay the target's, the drafts get shorter, and drafting ahead still wins its bets (which
/// blocks drafted ahead serve a round: `round::prefetch_serves`, tested there).
#[tokio::test]
async fn drafts_that_end_where_the_model_is_unsure_stay_exact_pipelined_or_not() {
    let prompt: Vec<TokenId> = vec![12, 13, 14];
    for pipeline in [
        crate::engine::Pipelining::Off,
        crate::engine::Pipelining::On,
    ] {
        let target = Arc::new(SimulatedServer::new(model(6), EOS).with_one_pass(8));
        let draft = SimulatedServer::new(model(6), EOS).with_unsure_tokens(5);
        let mut c = config(4);
        c.pipeline = pipeline;
        c.draft_p_min = 0.5;
        let p = pairing(c, &target, Some(draft));
        let (text, g) = generate(&p, &prompt, 60, &[]).await;
        let (want_text, want) = target_alone(model(6), &prompt, 60, &[]).await;
        assert_eq!(g.token_ids, want.token_ids, "{pipeline:?}");
        assert_eq!(text, want_text);
        assert!(g.drafted < 4 * g.rounds, "no draft ended early: {g:?}");
        if pipeline == crate::engine::Pipelining::On {
            assert!(g.prefetched > 0, "no block drafted ahead was used: {g:?}");
        }
    }
}

/// Under `pipeline = "auto"` a request that tries the way not preferred (here the first
/// pipelined one, while sequential is the likelier winner) measures that way: its throughput is
/// kept out of the controller's verdict on speculation, which a request of the preferred way
/// feeds.
#[tokio::test]
async fn a_pipelining_trial_does_not_count_as_speculations_throughput() {
    let prompt: Vec<TokenId> = vec![12, 13, 14];
    let target = Arc::new(SimulatedServer::new(model(6), EOS).with_one_pass(8));
    let draft = SimulatedServer::new(model(6), EOS);
    let mut c = config(4);
    c.pipeline = crate::engine::Pipelining::Auto;
    let p = pairing(c, &target, Some(draft));
    // Sequential first, until it has its rounds measured (12 rounds of 5 tokens).
    let (_, first) = generate(&p, &prompt, 80, &[]).await;
    assert_eq!(first.prefetched, 0, "{first:?}");
    let measured = p.controller_view().speculative_goodput_tok_s;
    assert!(measured.is_some());
    // Then the pipelined trial: its bets win (the draft is always right), its rate is not fed.
    let (_, trial) = generate(&p, &[15, 16], 80, &[]).await;
    assert!(trial.prefetched > 0, "{trial:?}");
    assert_eq!(p.controller_view().speculative_goodput_tok_s, measured);
    // A request of the preferred way counts again. Which way that is depends on microseconds
    // of simulated work (under a loaded test run the pipelined trial sometimes measured
    // faster), so the request may be of either: it is not a trial, so it counts.
    let preferred = p.drafter_views()[0].pipelining.pipelined;
    assert!(preferred.is_some(), "both ways measured, one preferred");
    let (_, after) = generate(&p, &[17, 18], 80, &[]).await;
    assert_eq!(Some(after.prefetched > 0), preferred, "{after:?}");
    assert_ne!(p.controller_view().speculative_goodput_tok_s, measured);
}

/// `moe = true` in a pairing's config (what `tightwad init` writes for a target with experts)
/// holds an adaptive controller's k at 4 with `draft_tokens = 8` while verification has not been
/// measured cheap: no round drafts more than 4. (At `draft_tokens` <= 4 it cannot act; the proxy
/// warns at startup, see `config::check`.)
#[tokio::test]
async fn moe_holds_k_at_four_below_a_draft_tokens_of_eight() {
    let moe = PairingConfig {
        adaptive: true,
        moe: true,
        ..config(8)
    };
    // Verification grows with k (2 ms a token), as on a MoE target whose extra tokens route to
    // other experts: the cap stays.
    let target =
        Arc::new(SimulatedServer::new(model(2), EOS).with_verify_time(Duration::from_millis(2)));
    let p = pairing(moe, &target, Some(SimulatedServer::new(model(2), EOS)));
    p.set_override(Some(true));
    let prompt = prompts().remove(0);
    let (_, g) = generate(&p, &prompt, 60, &[]).await;
    let (_, want) = target_alone(model(2), &prompt, 60, &[]).await;
    assert_eq!(g.token_ids, want.token_ids);
    assert_eq!(g.served_by, ServedBy::Speculative, "{g:?}");
    assert!(
        g.rounds > 0 && g.drafted <= 4 * g.rounds,
        "a round drafted more than 4: {g:?}"
    );
    assert!(p.controller_view().k <= 4, "{:?}", p.controller_view());
}

/// Without `draft_tokens` the draft length follows how the target verifies: 8 a round on a
/// one-pass target (within what it takes), 4 with one prompt per position; the probe gives the
/// controllers that cap and the stats show it. A pinned controller drafts its cap every round, so
/// the rounds show the length used.
#[tokio::test]
async fn an_unset_draft_length_follows_the_verification_path() {
    for (target, k) in [
        (SimulatedServer::new(model(1), EOS).with_one_pass(8), 8),
        (SimulatedServer::new(model(1), EOS).with_one_pass(5), 5),
        (SimulatedServer::new(model(1), EOS), 4),
    ] {
        let target = Arc::new(target);
        let draft = SimulatedServer::new(model(1), EOS);
        let p = pairing(
            PairingConfig {
                draft_tokens: None,
                ..config(0)
            },
            &target,
            Some(draft),
        );
        assert_eq!(p.draft_tokens_view(), None, "not probed yet");
        p.info().await.expect("probed");
        assert_eq!(p.draft_tokens_view(), Some(k));
        // The draft agrees every time: full rounds of k + 1 tokens until the last.
        let (_, g) = generate(&p, &[1, 2, 3], 10 * (k + 1), &[]).await;
        assert_eq!((g.rounds, g.drafted), (10, 10 * k), "k = {k}: {g:?}");
    }
}
