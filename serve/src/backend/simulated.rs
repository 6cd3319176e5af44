//! A SIMULATION of an inference server, in memory, for the engine's unit tests: the round loop is
//! checked in milliseconds against a deterministic "model" instead of only end to end against
//! real llama-servers (the integration suite still does that). Never used outside tests.
//!
//! The simulated model is a function from context to next token (greedy; the simulation has no
//! sampler). Each token's text is one lowercase letter, so stop strings can span tokens and round
//! boundaries. A draft is the same kind of server with another function (one that disagrees with
//! the target where a test wants it to), and any server can be told to fail from its n-th call on.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::server::{EventStream, ServerFacts};
use super::types::{Candidate, Completion, Piece, SampledToken, StreamEvent, Timings, TokenId};
use super::BackendError;

/// The simulated model: the next token after a context.
pub type NextToken = Arc<dyn Fn(&[TokenId]) -> TokenId + Send + Sync>;

/// One simulated server (target or draft).
pub struct SimulatedServer {
    next: NextToken,
    eos: TokenId,
    n_ctx: usize,
    slots: u32,
    /// Verifies client drafts in one sequence, up to this many tokens (a patched llama-server).
    one_pass_max: Option<usize>,
    /// One-pass verifications return each token's text (`return_pieces`, the patched server).
    returns_pieces: bool,
    /// Calls of `complete`/`verify`/`stream` so far.
    calls: AtomicUsize,
    /// From this call on (counted from 1), those calls fail as an unreachable server would.
    fail_from_call: Option<usize>,
    /// Decodes the server has run: one per `verify` (one pass) and per streamed token.
    decodes: AtomicUsize,
    /// One-pass verifications that asked for token details (`n_probs` above 0).
    details_asked: AtomicUsize,
    /// Calls of `detokenize`.
    detokenized: AtomicUsize,
    /// SIMULATED verification time per draft token verified (none: verifying is instant).
    verify_time_per_token: Option<std::time::Duration>,
    /// SIMULATED draft confidence: the model is unsure of tokens whose id is a multiple of this,
    /// so a draft with a confidence floor (`draft_p_min` > 0) ends after the first of them.
    unsure_every: Option<TokenId>,
}

impl std::fmt::Debug for SimulatedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedServer")
            .field("eos", &self.eos)
            .field("calls", &self.calls)
            .finish()
    }
}

/// Token `t`'s text: one letter (`a` + t mod 26); the end-of-generation token has none.
pub fn text_of(t: TokenId) -> String {
    char::from(b'a' + (t % 26) as u8).to_string()
}

impl SimulatedServer {
    pub fn new(next: NextToken, eos: TokenId) -> Self {
        SimulatedServer {
            next,
            eos,
            n_ctx: 4096,
            slots: 9,
            one_pass_max: None,
            returns_pieces: false,
            calls: AtomicUsize::new(0),
            fail_from_call: None,
            details_asked: AtomicUsize::new(0),
            detokenized: AtomicUsize::new(0),
            decodes: AtomicUsize::new(0),
            verify_time_per_token: None,
            unsure_every: None,
        }
    }

    /// A SIMULATED draft confidence: the model is unsure of every token whose id is a multiple
    /// of `every` (see [`SimulatedServer::draft`]).
    pub fn with_unsure_tokens(mut self, every: TokenId) -> Self {
        self.unsure_every = Some(every.max(1));
        self
    }

    /// A SIMULATED verification cost: each draft token verified takes `per_token` (slept), so
    /// the controller's cost fit sees a verification that grows with k. Without it the fit sees
    /// microseconds of noise, and may read verification as flat.
    pub fn with_verify_time(mut self, per_token: std::time::Duration) -> Self {
        self.verify_time_per_token = Some(per_token);
        self
    }

    /// Sleep the simulated verification time of `drafted` tokens (see `with_verify_time`).
    pub async fn spend_verify_time(&self, drafted: usize) {
        if let Some(per_token) = self.verify_time_per_token {
            tokio::time::sleep(per_token * drafted as u32).await;
        }
    }

