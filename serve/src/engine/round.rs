//! One speculation round after another: the draft proposes k tokens, the target verifies them,
//! the accepted prefix and the target's own next token go to the output. Pipelining drafts the
//! next block while the target verifies this one. Every emitted token is the target's choice.

use std::time::Instant;

use rand::SeedableRng;
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};

use super::lookup;
use super::pairing::{Drafter, Pairing};
use super::pieces::TokenPieces;
use super::pipelining::Pipelining;
use super::probe::{PairingInfo, Verification};
use super::request::{EngineError, Event, Run};
use super::target_only::send_text;
use super::verify::{self, Choice};
use crate::backend::{BackendError, Completion, Piece, Sampling, TokenId};

impl Pairing {
    /// Draft→verify rounds until the output is finished or the draft fails.
    pub(super) async fn speculate(
        &self,
        info: &PairingInfo,
        (drafter, slot): (Drafter, Option<usize>),
        k_max: usize,
        sampling: &Sampling,
        run: &mut Run,
        tx: &mpsc::Sender<Event>,
    ) -> Result<(), SpeculationStop> {
        let draft_slot = slot.and_then(|i| self.drafts.get(i));
        let draft_server = draft_slot.map(|d| &d.server);
        let mut rng = match sampling.seed {
            Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        // The target samples by itself where the proxy cannot (see `choose`); it must never get
        // one fixed seed for all positions of a round, so the seed is not forwarded here.
        let verify_sampling = Sampling {
            seed: None,
            ..*sampling
        };
        let n_probs = if sampling.is_greedy() {
            1
        } else {
            match sampling.top_k {
                Some(k) if (1..=100).contains(&k) => k as usize,
                _ => 100,
            }
        };
        // Pipelining: while the target verifies a block, the draft already drafts the next one,
        // betting that the whole block is accepted. `prefetch` holds that bet: the context it was
        // drafted for and the task drafting it (aborted when the bet is lost). Whether this
        // request bets at all is the setting's, or the drafter's measurements' (`pipelining`).
        // A trial of the way `auto` does not prefer measures that way; the controller then leaves
        // this request's throughput out of its verdict on speculation (on a shared GPU, pipelined
        // trials ran at 0.7x the sequential rounds, and counted as speculation's they switched
        // off a pairing whose sequential rounds paid 1.15x).
        let (pipelined, trial) = match (self.config.pipeline, draft_slot, drafter) {
            (_, None, _) | (_, _, Drafter::PromptLookup | Drafter::Native) => (false, false),
            (Pipelining::On, Some(_), _) => (true, false),
            (Pipelining::Off, Some(_), _) => (false, false),
            // A probe measures speculation the way requests take it: a trial of the other way
            // (at 0.7x on a shared card) would make its verdict on the wrong rounds.
            (Pipelining::Auto, Some(d), _) if self.with_ctl(slot, |c| c.probing()) => {
                (d.with_pipelining(|p| p.settled()), false)
            }
            (Pipelining::Auto, Some(d), _) => d.with_pipelining(|p| p.choose()),
        };
        let mut prefetch: Option<Prefetch> = None;
        // This drafter's first round here reads the whole context (see `record_untimed_round`).
        let opening_round = run.rounds;
        while run.out.finish.is_none() {
            let wanted = self.with_ctl(slot, |c| c.choose_k());
            if wanted == 0 {
                // The controller switched speculation off: the rest is the target's alone.
                return Ok(());
            }
            let k = wanted.min(k_max).min(run.out.remaining().saturating_sub(1));
            let span = info_span!("round", n = run.rounds + 1, k);
            let round = async {
                let draft_started = Instant::now();
                let proposal = match (k, drafter, draft_server) {
                    (0, _, _) => Vec::new(),
                    (_, Drafter::PromptLookup, _) => lookup::propose(&run.ctx, k),
                    (_, Drafter::Native, _) => {
                        return Err(SpeculationStop::Draft(
                            "native pairing drafts inside the target, not in proxy rounds".into(),
                        ))
                    }
                    (_, Drafter::Server, None) => {
                        return Err(SpeculationStop::Draft("no draft server".into()))
                    }
                    (_, Drafter::Server, Some(draft)) => {
                        // A prefetch that failed (a stalled draft times out while the target
                        // verifies) ends the rounds: asking the draft again would cost the
                        // request a second `draft_timeout_s`.
                        let ready = match prefetch.take() {
                            Some(p) if p.base == run.ctx => {
                                let asked = p.asked;
                                p.collect()
                                    .await
                                    .map_err(|e| SpeculationStop::Draft(e.to_string()))?
                                    .filter(|tokens| prefetch_serves(tokens.len(), asked, k))
                            }
                            _ => None,
                        };
                        let mut d = match ready {
                            Some(tokens) => {
                                run.prefetched += 1;
                                self.metrics.prefetched.inc();
                                tokens
                            }
                            _ => {
                                draft
                                    .draft(&run.ctx, k, self.config.draft_options())
                                    .await
                                    .map_err(|e| SpeculationStop::Draft(e.to_string()))?
                                    .tokens
                            }
                        };
                        d.truncate(k);
                        d
                    }
                };
                let draft_secs = draft_started.elapsed().as_secs_f64();
                // Bet on full acceptance: draft k + 1 more tokens after this block (the first is
                // the draft's guess for the target's bonus token) while the target verifies.
                let bet = match (draft_server, drafter) {
                    (Some(draft), Drafter::Server) if pipelined && k > 0 && proposal.len() == k => {
                        let base: Vec<TokenId> = [run.ctx.as_slice(), &proposal].concat();
                        let draft = draft.clone();
                        let ahead = base.clone();
                        let opts = self.config.draft_options();
                        let task = tokio::spawn(async move {
                            draft
                                .draft(&ahead, k + 1, opts)
                                .await
                                .map(|c| Some(c.tokens))
                        });
                        Some(Prefetch::new(base, k + 1, task))
                    }
                    _ => None,
                };
                let verify_started = Instant::now();
                let (choices, n_accepted) = match info.verification {
                    Verification::OnePass => {
                        // The target samples every position itself; a request seed becomes one
                        // seed per round (never the same draws at every round's start).
                        let seeded = Sampling {
                            seed: sampling.seed.map(|s| round_seed(s, run.ctx.len())),
                            ..*sampling
                        };
                        // Token details (`n_probs`) cost the server a softmax over the whole
                        // vocabulary per token; they are asked for only where the target does
                        // not return each token's text (`return_pieces`) and the draft holds a
                        // token whose text is not known yet (see `pieces`).
                        let n_probs =
                            usize::from(!info.returns_pieces && !self.pieces.knows_all(&proposal));
                        if n_probs > 0 {
                            self.metrics.detail_rounds.inc();
                        }
                        let result = self
                            .target
                            .verify_one_pass(&run.ctx, &proposal, &seeded, n_probs)
                            .await
                            .map_err(|e| capacity_or_fatal(e, proposal.len(), run.ctx.len()))?;
                        let choices = one_pass_choices(&result, info, &self.pieces)
                            .map_err(|e| SpeculationStop::Fatal(e.into()))?;
                        let n = choices
                            .iter()
                            .zip(&proposal)
                            .take_while(|(c, d)| c.id == **d)
                            .count();
                        (choices, n)
                    }
                    Verification::MultiPrompt { .. } => {
                        let results = self
                            .target
                            .verify(&run.ctx, &proposal, &verify_sampling, n_probs)
                            .await
                            .map_err(|e| capacity_or_fatal(e, proposal.len(), run.ctx.len()))?;
                        let choices = results
                            .iter()
                            .map(|r| choose(r, sampling, info, &mut rng))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|e| SpeculationStop::Fatal(e.into()))?;
                        let n = verify::accepted_prefix(&proposal, &choices);
                        (choices, n)
                    }
                };
                let verify_secs = verify_started.elapsed().as_secs_f64();
                debug!(
                    drafted = proposal.len(),
                    accepted = n_accepted,
                    draft_ms = draft_secs * 1e3,
                    verify_ms = verify_secs * 1e3,
                    "verified"
                );
                let opening = run.rounds == opening_round;
                let auto_pipelined = pipelined && self.config.pipeline == Pipelining::Auto;
                let round_secs = draft_started.elapsed().as_secs_f64();
                self.with_ctl(slot, |c| {
                    if opening {
                        c.record_untimed_round(Instant::now(), proposal.len(), n_accepted)
                    } else if auto_pipelined {
                        c.record_pipelined_round(
                            Instant::now(),
                            proposal.len(),
                            n_accepted,
                            round_secs,
                        )
                    } else {
                        c.record_round(
                            Instant::now(),
                            proposal.len(),
                            n_accepted,
                            draft_secs,
                            verify_secs,
                        )
                    }
                });
                self.metrics.round(proposal.len(), n_accepted);
                self.metrics.round_seconds.observe(round_secs);
                if let Some(d) = draft_slot {
                    d.metrics.round(proposal.len(), n_accepted);
                    // A request's opening round is the same work either way (the draft and the
                    // target read the whole prompt; nothing was drafted ahead): it would only
                    // add each prompt's length to the rate of the way that request took.
                    if self.config.pipeline == Pipelining::Auto && !opening {
                        d.with_pipelining(|p| p.record(pipelined, proposal.len(), round_secs));
                    }
                }
                run.rounds += 1;
                run.drafted += proposal.len();
                run.accepted += n_accepted;
                if let Some(bet) = bet {
                    if n_accepted == proposal.len() {
                        // Still winning if the draft's first extra token is the target's bonus.
                        if let Some(bonus) = choices.get(n_accepted) {
                            prefetch = Some(bet.after_bonus(bonus.id));
                        }
                    }
                    // Otherwise the bet is dropped here, which cancels it.
                }
                let mut text = String::new();
                // The accepted draft tokens and the target's own next one (none after an
                // end-of-generation token that a one-pass target accepted).
                for c in &choices[..(n_accepted + 1).min(choices.len())] {
                    text.push_str(&run.out.push(c.id, c.bytes.as_deref(), c.end_of_generation));
                    run.ctx.push(c.id);
                    if run.out.finish.is_some() {
                        break;
                    }
                }
                text.push_str(
                    &self
                        .resolve_text(&mut run.out, false)
                        .await
                        .map_err(|e| SpeculationStop::Fatal(e.into()))?,
                );
                send_text(tx, text).await.map_err(SpeculationStop::Fatal)?;
                if opening && !trial {
                    run.steady_from
                        .get_or_insert((Instant::now(), run.out.count()));
                }
                Ok(())
            };
            round.instrument(span).await?;
        }
        Ok(())
    }
}

