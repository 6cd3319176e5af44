//! What a pairing learns about its servers before it may speculate, and keeps up to date: the
//! target's context, end tokens and slots; per draft server whether it can speak for the target
//! (same vocabulary, same tokenization of [`TOKENIZER_PROBES`], enough target slots); which
//! drafter drafts. `tightwad doctor` checks the same probe strings.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use super::draft_length;
use super::pairing::{
    Drafter, Pairing, VerifyMode, DRAFT_RETRY_AFTER, PROMPT_LOOKUP, REPROBE_AFTER,
};
use crate::backend::reasoning::{self, ReasoningSyntax};
use crate::backend::{Backend, BackendError, BackendKind, ServerFacts, TokenId};

/// Strings both servers must tokenize identically before the draft may speak for the target. They
/// cover words, numbers, whitespace runs, punctuation, non-Latin scripts and emoji.
pub const TOKENIZER_PROBES: &[&str] = &[
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "3.14159 + 2,718 = 5.85959; 1e-9 × 10^9 = 1",
    "  multiple   spaces\tand\ttabs\n\nnew lines  ",
    "Grüße aus Köln — naïve café, 東京の天気は晴れ, Москва, 🙂🚀",
    "<|im_start|>user\nhi<|im_end|>\n</s><s>[INST]",
];

/// What the pairing learned about its servers, refreshed after failures.
#[derive(Debug)]
pub struct PairingInfo {
    pub target_model: String,
    pub target_build: String,
    /// Context size of one target slot: prompt + generation must stay below it.
    pub n_ctx: usize,
    /// End-of-generation token ids (EOS and the like).
    pub end_of_generation: HashSet<TokenId>,
    /// `Ok(k)`: speculate with k draft tokens per round. `Err(reason)`: target-only, and why.
    pub speculation: Result<usize, String>,
    /// Who drafts while `speculation` is `Ok`.
    pub drafter: Drafter,
    /// Per draft server (same order as the config): usable with k, or why not.
    pub drafters: Vec<Result<usize, String>>,
    /// How the target verifies the drafts.
    pub verification: Verification,
    /// The most tokens a round drafts on that path (configured, or the path's default, within the
    /// target's limits: [`super::draft_length`]), or why the target cannot verify drafts.
    pub draft_length: Result<usize, String>,
    /// The target's one-pass verifications carry each token's text (`return_pieces`), so a round
    /// never asks for token details (see [`super::pieces`]).
    pub returns_pieces: bool,
    /// Native pairing only: whether the target honours a per-request `speculative.n_max`
    /// (measured: with 0 it drafted nothing), or why the proxy cannot steer it.
    pub native_steering: Option<Result<(), String>>,
    /// The target's chat template thinks aloud (see [`crate::backend::ServerFacts`]): how its
    /// chat endpoint splits an answer into `reasoning_content` and `content`, or why the engine
    /// cannot reproduce it (its chats then go to it). `None`: the template does not think.
    pub chat_reasoning: Option<Result<Arc<ReasoningSyntax>, String>>,
    /// The target's own temperature for requests that set none (see
    /// [`crate::backend::ServerFacts`]).
    pub default_temperature: Option<f32>,
    pub(super) probed_at: Instant,
}

/// How the target verifies a draft, as probed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "path", rename_all = "snake_case")]
pub enum Verification {
    /// Context tail and draft in ONE sequence, the target's own sampler accepting: one decode of
    /// about k + 1 tokens per round (the bundled llama.cpp patch, `draft_tokens`).
    OnePass,
    /// One prompt per draft position in one request (k + 1 slots, `(k+1)(a+1) + k(k+1)/2`
    /// tokens a round; vLLM: one sequence through `prompt_logprobs`), and why not one-pass.
    MultiPrompt { why: String },
}

impl PairingInfo {
    /// The draft servers usable now, minus those that already failed during this request.
    pub(super) fn usable_drafters(&self, failed: &[usize]) -> Vec<usize> {
        self.drafters
            .iter()
            .enumerate()
            .filter(|(i, d)| d.is_ok() && !failed.contains(i))
            .map(|(i, _)| i)
            .collect()
    }
}

impl Pairing {
    /// Whether the target answers and has its model loaded now (one `GET /health`, within
    /// `within`); else why not, in words that name the cause and the fix.
    pub async fn check_target(&self, within: std::time::Duration) -> Result<(), String> {
        let url = &self.config.target_url;
        match tokio::time::timeout(within, self.target.health()).await {
            Err(_) => Err(format!(
                "the target at {url} did not answer /health within {} s: is it overloaded, or is the address wrong?",
                within.as_secs()
            )),
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(format!(
                "the target at {url} is not ready (it answers 503 while it loads its model); wait for it"
            )),
            Ok(Err(e)) => Err(describe_unreachable(url, &e)),
        }
    }