    /// Fail every `complete`/`verify`/`stream` call from the `n`-th on.
    pub fn failing_from_call(mut self, n: usize) -> Self {
        self.fail_from_call = Some(n);
        self
    }

    /// Take client drafts of up to `max` tokens and verify them in one sequence.
    pub fn with_one_pass(mut self, max: usize) -> Self {
        self.one_pass_max = Some(max);
        self
    }

    /// One-pass verifications also return each token's text, as the bundled patch's
    /// `return_pieces` does.
    pub fn with_pieces(mut self) -> Self {
        self.returns_pieces = true;
        self
    }

    pub fn decodes(&self) -> usize {
        self.decodes.load(Ordering::Relaxed)
    }

    /// One-pass verifications so far that asked for token details.
    pub fn details_asked(&self) -> usize {
        self.details_asked.load(Ordering::Relaxed)
    }

    /// `detokenize` calls so far.
    pub fn detokenized(&self) -> usize {
        self.detokenized.load(Ordering::Relaxed)
    }

    /// The simulated model's own greedy continuation of `ctx`: `n` tokens, or fewer if it ends.
    pub fn greedy(&self, ctx: &[TokenId], n: usize) -> Vec<TokenId> {
        let mut ctx = ctx.to_vec();
        let mut out = Vec::new();
        while out.len() < n {
            let t = (self.next)(&ctx);
            out.push(t);
            ctx.push(t);
            if t == self.eos {
                break;
            }
        }
        out
    }

