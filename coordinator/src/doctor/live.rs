//! Checks against the running llama-servers of each `[[pairings]]` entry, from this host (where
//! the proxy runs): network round trip and throughput, a tokenizer probe on both servers, the
//! target's slots, and the predicted payoff of speculation from short measured runs, through
//! the proxy's own cost model ([`tightwad_serve::engine::controller::Controller`]).

use std::time::{Duration, Instant};

use serde_json::json;

mod draft_prefix;
mod draft_stop;
mod one_pass;
mod slots;

use one_pass::one_pass_check;
pub use slots::{slots_check, target_slots};

use super::report::{Category, Check, Status};
use crate::cluster::layout::{Layout, PairingUrls};
use tightwad_serve::backend::llamacpp::LlamaServer;
use tightwad_serve::backend::types::{Role, Sampling, TokenId};
use tightwad_serve::backend::{Backend, BackendKind};
use tightwad_serve::engine::controller::Controller;
use tightwad_serve::engine::draft_length;
use tightwad_serve::engine::probe::compare_tokenizers;
use tightwad_serve::engine::TOKENIZER_PROBES;

/// Prompt for the speed and acceptance runs.
const PAYOFF_PROMPT: &str = "Write a short story about a lighthouse keeper who finds a message in a bottle. Once upon a time,";
const RTT_SAMPLES: usize = 5;
const THROUGHPUT_BYTES: usize = 64 * 1024;
const TARGET_TOKENS: usize = 48;
const MAX_ROUNDS: usize = 16;

pub async fn checks(layout: &Layout) -> Vec<Check> {
    let mut checks = Vec::new();
    for (index, pairing) in layout.pairings.iter().enumerate() {
        checks.extend(pairing_checks(&pairing.display_name(index), pairing).await);
    }
    checks
}

fn server(role: Role, url: &str) -> Option<LlamaServer> {
    LlamaServer::new(role, url, Duration::from_secs(60)).ok()
}