    /// How the target verifies drafts, as last probed (`None`: not probed yet), for the stats.
    pub fn verification_view(&self) -> Option<Verification> {
        let info = self.probed.try_lock().ok().and_then(|g| g.clone())?;
        Some(info.verification.clone())
    }

    /// Native pairing: "steered", or why the target cannot be (`None`: no native pairing, or not
    /// probed yet), for the stats.
    pub fn native_steering_view(&self) -> Option<String> {
        let info = self.probed.try_lock().ok().and_then(|g| g.clone())?;
        info.native_steering.as_ref().map(|s| match s {
            Ok(()) => "steered".to_string(),
            Err(reason) => reason.clone(),
        })
    }

    /// The pairing's facts, probing the servers when they are unknown or a failure made them stale.
    ///
    /// One probe at a time, bounded by the target's timeout; callers that waited for a probe
    /// that failed get its error at once (a target that accepts and never answers costs every
    /// waiting request one timeout together, not one each in series). A caller that arrives after
    /// a failure probes afresh, so a server that came back is noticed at once.
    pub async fn info(&self) -> Result<Arc<PairingInfo>, BackendError> {
        let asked = Instant::now();
        let mut guard = self.probed.lock().await;
        if let Some(info) = guard.as_ref() {
            // Re-probe while speculation is off for want of a drafter (target-only, or
            // native-only when the pairing has that path too), or while one drafter is down for
            // a reason that passes (not another vocabulary, which stays so).
            let transient = |d: &Result<usize, String>| {
                d.as_ref()
                    .err()
                    .is_some_and(|r| r.starts_with("draft unavailable") || r.starts_with("failed:"))
            };
            let without_draft = info.speculation.is_err()
                || (info.drafter == Drafter::Native && self.native_alternative.is_some());
            let draft_may_be_back = ((without_draft && !self.drafts.is_empty())
                || info.drafters.iter().any(transient))
                && info.probed_at.elapsed() > DRAFT_RETRY_AFTER;
            if !draft_may_be_back && info.probed_at.elapsed() < REPROBE_AFTER {
                return Ok(info.clone());
            }
        }
        let recent_failure = self
            .probe_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|(at, _)| *at >= asked);
        if let Some((_, e)) = recent_failure {
            return Err(BackendError::Shared(e));
        }
        let probed = match tokio::time::timeout(self.config.target_timeout, self.probe()).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout {
                server: "target",
                path: "its facts (probe)".into(),
                seconds: self.config.target_timeout.as_secs(),
            }),
        };
        let info = {
            let mut failure = self
                .probe_failure
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match probed {
                Ok(info) => {
                    *failure = None;
                    Arc::new(info)
                }
                Err(e) => {
                    let e = Arc::new(e);
                    *failure = Some((Instant::now(), e.clone()));
                    return Err(BackendError::Shared(e));
                }
            }
        };
        if let (Verification::OnePass, Drafter::Server | Drafter::PromptLookup, Ok(k)) =
            (&info.verification, info.drafter, &info.speculation)
        {
            let target = (info.target_model.clone(), info.target_build.clone());
            let warmed_for = || {
                self.verification_warmed_for
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            if warmed_for().as_ref() != Some(&target) {
                let warming = warm_verification(&self.target, *k, &self.config.name);
                match tokio::time::timeout(self.config.target_timeout, warming).await {
                    Ok(true) => *warmed_for() = Some(target),
                    Ok(false) => {}
                    Err(_) => {
                        warn!(pairing = %self.config.name, "warming the target's verification timed out; the first rounds may be slow")
                    }
                }
            }
        }
        match &info.speculation {
            Ok(k) => {
                info!(pairing = %self.config.name, k, target = %info.target_model, build = %info.target_build, "speculation on");
                self.metrics.set_speculation(true, None);
            }
            Err(reason) => {
                warn!(pairing = %self.config.name, %reason, "speculation off: serving target-only");
                self.metrics.set_speculation(false, Some(reason.clone()));
            }
        }
        self.set_controller_caps(&info);
        *guard = Some(info.clone());
        Ok(info)
    }

    /// Mark draft server `slot` as failed until the retry interval has passed; speculation stays
    /// on while another draft server is usable.
    pub(super) async fn draft_failed(&self, slot: Option<usize>, reason: String) {
        self.metrics.draft_failures.inc();
        if let Some(d) = slot.and_then(|i| self.drafts.get(i)) {
            d.metrics.failures.inc();
        }
        let mut guard = self.probed.lock().await;
        let mut still_on = false;
        if let Some(old) = guard.as_ref() {
            let mut drafters = old.drafters.clone();
            match slot.and_then(|i| drafters.get_mut(i)) {
                Some(d) => *d = Err(format!("failed: {reason}")),
                None => drafters.iter_mut().for_each(|d| *d = Err(reason.clone())),
            }
            let usable = drafters.iter().find_map(|d| d.as_ref().ok().copied());
            still_on = usable.is_some();
            let info = PairingInfo {
                target_model: old.target_model.clone(),
                target_build: old.target_build.clone(),
                n_ctx: old.n_ctx,
                end_of_generation: old.end_of_generation.clone(),
                // No drafter left: with native pairing as well, the target's own speculation
                // carries on alone.
                speculation: match usable {
                    Some(k) => Ok(k),
                    None if self.config.native => {
                        Ok(draft_length::native(self.config.draft_tokens))
                    }
                    None => Err(reason.clone()),
                },
                drafter: if usable.is_none() && self.config.native {
                    Drafter::Native
                } else {
                    old.drafter
                },
                drafters,
                verification: old.verification.clone(),
                draft_length: old.draft_length.clone(),
                returns_pieces: old.returns_pieces,
                native_steering: old.native_steering.clone(),
                chat_reasoning: old.chat_reasoning.clone(),
                default_temperature: old.default_temperature,
                probed_at: Instant::now(),
            };
            *guard = Some(Arc::new(info));
        }
        if !still_on {
            self.metrics.set_speculation(false, Some(reason));
        }
    }

    pub(super) async fn probe(&self) -> Result<PairingInfo, BackendError> {
        let facts = self.target.facts().await?;
        let end_of_generation = facts.end_of_generation.clone();
        let lookup_configured = self.config.draft_url.as_deref() == Some(PROMPT_LOOKUP);
        let (verification, length) = self.verification(&facts);
        let native_steering = match (self.config.native, self.target.as_llamacpp()) {
            (true, Some(target)) => Some(native_steering(target).await),
            _ => None,
        };
        if let Some(Err(reason)) = &native_steering {
            warn!(pairing = %self.config.name, %reason, "native pairing cannot be steered: the target speculates on every request");
        }
        let chat_reasoning = match (facts.chat_reasoning, self.target.as_llamacpp()) {
            (false, _) => None,
            (true, Some(target)) => Some(reasoning::probe(target).await.map(Arc::new)),
            (true, None) => Some(Err("only llama-server's split is reproduced".to_string())),
        };
        match &chat_reasoning {
            Some(Ok(syntax)) => {
                info!(pairing = %self.config.name, ?syntax, "the chat template thinks aloud; the engine splits its answers as the target does")
            }
            Some(Err(reason)) => {
                warn!(pairing = %self.config.name, %reason, "the chat template thinks aloud; its chats go to the target")
            }
            None => {}
        }
        let mut drafters = Vec::with_capacity(self.drafts.len());
        for d in &self.drafts {
            let checked = self.check_draft(&d.server, &length, facts.n_vocab).await;
            if let Err(reason) = &checked {
                warn!(pairing = %self.config.name, drafter = %d.url, %reason, "drafter not usable");
            }
            drafters.push(checked);
        }
        // The first usable drafter's k (all share the target's slots), else the first reason.
        let servers_checked = drafters
            .iter()
            .find(|d| d.is_ok())
            .or(drafters.first())
            .cloned();
        let (speculation, drafter) = match servers_checked {
            None if self.config.native => (
                Ok(draft_length::native(self.config.draft_tokens)),
                Drafter::Native,
            ),
            None if lookup_configured => (length.clone(), Drafter::PromptLookup),
            None => (
                Err("no draft server configured".to_string()),
                Drafter::Server,
            ),
            Some(checked) => match checked {
                Err(reason)
                    if self.config.prompt_lookup_fallback
                        && reason.starts_with("draft unavailable") =>
                {
                    warn!(pairing = %self.config.name, %reason, "drafting from the context (prompt lookup) until the draft server is back");
                    (length.clone(), Drafter::PromptLookup)
                }
                Err(reason) if self.config.native => {
                    warn!(pairing = %self.config.name, %reason, "only the native path until the draft server is back");
                    (
                        Ok(draft_length::native(self.config.draft_tokens)),
                        Drafter::Native,
                    )
                }
                other => (other, Drafter::Server),
            },
        };
        // Proxy rounds decide where the answer ends, so they need the target's end tokens; a
        // vLLM target tells them only with its tokenizer-info endpoint. Streams end by themselves.
        let speculation = match speculation {
            Ok(_) if !facts.eos_known && drafter != Drafter::Native => Err(format!(
                "the {} target does not say which token ends an answer: start vLLM with --enable-tokenizer-info-endpoint",
                self.target.kind().as_str()
            )),
            other => other,
        };
        Ok(PairingInfo {
            target_model: facts.model,
            target_build: facts.build,
            n_ctx: facts.n_ctx,
            end_of_generation,
            speculation,
            drafter,
            drafters,
            verification,
            draft_length: length,
            returns_pieces: facts.returns_pieces,
            native_steering,
            chat_reasoning,
            default_temperature: facts.default_temperature,
            probed_at: Instant::now(),
        })
    }

    /// How the target will verify drafts, and the draft length that allows (or why none).
    fn verification(&self, facts: &ServerFacts) -> (Verification, Result<usize, String>) {
        let configured = self.config.draft_tokens;
        let name = &self.config.name;
        let multi = |why: String| {
            let wanted = draft_length::wanted(configured, false);
            let length = slots_for_verification(facts.verify_slots, wanted, name);
            (Verification::MultiPrompt { why }, length)
        };
        match (self.config.verify, facts.one_pass_max) {
            (VerifyMode::MultiPrompt, _) => multi("`verify = \"multi-prompt\"` in the config".into()),
            (_, Some(0)) => multi("the target takes client drafts of 0 tokens: start it with --spec-draft-n-max K".into()),
            (_, Some(max)) => {
                let (length, cut) = draft_length::one_pass(configured, max);
                if cut {
                    let wanted = draft_length::wanted(configured, true);
                    warn!(pairing = %name, "the target verifies client drafts of up to {max} tokens: draft length capped at {max} (start it with --spec-draft-n-max {wanted} for k = {wanted})");
                }
                (Verification::OnePass, Ok(length))
            }
            (VerifyMode::OnePass, None) => (
                Verification::MultiPrompt { why: "the target takes no client drafts".into() },
                Err(format!(
                    "`verify = \"one-pass\"`, but the {} target at {} takes no client drafts: run a llama-server with Tightwad's bundled patch (`tightwad build`, or scripts/setup)",
                    self.target.kind().as_str(),
                    self.config.target_url
                )),
            ),
            (VerifyMode::Auto, None) => multi(match self.target.kind() {
                BackendKind::Vllm => "vLLM verifies through prompt_logprobs (greedy) or one prompt per position (sampled)".into(),
                BackendKind::Llamacpp => "the target is a stock llama-server (no client drafts): `tightwad build` applies the bundled patch that verifies a draft in one pass".into(),
            }),
        }
    }

    /// Can this draft speak for this target? Same vocabulary, same tokenization, enough slots.
    pub(super) async fn check_draft(
        &self,
        draft: &Backend,
        length: &Result<usize, String>,
        target_vocab: Option<u64>,
    ) -> Result<usize, String> {
        let draft_model = draft
            .facts()
            .await
            .map_err(|e| format!("draft unavailable: {e}"))?;
        if let (Some(t), Some(d)) = (target_vocab, draft_model.n_vocab) {
            if t != d {
                return Err(format!(
                    "draft vocabulary has {d} tokens, the target's {t}: they cannot share token ids"
                ));
            }
        }
        compare_tokenizers(&self.target, draft).await?;
        length.clone()
    }
}