    fn call(&self, path: &str) -> Result<(), BackendError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        match self.fail_from_call {
            Some(from) if n >= from => Err(BackendError::Timeout {
                server: "simulated",
                path: path.to_string(),
                seconds: 0,
            }),
            _ => Ok(()),
        }
    }

    fn bytes(&self, t: TokenId) -> Vec<u8> {
        if t == self.eos {
            Vec::new()
        } else {
            text_of(t).into_bytes()
        }
    }

    fn sampled(&self, t: TokenId) -> SampledToken {
        SampledToken {
            id: t,
            bytes: self.bytes(t),
            top_probs: vec![Candidate {
                id: t,
                bytes: self.bytes(t),
                prob: Some(1.0),
                logprob: Some(0.0),
            }],
            top_logprobs: Vec::new(),
        }
    }

    fn completion(&self, tokens: Vec<TokenId>) -> Completion {
        let stop_type = if tokens.last() == Some(&self.eos) {
            "eos"
        } else {
            "limit"
        };
        Completion {
            completion_probabilities: tokens.iter().map(|t| self.sampled(*t)).collect(),
            content: tokens
                .iter()
                .map(|t| String::from_utf8_lossy(&self.bytes(*t)).into_owned())
                .collect(),
            tokens,
            stop_type: stop_type.into(),
            pieces: Vec::new(),
            timings: Some(Timings::default()),
            ..Completion::default()
        }
    }

    pub fn facts(&self) -> ServerFacts {
        ServerFacts {
            model: "simulated".into(),
            build: "simulation".into(),
            n_ctx: self.n_ctx,
            n_vocab: Some(26),
            end_of_generation: HashSet::from([self.eos]),
            eos_known: true,
            verify_slots: self.slots,
            one_pass_max: self.one_pass_max,
            returns_pieces: self.returns_pieces,
            steers_native: false,
            chat_reasoning: false,
            default_temperature: None,
        }
    }

    /// One letter per token (the reverse of [`text_of`]).
    pub fn tokenize(&self, text: &str) -> Vec<TokenId> {
        text.bytes()
            .filter(u8::is_ascii_lowercase)
            .map(|b| TokenId::from(b - b'a'))
            .collect()
    }

    pub fn detokenize(&self, tokens: &[TokenId]) -> String {
        self.detokenized.fetch_add(1, Ordering::Relaxed);
        tokens
            .iter()
            .map(|t| String::from_utf8_lossy(&self.bytes(*t)).into_owned())
            .collect()
    }

    pub fn complete(&self, prompt: &[TokenId], n: usize) -> Result<Completion, BackendError> {
        self.call("/completion")?;
        Ok(self.completion(self.greedy(prompt, n)))
    }

    /// A draft of up to `n` greedy tokens that, with a confidence floor (`p_min` > 0) and
    /// simulated unsure tokens, ends after the first token the model is unsure of (as the
    /// patched llama-server's `stop_p_min` does).
    pub fn draft(
        &self,
        prompt: &[TokenId],
        n: usize,
        p_min: f64,
    ) -> Result<Completion, BackendError> {
        self.call("/completion")?;
        let mut tokens = self.greedy(prompt, n);
        if let (Some(every), true) = (self.unsure_every, p_min > 0.0) {
            if let Some(i) = tokens.iter().position(|t| t % every == 0) {
                tokens.truncate(i + 1);
            }
        }
        Ok(self.completion(tokens))
    }

    /// The several-prompts verification: the next token after `ctx`, `ctx+d1`, …, in one pass.
    pub fn verify(
        &self,
        ctx: &[TokenId],
        proposal: &[TokenId],
    ) -> Result<Vec<Completion>, BackendError> {
        self.call("/completion")?;
        self.decodes.fetch_add(1, Ordering::Relaxed);
        Ok((0..=proposal.len())
            .map(|i| {
                let prefix = [ctx, &proposal[..i]].concat();
                self.completion(vec![(self.next)(&prefix)])
            })
            .collect())
    }

    /// One-pass verification as the patched llama-server does it: the accepted prefix of the
    /// draft and the model's next token after it, in one decode; token details only when
    /// `n_probs` asks for them (the text is always in `content`).
    pub fn verify_one_pass(
        &self,
        ctx: &[TokenId],
        proposal: &[TokenId],
        n_probs: usize,
    ) -> Result<Completion, BackendError> {
        self.call("/completion")?;
        self.decodes.fetch_add(1, Ordering::Relaxed);
        let mut ctx = ctx.to_vec();
        let mut out = Vec::new();
        for d in proposal
            .iter()
            .copied()
            .map(Some)
            .chain(std::iter::once(None))
        {
            let t = (self.next)(&ctx);
            out.push(t);
            ctx.push(t);
            if Some(t) != d || t == self.eos {
                break;
            }
        }
        let mut completion = self.completion(out);
        if self.returns_pieces {
            completion.pieces = (completion.tokens.iter())
                .map(|t| match String::from_utf8(self.bytes(*t)) {
                    Ok(text) => Piece::Text(text),
                    Err(e) => Piece::Bytes(e.into_bytes()),
                })
                .collect();
        }
        if n_probs == 0 {
            completion.completion_probabilities.clear();
        } else {
            self.details_asked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(completion)
    }

    pub fn stream(&self, prompt: &[TokenId], n: usize) -> Result<EventStream, BackendError> {
        self.call("/completion (stream)")?;
        let tokens = self.greedy(prompt, n);
        self.decodes.fetch_add(tokens.len(), Ordering::Relaxed);
        let ended = tokens.last() == Some(&self.eos);
        let mut events: Vec<Result<StreamEvent, BackendError>> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Ok(StreamEvent {
                    content: String::from_utf8_lossy(&self.bytes(*t)).into_owned(),
                    tokens: vec![*t],
                    tokens_predicted: i + 1,
                    completion_probabilities: vec![self.sampled(*t)],
                    stop: false,
                    stop_type: String::new(),
                    timings: None,
                })
            })
            .collect();
        events.push(Ok(StreamEvent {
            content: String::new(),
            tokens: Vec::new(),
            tokens_predicted: tokens.len(),
            completion_probabilities: Vec::new(),
            stop: true,
            stop_type: if ended { "eos".into() } else { "limit".into() },
            timings: Some(Timings::default()),
        }));
        Ok(Box::pin(futures::stream::iter(events)))
    }
}