/// Whether `got` tokens drafted ahead (of `asked`) serve a round that wants `k`: enough of them,
/// or fewer because the draft ended by itself (its confidence stop, an end of text) — a fresh
/// draft of the same context would end at the same place, so asking again only costs a request.
fn prefetch_serves(got: usize, asked: usize, k: usize) -> bool {
    got >= k || (got > 0 && got < asked)
}

/// Draft tokens being drafted ahead for the context `base` (pipelining). Dropping it drops the
/// draft request; llama-server notices a closed connection only when it polls (once a second),
/// so a lost bet still finishes its k + 1 tokens on the draft server — work that competes with
/// the target where both share a device, one reason pipelining loses there.
pub(super) struct Prefetch {
    base: Vec<TokenId>,
    /// How many tokens the draft was asked for: fewer came back only where it ended by itself.
    asked: usize,
    task: Option<PrefetchTask>,
}

/// The drafting ahead: its tokens, `None` where they turned out unusable (a lost bet).
type PrefetchTask = tokio::task::JoinHandle<Result<Option<Vec<TokenId>>, BackendError>>;

impl Prefetch {
    fn new(base: Vec<TokenId>, asked: usize, task: PrefetchTask) -> Self {
        Prefetch {
            base,
            asked,
            task: Some(task),
        }
    }