/// Run one one-pass verification of each draft length 1..=`k_max` on the target, once per target
/// (its model and build: a re-probe of the same target does not repeat it), before the first round;
/// `true` when every length ran.
///
/// Why: a GPU back end runs the first batch of each new size slowly (kernels loaded and tuned on
/// first use): on the H100 benchmark the first verification of each draft length cost 9–18 ms
/// against 6–8 later, so the controller measured a loss on its first request (222 against 306
/// tok/s) and switched speculation off for its back-off. Warmed here, the first request is
/// measured at the speed the target keeps. Best effort: a failure is logged and the real rounds
/// report their own.
async fn warm_verification(target: &Backend, k_max: usize, pairing: &str) -> bool {
    let started = Instant::now();
    // A short prompt: the warm-up is about the draft lengths, and on a CPU target (where it buys
    // nothing) every prompt token is paid once more on the first request.
    let prompt = match target.tokenize("Hello", true).await {
        Ok(tokens) if !tokens.is_empty() => tokens,
        Ok(_) => return false,
        Err(e) => {
            warn!(pairing, error = %e, "cannot warm the target's verification");
            return false;
        }
    };
    let sampling = crate::backend::Sampling::greedy();
    let mut ms_by_k = Vec::with_capacity(k_max);
    for k in 1..=k_max {
        let draft: Vec<TokenId> = prompt.iter().copied().cycle().take(k).collect();
        let one = Instant::now();
        if let Err(e) = target.verify_one_pass(&prompt, &draft, &sampling, 0).await {
            warn!(pairing, k, error = %e, "cannot warm the target's verification");
            return false;
        }
        ms_by_k.push(format!("{:.1}", one.elapsed().as_secs_f64() * 1e3));
    }
    info!(pairing, k_max, ms = started.elapsed().as_secs_f64() * 1e3, ms_by_k = %ms_by_k.join(" "), "target's one-pass verification warmed for every draft length");
    true
}

