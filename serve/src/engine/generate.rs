//! One request's course through the engine: whether it goes to the target untouched, preparing it
//! (probe, tokenize, context check), then the chosen path — native pairing, proxy rounds with
//! fail-over between drafters, and target-only for whatever is left — and the figures at the end.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

use super::output::{FinishReason, Output};
use super::pairing::{lock_controller, Drafter, Pairing};
use super::path_choice;
use super::probe::PairingInfo;
use super::request::{
    Destination, EngineError, Event, ForwardReason, Generation, GenerationRequest, Job, Plan,
    Prepared, PromptInput, Route, Run,
};
use super::round::SpeculationStop;
use crate::backend::{BackendError, BackendKind, TokenId};
use crate::metrics::ServedBy;

impl Pairing {
    /// Serve a job: forward it to the target unchanged when the engine has nothing to add
    /// (the plan says so, or no drafter can speak for the target, or the controller has
    /// speculation off), else prepare it for [`Pairing::run`]. Every failure is counted here.
    pub async fn route(&self, job: Job) -> Result<Route, EngineError> {
        let result = match job.plan {
            Plan::Forward(reason) => self.forward(job.path, &job.body, reason, None).await,
            // The pairing's facts are looked up once per request: a target that does not answer
            // costs this request one probe, not one for the routing and one for the preparation.
            Plan::Generate(request) => match self.info().await {
                Err(e) => Err(e.into()),
                Ok(info) => match self.destination(&info, &request, job.engine_only) {
                    Destination::Forward(reason) => {
                        let native_n_max = (reason == ForwardReason::SpeculationOff)
                            .then(|| self.plain_target(&info))
                            .flatten();
                        self.forward(job.path, &job.body, reason, native_n_max)
                            .await
                    }
                    Destination::Engine(path) => self
                        .prepare_with(request, info, Instant::now(), path)
                        .await
                        .map(Route::Generate),
                },
            },
        };
        if let Err(e) = &result {
            self.record_failure(e).await;
        }
        result
    }

    /// Send the client's body to the target's own route and hand back its reply. `native_n_max`:
    /// what a natively paired target is told of its own speculation ([`Pairing::plain_target`]),
    /// added to the body as `speculative.n_max` (else it would draft by its defaults; its OpenAI
    /// routes read the same field as `/completion`).
    async fn forward(
        &self,
        path: &str,
        body: &serde_json::Value,
        reason: ForwardReason,
        native_n_max: Option<usize>,
    ) -> Result<Route, EngineError> {
        info!(pairing = %self.config.name, reason = %reason.tag(), ?native_n_max, "forwarding to the target unchanged");
        let response = if let Some(n_max) = native_n_max {
            let mut body = body.clone();
            if let Some(m) = body.as_object_mut() {
                m.insert("speculative.n_max".into(), serde_json::json!(n_max));
            }
            self.target.forward(path, &body).await?
        } else {
            self.target.forward(path, body).await?
        };
        self.metrics.forwarded(reason.kind());
        Ok(Route::Forwarded { response, reason })
    }