    /// The drafted tokens (`None`: nothing usable, the bet was lost), or the draft's error.
    async fn collect(mut self) -> Result<Option<Vec<TokenId>>, BackendError> {
        let Some(task) = self.task.take() else {
            return Ok(None);
        };
        match task.await {
            Ok(result) => result,
            // Cancelled: nothing drafted, and nothing says the draft failed.
            Err(_) => Ok(None),
        }
    }

    /// The whole block was accepted and the target added `bonus`: keep the drafted tokens after
    /// their first one, if that first one was `bonus` and more came after it (a draft that
    /// stopped right after its guess for `bonus`, unsure of it, says nothing of what follows).
    fn after_bonus(mut self, bonus: TokenId) -> Prefetch {
        let task = self.task.take();
        let mut base = std::mem::take(&mut self.base);
        base.push(bonus);
        let next = tokio::spawn(async move {
            let mut inner = AbortOnDrop(task);
            match inner.0.as_mut() {
                Some(t) => match t.await {
                    Ok(Ok(Some(tokens))) if tokens.len() > 1 && tokens[0] == bonus => {
                        Ok(Some(tokens[1..].to_vec()))
                    }
                    // The draft's error is the next round's to report (it ends the rounds).
                    Ok(Err(e)) => Err(e),
                    _ => Ok(None),
                },
                None => Ok(None),
            }
        });
        Prefetch::new(base, self.asked.saturating_sub(1), next)
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Aborts the task it holds if dropped before the task was awaited.
pub(super) struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// A verification error: the target's context could not hold this round (the request continues
/// target-only, exact, and the user learns why), or the target failed.
fn capacity_or_fatal(e: BackendError, drafted: usize, context: usize) -> SpeculationStop {
    match e {
        BackendError::Status { ref body, .. } if body.contains("exceed") => {
            SpeculationStop::Capacity(format!(
                "the target's context cannot hold this {context}-token context and {drafted} draft tokens for verification (start it with a larger -c): {e}"
            ))
        }
        e => SpeculationStop::Fatal(e.into()),
    }
}

/// A one-pass verification's tokens as the round's choices: each is the target's own, with its
/// bytes where the server reported them or the learnt pieces and `content` give them (else
/// resolved later with `/detokenize`).
fn one_pass_choices(
    result: &Completion,
    info: &PairingInfo,
    pieces: &TokenPieces,
) -> Result<Vec<Choice>, BackendError> {
    if result.tokens.is_empty() {
        return Err(BackendError::Malformed {
            server: "target",
            path: "/completion".into(),
            detail: "a one-pass verification without tokens".into(),
        });
    }
    let last = result.tokens.len() - 1;
    // The server's own bytes for each token, where it gives them one to one: `return_pieces`
    // (patch 0003), or token details — which llama-server reports per piece of finished text (a
    // character spread over several tokens gets ONE entry, its whole bytes, for all of them), so
    // they are a token's own only where they pair up with the tokens.
    let probs = &result.completion_probabilities;
    let own: Option<Vec<&[u8]>> = if result.pieces.len() == result.tokens.len() {
        Some(result.pieces.iter().map(Piece::as_bytes).collect())
    } else {
        (probs.len() == result.tokens.len()
            && probs.iter().zip(&result.tokens).all(|(p, &id)| p.id == id))
        .then(|| probs.iter().map(|p| p.bytes.as_slice()).collect())
    };
    let bytes: Vec<Option<Vec<u8>>> = match own {
        Some(own) => (result.tokens.iter().zip(own))
            .map(|(&id, bytes)| {
                pieces.learn(id, bytes);
                Some(bytes.to_vec())
            })
            .collect(),
        None => (pieces
            .pieces_of(&result.tokens, &result.content)
            .into_iter())
        .map(|piece| piece.map(|p| p.to_vec()))
        .collect(),
    };
    Ok(result
        .tokens
        .iter()
        .zip(bytes)
        .enumerate()
        .map(|(i, (&id, bytes))| Choice {
            id,
            bytes,
            end_of_generation: info.end_of_generation.contains(&id)
                || (i == last && result.stop_type == "eos"),
        })
        .collect())
}

/// The seed of one round's verification: the request's seed mixed with the position
/// (splitmix64), so a seeded request is reproducible and its rounds draw independently.
fn round_seed(seed: u64, position: usize) -> u64 {
    let mut z = seed ^ (position as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Why the rounds stopped before the output was finished.
pub(super) enum SpeculationStop {
    /// The draft failed: continue target-only.
    Draft(String),
    /// The target cannot verify this request's drafts (context too small): continue target-only.
    Capacity(String),
    /// The target failed or the client left: end the request.
    Fatal(EngineError),
}

/// The target's choice at one position: its own greedy token, or a sample from its post-sampler
/// distribution drawn by the proxy (seeded by the request), or — when the returned candidates do
/// not cover the distribution — the sample the server itself drew with an independent seed.
pub(super) fn choose(
    result: &Completion,
    sampling: &Sampling,
    info: &PairingInfo,
    rng: &mut rand::rngs::StdRng,
) -> Result<Choice, BackendError> {
    let server_eos = result.stop_type == "eos";
    let Some(sampled) = result.completion_probabilities.first() else {
        // No details for this token (its text ends mid-character): its id is all there is.
        let id = *result
            .tokens
            .first()
            .ok_or_else(|| BackendError::Malformed {
                server: "target",
                path: "/completion".into(),
                detail: "a verification result without its sampled token".into(),
            })?;
        return Ok(Choice {
            id,
            bytes: None,
            end_of_generation: server_eos || info.end_of_generation.contains(&id),
        });
    };
    if !sampling.is_greedy() {
        if let Some(c) = verify::sample(&sampled.top_probs, rng) {
            let end_of_generation =
                info.end_of_generation.contains(&c.id) || (c.id == sampled.id && server_eos);
            return Ok(Choice {
                id: c.id,
                bytes: Some(c.bytes.clone()),
                end_of_generation,
            });
        }
    }
    Ok(Choice {
        id: sampled.id,
        bytes: Some(sampled.bytes.clone()),
        end_of_generation: server_eos || info.end_of_generation.contains(&sampled.id),
    })
}

#[cfg(test)]
mod tests {
    use super::prefetch_serves;

    #[test]
    fn a_block_drafted_ahead_serves_when_long_enough_or_ended_by_itself() {
        // Asked for 5 (k + 1 of the round that bet), the next round wants 4.
        assert!(prefetch_serves(5, 5, 4));
        assert!(prefetch_serves(4, 5, 4));
        // Ended at its own stop after 2 tokens: a fresh draft would end there too.
        assert!(prefetch_serves(2, 5, 4));
        // Cut by what it was asked for, shorter than the round wants: draft afresh.
        assert!(!prefetch_serves(3, 3, 4));
        // Nothing (a lost bet reads as nothing usable): draft afresh.
        assert!(!prefetch_serves(0, 5, 4));
    }
}