/// Whether a natively paired llama-server honours a per-request `speculative.n_max`: a short
/// greedy request with 0 must draft nothing (stock llama.cpp parses the field and ignores it).
async fn native_steering(target: &crate::backend::llamacpp::LlamaServer) -> Result<(), String> {
    let prompt = target
        .tokenize(TOKENIZER_PROBES[0], true)
        .await
        .map_err(|e| format!("cannot check native steering: {e}"))?;
    match target.drafted_with_n_max(&prompt, 4, 0).await {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "the target drafted {n} tokens with speculative.n_max 0: this llama-server ignores per-request steering (run `tightwad build` for Tightwad's bundled patch)"
        )),
        Err(e) => Err(format!("cannot check native steering: {e}")),
    }
}

/// Whether `draft` tokenizes every [`TOKENIZER_PROBES`] string exactly as `target` does; the
/// reason why not otherwise. The engine's probe and `tightwad doctor` both ask this.
pub async fn compare_tokenizers(target: &Backend, draft: &Backend) -> Result<(), String> {
    for probe in TOKENIZER_PROBES {
        let t = target
            .tokenize(probe, true)
            .await
            .map_err(|e| format!("target tokenizer probe failed: {e}"))?;
        let d = draft
            .tokenize(probe, true)
            .await
            .map_err(|e| format!("draft tokenizer probe failed: {e}"))?;
        if t != d {
            return Err(format!(
                "draft and target tokenize {probe:?} differently ({} vs {} tokens): different vocabularies",
                d.len(),
                t.len()
            ));
        }
    }
    Ok(())
}