    /// A request on a route the engine does not drive (embeddings, responses, Anthropic messages,
    /// tokenize, …): sent to the target as it came (method, path and query, content type, body),
    /// counted as a forward for [`ForwardReason::Route`]. The reply is the target's, untouched.
    pub async fn forward_route(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, EngineError> {
        info!(pairing = %self.config.name, reason = "route", "forwarding to the target unchanged");
        let result = self
            .target
            .forward_raw(method, path_and_query, content_type, body)
            .await;
        match result {
            Ok(response) => {
                self.metrics.forwarded(ForwardReason::Route.kind());
                Ok(response)
            }
            Err(e) => {
                let e = EngineError::from(e);
                self.record_failure(&e).await;
                Err(e)
            }
        }
    }

    /// Where a request the engine could generate goes right now: to the target untouched (no
    /// drafter can speak for it, or the controller of the way it would take has speculation off;
    /// that controller still samples some requests through the engine), else to the engine, by
    /// the speculation path chosen for it (a pairing with both paths). The engine also takes the
    /// request when that is unknown (the target is not reachable), so it reports the error
    /// properly.
    fn destination(
        &self,
        info: &PairingInfo,
        request: &GenerationRequest,
        engine_only: bool,
    ) -> Destination {
        if engine_only {
            return Destination::Engine(self.path_for(info, Instant::now()));
        }
        if let Some(reason) = Self::reasoning_forward(info, &request.prompt) {
            return Destination::Forward(reason);
        }
        if info.speculation.is_err() {
            return Destination::Forward(ForwardReason::NoDrafter);
        }
        let now = Instant::now();
        let path = self.path_for(info, now);
        // A natively paired target speculates on its own whenever a request does not say
        // otherwise: it may be passed the request only while it obeys `speculative.n_max` (the
        // forwarded body then says 0) and the controller of the path this request would take
        // has speculation off. With both paths, asking only that one matters: the chooser keeps
        // the slower path's figure as the target alone's while it is off, so it would send most
        // requests to an "off" native path, and those went through the engine target-only (up to
        // 5% slower than the target reached directly, on the H200's fast target).
        let off = if self.config.native {
            if self.plain_target(info).is_none() {
                return Destination::Engine(path);
            }
            match path {
                Some(path_choice::SpeculationPath::Rounds) => self.every_drafter_off(info, now),
                _ => {
                    let native = self
                        .native_alternative
                        .as_ref()
                        .map_or(&self.controller, |n| &n.controller);
                    lock_controller(native).passthrough_while_off(now)
                }
            }
        } else if info.drafter == Drafter::Server && self.drafts.len() > 1 {
            self.every_drafter_off(info, now)
        } else {
            self.with_controller(|c| c.passthrough_while_off(now))
        };
        if off {
            Destination::Forward(ForwardReason::SpeculationOff)
        } else {
            Destination::Engine(path)
        }
    }

    /// The speculation path for the next request of a pairing with both (only while the draft
    /// server is usable: without it the native path is all there is); `None` for one path.
    fn path_for(&self, info: &PairingInfo, now: Instant) -> Option<path_choice::SpeculationPath> {
        match (&info.speculation, info.drafter) {
            (Ok(_), Drafter::Server) => self.choose_path(info, now),
            _ => None,
        }
    }

    /// Whether every usable drafter's controller has speculation off. Every controller is asked
    /// (each counts its requests while off), so this never stops at the first "on".
    fn every_drafter_off(&self, info: &PairingInfo, now: Instant) -> bool {
        let mut all = true;
        for i in info.usable_drafters(&[]) {
            all &= self.drafts[i].with_controller(|c| c.passthrough_while_off(now));
        }
        all
    }

    /// What a target-only stretch tells the target about its own speculation: on a natively paired
    /// target that obeys per-request steering, `speculative.n_max` 0 — else "target-only" would
    /// still draft over its remote link, and the controllers would take that for the target's
    /// plain speed (measured on the GPU: an auto pairing at 0.46x). `None` elsewhere.
    fn plain_target(&self, info: &PairingInfo) -> Option<usize> {
        (self.config.native && matches!(info.native_steering, Some(Ok(())))).then_some(0)
    }

    /// Turn a prompt into the target's token ids, exactly as the target's own endpoints would.
    pub async fn tokenize_prompt(
        &self,
        prompt: &PromptInput,
    ) -> Result<Vec<TokenId>, BackendError> {
        match prompt {
            PromptInput::Tokens(t) => Ok(t.clone()),
            PromptInput::Text(s) => self.target.tokenize(s, true).await,
            PromptInput::Chat {
                messages,
                template_kwargs,
                ..
            } => {
                self.target
                    .tokenize_chat(messages, template_kwargs.as_ref())
                    .await
            }
        }
    }

    /// Generate the target's answer, sending text to `tx` as soon as it is final.
    /// Everything that can fail before the first token: probing, tokenizing, context checks. The
    /// API layer calls it before answering, so these failures get a proper HTTP status even for
    /// streamed requests.
    pub async fn prepare(&self, request: GenerationRequest) -> Result<Prepared, EngineError> {
        let started = Instant::now();
        let info = self.info().await?;
        let path = self.path_for(&info, Instant::now());
        self.prepare_with(request, info, started, path).await
    }

    /// [`Pairing::prepare`] with the pairing's facts already looked up.
    async fn prepare_with(
        &self,
        mut request: GenerationRequest,
        info: Arc<PairingInfo>,
        started: Instant,
        path: Option<path_choice::SpeculationPath>,
    ) -> Result<Prepared, EngineError> {
        if request.default_temperature {
            match info.default_temperature {
                Some(t) => request.sampling.temperature = t,
                // vLLM does not say its default (its model's generation config, else 1.0): the
                // temperature is left to it, and it samples every position itself.
                None if self.config.target_kind == BackendKind::Vllm => {
                    request.sampling.server_temperature = true
                }
                // A llama-server that does not report it: llama.cpp's own 0.8.
                None => {}
            }
        }
        let (prompt, reasoning) = self.tokenize_for_split(&request.prompt, &info).await?;
        let prompt_tokens = prompt.len();
        if prompt_tokens + 1 >= info.n_ctx {
            return Err(EngineError::ContextExceeded {
                prompt: prompt_tokens,
                n_ctx: info.n_ctx,
            });
        }
        Ok(Prepared {
            request,
            info,
            prompt,
            started,
            reasoning,
            path,
        })
    }

    /// Generate a prepared request, sending its text to `tx` as soon as it is final and then
    /// [`Event::Done`] with the figures or the error (counted here).
    pub async fn run(&self, prepared: Prepared, tx: mpsc::Sender<Event>) {
        let result = self.generate_prepared(prepared, &tx).await;
        match &result {
            Ok(g) => info!(
                served_by = ?g.served_by,
                prompt_tokens = g.prompt_tokens,
                completion_tokens = g.completion_tokens,
                rounds = g.rounds,
                drafted = g.drafted,
                accepted = g.accepted,
                ms = g.elapsed.as_millis() as u64,
                "completed"
            ),
            Err(e) => {
                warn!(error = %e, "generation failed");
                self.record_failure(e).await;
            }
        }
        let _ = tx.send(Event::Done(result)).await;
    }

    /// Generate the target's answer, sending text to `tx` as soon as it is final.
    async fn generate_prepared(
        &self,
        prepared: Prepared,
        tx: &mpsc::Sender<Event>,
    ) -> Result<Generation, EngineError> {
        let Prepared {
            request,
            info,
            prompt,
            started,
            path,
            ..
        } = prepared;
        let prompt_tokens = prompt.len();
        // The target alone stops when prompt + generated reaches its context.
        let room = info.n_ctx - prompt_tokens;
        let max_tokens = request.max_tokens.unwrap_or(room).min(room);
        let mut run = Run {
            ctx: prompt,
            out: Output::new(request.stop.clone(), max_tokens),
            rounds: 0,
            drafted: 0,
            accepted: 0,
            prefetched: 0,
            steady_from: None,
        };
        let mut served_by = ServedBy::TargetOnly;
        let mut shadow_slot = self.primary_slot();
        if let (Ok(_), Drafter::Native) = (&info.speculation, info.drafter) {
            // Native only: the pairing's one controller, or the native path's own while a
            // two-path pairing's draft server is away.
            let controller = self
                .native_alternative
                .as_ref()
                .map_or(&self.controller, |n| &n.controller);
            served_by = self
                .generate_native(controller, &info, &request.sampling, &mut run, tx)
                .await?;
        } else if let (Some(path_choice::SpeculationPath::Native), Some(native)) =
            (path, &self.native_alternative)
        {
            served_by = self
                .generate_native(&native.controller, &info, &request.sampling, &mut run, tx)
                .instrument(info_span!("path", chosen = "native"))
                .await?;
        } else if let Ok(k) = &info.speculation {
            // Which draft server drafts this request (`None`: prompt lookup, no server).
            let mut slot = match info.drafter {
                Drafter::Server => self.choose_drafter(&info, &[]),
                _ => None,
            };
            let plan = self.with_ctl(slot, |c| c.plan_request(Instant::now()));
            self.publish_controller_state();
            if plan.speculate {
                served_by = ServedBy::Speculative;
                if plan.measure_target_tokens > 0 {
                    // Refresh the target's plain speed on the first tokens of this answer.
                    let (n, secs) = self
                        .target_only(
                            &info,
                            &request.sampling,
                            &mut run,
                            tx,
                            plan.measure_target_tokens,
                            self.plain_target(&info),
                        )
                        .await?
                        .timed();
                    self.record_target_only_all(n, secs);
                }
                let mut failed: Vec<usize> = Vec::new();
                let mut drafter = info.drafter;
                while run.out.finish.is_none() && run.ids_known() {
                    let result = self
                        .speculate(&info, (drafter, slot), *k, &request.sampling, &mut run, tx)
                        .await;
                    match result {
                        Ok(()) => break,
                        Err(SpeculationStop::Draft(reason)) => {
                            self.draft_failed(slot, reason.clone()).await;
                            if let Some(i) = slot {
                                failed.push(i);
                            }
                            // Fall over to the next usable draft server, then to prompt lookup
                            // if configured, then to the target alone.
                            if drafter == Drafter::Server {
                                if let Some(next) = self.choose_drafter(&info, &failed) {
                                    warn!(pairing = %self.config.name, %reason, from = ?slot.map(|i| &self.drafts[i].url), to = %self.drafts[next].url, "drafter failed mid-stream; falling over to the next drafter");
                                    slot = Some(next);
                                    continue;
                                }
                                if self.config.prompt_lookup_fallback {
                                    warn!(pairing = %self.config.name, %reason, "draft failed mid-stream; drafting from the context for the rest of this answer");
                                    drafter = Drafter::PromptLookup;
                                    slot = None;
                                    continue;
                                }
                            }
                            warn!(pairing = %self.config.name, %reason, "draft failed mid-stream; continuing target-only");
                            break;
                        }
                        Err(SpeculationStop::Capacity(reason)) => {
                            warn!(pairing = %self.config.name, %reason, "continuing this request target-only");
                            break;
                        }
                        Err(SpeculationStop::Fatal(e)) => return Err(e),
                    }
                }
                if let Some((since, count)) = run.steady_from {
                    let made = run.out.count() - count;
                    let secs = since.elapsed().as_secs_f64();
                    self.with_ctl(slot, |c| {
                        c.record_speculative_request(Instant::now(), made, secs)
                    });
                }
                self.publish_controller_state();
            }
            if served_by == ServedBy::TargetOnly {
                shadow_slot = slot;
            }
        }
        if run.out.finish.is_none() {
            let (n, secs) = self
                .target_only(
                    &info,
                    &request.sampling,
                    &mut run,
                    tx,
                    usize::MAX,
                    self.plain_target(&info),
                )
                .await?
                .timed();
            self.record_target_only_all(n, secs);
            if served_by == ServedBy::TargetOnly && info.speculation.is_ok() {
                self.shadow(shadow_slot, &run, prompt_tokens);
            }
        }
        let finish = run.out.finish.unwrap_or(FinishReason::Length);
        let completion_tokens = run.out.count();
        let elapsed = started.elapsed();
        if let Some(path) = path {
            self.record_path(path, completion_tokens, elapsed.as_secs_f64());
        }
        self.metrics.generated.inc_by(completion_tokens as u64);
        self.metrics.request(served_by);
        if completion_tokens > 1 {
            self.metrics
                .record_rate(served_by, completion_tokens as f64 / elapsed.as_secs_f64());
        }
        Ok(Generation {
            finish,
            prompt_tokens,
            completion_tokens,
            token_ids: run.out.token_ids().map(<[TokenId]>::to_vec),
            served_by,
            rounds: run.rounds,
            drafted: run.drafted,
            accepted: run.accepted,
            prefetched: run.prefetched,
            elapsed,
        })
    }
}