/// Median `/health` round trip, or why the server does not answer.
async fn round_trip(server: &LlamaServer) -> Result<Duration, String> {
    let mut samples = Vec::new();
    for _ in 0..RTT_SAMPLES {
        let start = Instant::now();
        match server.health().await {
            Ok(true) => samples.push(start.elapsed()),
            Ok(false) => {
                return Err("answers /health with an error status (still loading its model, or not a llama-server)".into())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}

async fn network_check(
    name: &str,
    role: Role,
    url: &str,
) -> (Check, Option<(LlamaServer, Duration)>) {
    let subject = format!("{name} {} {url}", role.as_str());
    let Some(server) = server(role, url) else {
        return (
            Check::new(Category::Network, subject, Status::Fail, "invalid URL")
                .hint("fix the URL in [[pairings]]"),
            None,
        );
    };
    let rtt = match round_trip(&server).await {
        Ok(rtt) => rtt,
        Err(e) => {
            return (
                Check::new(Category::Network, subject, Status::Fail, format!("not answering ({e}); the tokenizer, network and payoff checks need it"))
                    .hint("start it (`tightwad agent start HOST PROCESS` or `tightwad up`) and run doctor again; `tightwad doctor --offline` checks the rest before anything runs"),
                None,
            )
        }
    };
    // Throughput: one request carrying 64 KiB. Its time minus the round trip bounds the link
    // rate from below (the server's tokenization is inside it): cheap, and never flattering.
    let text = "lorem ipsum ".repeat(THROUGHPUT_BYTES / 12);
    let start = Instant::now();
    let throughput = server
        .tokenize(&text, false)
        .await
        .ok()
        .map(|_| start.elapsed().saturating_sub(rtt))
        .map(|t| text.len() as f64 / t.as_secs_f64().max(1e-6) / 1e6);
    let message = format!(
        "RTT {:.2} ms (median of {RTT_SAMPLES} GET /health){}",
        rtt.as_secs_f64() * 1e3,
        throughput
            .map(|mb| format!(", payload ≥ {mb:.1} MB/s (64 KiB request; a lower bound, the server's tokenization is inside; a round moves ~5–10 KB)"))
            .unwrap_or_default()
    );
    let status = if rtt > Duration::from_millis(20) {
        Status::Warn
    } else {
        Status::Pass
    };
    let mut check = Check::new(Category::Network, subject, status, message)
        .details(json!({ "rtt_ms": rtt.as_secs_f64() * 1e3, "throughput_mb_s": throughput }));
    if status == Status::Warn {
        check = check.hint("every speculation round pays two round trips: use wired Ethernet, and keep the proxy on the target's host");
    }
    (check, Some((server, rtt)))
}

async fn pairing_checks(name: &str, pairing: &PairingUrls) -> Vec<Check> {
    let mut checks = Vec::new();
    let (check, target) = network_check(name, Role::Target, &pairing.target).await;
    checks.push(check);
    let draft_url = pairing
        .draft
        .as_deref()
        .filter(|d| *d != tightwad_serve::engine::PROMPT_LOOKUP);
    let draft = match draft_url {
        Some(url) => {
            let (check, draft) = network_check(name, Role::Draft, url).await;
            checks.push(check);
            draft
        }
        None => None,
    };
    // The target's `/props`, read once for the checks that judge it.
    let props = match (&target, pairing.target_kind) {
        (Some((target, _)), BackendKind::Llamacpp) => {
            Some(target.props().await.map_err(|e| e.to_string()))
        }
        _ => None,
    };
    if let (Some((target, _)), Some(props)) = (&target, &props) {
        checks.push(one_pass_check(name, props, pairing.draft_tokens));
        if pairing.native {
            checks.push(native_steering_check(name, target).await);
        }
    }
    if pairing.native {
        if let Some((target, _)) = &target {
            let k = draft_length::native(pairing.draft_tokens);
            checks.push(match native_payoff(name, target, k).await {
                Ok(check) => check,
                Err(e) => Check::new(
                    Category::Payoff,
                    format!("pairing {name}"),
                    Status::Skip,
                    format!("could not measure native pairing: {e}"),
                ),
            });
        }
        return checks;
    }
    let (Some((target, target_rtt)), Some((draft, draft_rtt))) = (target, draft) else {
        return checks;
    };
    let subject = format!("pairing {name}");
    if pairing.target_kind == BackendKind::Vllm || pairing.draft_kind == BackendKind::Vllm {
        checks.extend(vllm_pairing_checks(&subject, pairing).await);
        return checks;
    }
    let draft_props = draft.props().await.map_err(|e| e.to_string());
    checks.push(draft_prefix::draft_prefix_check(name, &draft_props));
    if pairing.draft_p_min > 0.0 {
        checks.push(draft_stop::draft_stop_check(
            name,
            &draft_props,
            pairing.draft_p_min,
        ));
    }

    // Tokenizer probe: the engine's own, so doctor checks what the proxy relies on.
    let mismatch = compare_tokenizers(
        &Backend::Llamacpp(target.clone()),
        &Backend::Llamacpp(draft.clone()),
    )
    .await
    .err();
    match mismatch {
        None => checks.push(Check::new(
            Category::Vocabulary,
            subject.clone(),
            Status::Pass,
            format!(
                "the running servers tokenize all {} probes identically",
                TOKENIZER_PROBES.len()
            ),
        )),
        Some(m) => {
            checks.push(
                Check::new(Category::Vocabulary, subject, Status::Fail, format!("the running servers tokenize differently: {m}"))
                    .hint("the draft must use the target's tokenizer: pick a draft of the same model family"),
            );
            return checks;
        }
    }

    // Slots: k draft tokens are verified as k+1 prompts in one decode, or as one sequence by a
    // target with the bundled patch (which the proxy uses wherever the target advertises it).
    // k and the path are the proxy's (`engine::draft_length::for_target`).
    let one_pass_max = props
        .as_ref()
        .and_then(|p| p.as_ref().ok())
        .and_then(|p| p.capabilities.one_pass_max());
    let (k, one_pass) = draft_length::for_target(pairing.draft_tokens, one_pass_max);
    match &props {
        Some(Ok(props)) => checks.push(slots_check(&subject, props.total_slots, k, one_pass)),
        Some(Err(e)) => checks.push(Check::new(
            Category::Slots,
            subject.clone(),
            Status::Skip,
            format!("/props: {e}"),
        )),
        None => {}
    }

    checks.push(
        match payoff(name, &target, &draft, k, target_rtt.max(draft_rtt)).await {
            Ok(check) => check,
            Err(e) => Check::new(
                Category::Payoff,
                subject,
                Status::Skip,
                format!("could not measure: {e}"),
            ),
        },
    );
    checks
}

/// A pairing with a vLLM side: versions for the audit and the tokenizer probes through each
/// server's own API. The slot and payoff checks replay llama.cpp requests, so they are skipped;
/// the proxy's controller measures the payoff live.
async fn vllm_pairing_checks(subject: &str, pairing: &PairingUrls) -> Vec<Check> {
    let timeout = Duration::from_secs(60);
    let draft_url = pairing.draft.as_deref().unwrap_or_default();
    let servers = (
        Backend::new(pairing.target_kind, Role::Target, &pairing.target, timeout),
        Backend::new(pairing.draft_kind, Role::Draft, draft_url, timeout),
    );
    let (Ok(target), Ok(draft)) = servers else {
        return vec![Check::new(
            Category::Network,
            subject.to_string(),
            Status::Fail,
            "invalid URL",
        )
        .hint("fix the URL in [[pairings]]")];
    };
    let mut checks = Vec::new();
    for (role, server) in [("target", &target), ("draft", &draft)] {
        match server.facts().await {
            Ok(f) => checks.push(
                Check::new(
                    Category::Build,
                    subject.to_string(),
                    if f.eos_known || role == "draft" { Status::Pass } else { Status::Warn },
                    format!("{role} ({}): {} serving {}, context {}", server.kind().as_str(), f.build, f.model, f.n_ctx),
                )
                .details(json!({"role": role, "kind": server.kind().as_str(), "build": f.build, "model": f.model})),
            ),
            Err(e) => checks.push(Check::new(
                Category::Build,
                subject.to_string(),
                Status::Warn,
                format!("{role}: could not read its version and model: {e}"),
            )),
        }
    }
    if let Some(c) = checks.first_mut() {
        if c.status == Status::Warn && pairing.target_kind == BackendKind::Vllm {
            *c = c.clone().hint("start the vLLM target with --enable-tokenizer-info-endpoint, or the proxy serves it target-only (it cannot tell where answers end)");
        }
    }
    let mismatch = compare_tokenizers(&target, &draft).await.err();
    checks.push(match mismatch {
        None => Check::new(
            Category::Vocabulary,
            subject.to_string(),
            Status::Pass,
            format!(
                "the running servers tokenize all {} probes identically",
                TOKENIZER_PROBES.len()
            ),
        ),
        Some(m) => Check::new(
            Category::Vocabulary,
            subject.to_string(),
            Status::Fail,
            format!("the running servers tokenize differently: {m}"),
        )
        .hint("the draft must use the target's tokenizer: pick a draft of the same model family"),
    });
    checks.push(Check::new(
        Category::Payoff,
        subject.to_string(),
        Status::Skip,
        "not measured for pairings with a vLLM side; the proxy's controller measures it live",
    ));
    checks
}

/// Measures the target alone, then replays speculation rounds against the target's own greedy
/// continuation (the draft proposes k tokens; the target verifies k+1 prompts in one request,
/// exactly as the engine does), and asks the engine's controller what it predicts.
async fn payoff(
    name: &str,
    target: &LlamaServer,
    draft: &LlamaServer,
    k: usize,
    rtt: Duration,
) -> Result<Check, String> {
    let subject = format!("pairing {name}");
    let greedy = Sampling::greedy();
    let prompt: Vec<TokenId> = target
        .tokenize(PAYOFF_PROMPT, true)
        .await
        .map_err(|e| e.to_string())?;
    // Warm-up (loads caches), then the timed run; its tokens are the reference continuation.
    target
        .complete(&prompt, 4, &greedy)
        .await
        .map_err(|e| e.to_string())?;
    let reference = target
        .complete(&prompt, TARGET_TOKENS, &greedy)
        .await
        .map_err(|e| e.to_string())?;
    let timings = reference.timings.clone().unwrap_or_default();
    if reference.tokens.len() < 8 || timings.predicted_ms <= 0.0 {
        return Err("the target generated too few tokens to time".into());
    }
    let target_tok_s = timings.predicted_n / (timings.predicted_ms / 1e3);
    let mut rounds = Vec::new();

    let continuation = &reference.tokens;
    let mut position = 0;
    let (mut drafted_total, mut accepted_total, mut draft_time, mut draft_tokens_timed) =
        (0, 0, 0.0, 0.0);
    for _ in 0..MAX_ROUNDS {
        if position + 1 >= continuation.len() {
            break;
        }
        let mut context = prompt.clone();
        context.extend_from_slice(&continuation[..position]);
        let start = Instant::now();
        let proposal = draft
            .complete(&context, k, &greedy)
            .await
            .map_err(|e| e.to_string())?;
        let draft_seconds = start.elapsed().as_secs_f64();
        let proposed: Vec<TokenId> = proposal.tokens.iter().take(k).copied().collect();
        if let Some(t) = &proposal.timings {
            if t.predicted_ms > 0.0 {
                draft_time += t.predicted_ms / 1e3;
                draft_tokens_timed += t.predicted_n;
            }
        }
        let mut prompts = vec![context.clone()];
        for i in 0..proposed.len() {
            let mut p = context.clone();
            p.extend_from_slice(&proposed[..=i]);
            prompts.push(p);
        }
        let start = Instant::now();
        target
            .next_token_many(&prompts, &greedy, 0)
            .await
            .map_err(|e| e.to_string())?;
        let verify_seconds = start.elapsed().as_secs_f64();
        let accepted = proposed
            .iter()
            .zip(&continuation[position..])
            .take_while(|(a, b)| a == b)
            .count();
        rounds.push((proposed.len(), accepted, draft_seconds, verify_seconds));
        drafted_total += proposed.len();
        accepted_total += accepted;
        position += accepted + 1;
    }
    let (best_k, speedup, controller) = predict(
        k,
        timings.predicted_n as usize,
        timings.predicted_ms / 1e3,
        &rounds,
    )
    .ok_or("no rounds measured")?;
    let view = controller.view();
    let acceptance = accepted_total as f64 / drafted_total.max(1) as f64;
    let draft_tok_s = if draft_time > 0.0 {
        draft_tokens_timed / draft_time
    } else {
        0.0
    };
    let message = format!(
        "predicted {speedup:.2}x at k = {best_k} (target alone {target_tok_s:.1} tok/s, draft {draft_tok_s:.1} tok/s, acceptance {:.0}% of {drafted_total}, round: draft {:.1} ms + verify {:.1} ms, RTT {:.2} ms)",
        acceptance * 100.0,
        view.draft_round_ms.unwrap_or(0.0),
        view.verify_round_ms.unwrap_or(0.0),
        rtt.as_secs_f64() * 1e3
    );
    let details = json!({
        "predicted_speedup": speedup, "best_k": best_k, "target_tok_s": target_tok_s,
        "draft_tok_s": draft_tok_s, "acceptance": acceptance, "drafted": drafted_total,
        "draft_round_ms": view.draft_round_ms, "verify_round_ms": view.verify_round_ms,
        "rtt_ms": rtt.as_secs_f64() * 1e3,
    });
    Ok(verdict(subject, speedup, message, details))
}

/// Pass from 1.05x up (the controller's own switch-on threshold), else a warning: a loss is
/// not a fault (the controller serves the target alone), but the user should know.
fn verdict(subject: String, speedup: f64, message: String, details: serde_json::Value) -> Check {
    if speedup >= 1.05 {
        Check::new(Category::Payoff, subject, Status::Pass, message).details(details)
    } else {
        Check::new(Category::Payoff, subject, Status::Warn, message)
            .hint("speculation will not pay here; the proxy's controller will serve the target alone. It pays when a round (draft + verify + 2 RTT) costs little next to the target's own tokens: a faster draft, a slower target, or native pairing (`[[native_pairings]]`) on compute-bound targets")
            .details(details)
    }
}

/// The controller's prediction from measured numbers: the target's own speed, then each round's
/// (drafted, accepted, draft seconds, verify seconds). `None` before any round.
pub fn predict(
    k_cap: usize,
    target_tokens: usize,
    target_seconds: f64,
    rounds: &[(usize, usize, f64, f64)],
) -> Option<(usize, f64, Controller)> {
    let mut controller = Controller::new(k_cap, None);
    let now = Instant::now();
    controller.record_target_only(now, target_tokens, target_seconds);
    for (drafted, accepted, draft_s, verify_s) in rounds {
        controller.record_round(now, *drafted, *accepted, *draft_s, *verify_s);
    }
    let (k, s) = controller.best_k()?;
    Some((k, s, controller))
}

/// Tokens per second of one streamed generation after its first token, with llama.cpp's own
/// speculation allowed `n_max` draft tokens (0: the target alone).
async fn streamed_rate(
    url: &str,
    prompt: &[TokenId],
    n: usize,
    n_max: usize,
) -> Result<f64, String> {
    use futures::StreamExt;
    // A client of its own per run: a pooled connection left by the previous stream is not reused.
    let target = server(Role::Target, url).ok_or("invalid URL")?;
    let stream = target
        .stream(prompt, n, &Sampling::greedy(), Some(n_max))
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
    futures::pin_mut!(stream);
    let mut first = None;
    let mut count = 0usize;
    while let Some(event) = stream.next().await {
        event.map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
        count += 1;
        if first.is_none() {
            first = Some(Instant::now());
        }
    }
    let first = first.ok_or("no tokens")?;
    let seconds = first.elapsed().as_secs_f64();
    if count < 8 || seconds <= 0.0 {
        return Err(format!("only {count} tokens to time"));
    }
    Ok((count - 1) as f64 / seconds)
}

/// Whether the natively paired target honours a per-request `speculative.n_max` (measured: with 0
/// it must draft nothing); if not, the proxy cannot switch its speculation off.
async fn native_steering_check(name: &str, target: &LlamaServer) -> Check {
    let subject = format!("pairing {name} native steering");
    let prompt = match target.tokenize(PAYOFF_PROMPT, true).await {
        Ok(p) => p,
        Err(e) => {
            return Check::new(
                Category::Payoff,
                subject,
                Status::Skip,
                format!("cannot tokenize: {e}"),
            )
        }
    };
    match target.drafted_with_n_max(&prompt, 16, 0).await {
        Ok(0) => Check::new(
            Category::Payoff,
            subject,
            Status::Pass,
            "speculative.n_max 0 drafted nothing: the proxy can switch native speculation off per request",
        ),
        Ok(n) => Check::new(
            Category::Payoff,
            subject,
            Status::Fail,
            format!("the target drafted {n} tokens although the request said speculative.n_max 0: this llama-server ignores per-request steering, so native speculation cannot be switched off when it loses"),
        )
        .hint("tightwad build (Tightwad's bundled patch restores per-request speculative.n_max)"),
        Err(e) => Check::new(Category::Payoff, subject, Status::Skip, format!("could not measure: {e}")),
    }
}

/// Native pairing: the target speculates in-process with its remote draft, so the payoff is
/// measured directly: the same greedy generation with speculation off (`speculative.n_max` 0)
/// and on (k), after the first token.
async fn native_payoff(name: &str, target: &LlamaServer, k: usize) -> Result<Check, String> {
    let prompt = target
        .tokenize(PAYOFF_PROMPT, true)
        .await
        .map_err(|e| e.to_string())?;
    let url = target.base_url();
    streamed_rate(url, &prompt, 8, 0).await.ok(); // warm-up
    let alone = streamed_rate(url, &prompt, 64, 0).await?;
    let paired = streamed_rate(url, &prompt, 64, k).await?;
    let speedup = paired / alone;
    let message = format!(
        "native pairing measured {speedup:.2}x: {paired:.1} tok/s with k = {k} against {alone:.1} tok/s for the target alone (64 greedy tokens each)"
    );
    let details = json!({ "measured_speedup": speedup, "k": k, "target_tok_s": alone, "native_tok_s": paired });
    Ok(verdict(
        format!("pairing {name}"),
        speedup,
        message,
        details,
    ))
}

#[cfg(test)]
mod tests;