/// The draft length the target's slots allow (k draft tokens need k + 1 slots), or why none.
pub(super) fn slots_for_verification(
    target_slots: u32,
    wanted: usize,
    pairing: &str,
) -> Result<usize, String> {
    let slots = target_slots as usize;
    if slots < 2 {
        return Err(format!(
            "the target has {slots} slot; verifying {wanted} draft tokens in one pass needs {} (start it with -np {})",
            wanted + 1,
            wanted + 1
        ));
    }
    if slots < wanted + 1 {
        warn!(
            pairing,
            "the target has {slots} slots: draft length capped at {} (start it with -np {} for k = {wanted})",
            slots - 1,
            wanted + 1
        );
    }
    Ok(wanted.min(slots - 1).max(1))
}

/// A target that cannot be reached, as a person needs to hear it: the cause (connection refused,
/// no such host, timeout) at the URL, and what to do.
pub fn describe_unreachable(url: &str, e: &BackendError) -> String {
    let mut chain = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        chain.push_str(&err.to_string().to_ascii_lowercase());
        chain.push(' ');
        source = err.source();
    }
    let cause = if chain.contains("connection refused") {
        "connection refused"
    } else if chain.contains("dns error") || chain.contains("failed to lookup") {
        "the host name does not resolve"
    } else if chain.contains("timed out") || chain.contains("within") {
        "no answer in time"
    } else {
        return format!("the target at {url} does not answer: {e}. Check that llama-server runs there and that `target` (or --target) names it.");
    };
    format!(
        "{cause} at {url}: start llama-server there (`tightwad up`, or llama-server --host 0.0.0.0 --port PORT -m MODEL), or point `target` in the config (--target) at a running one"
    )
}
