//! One inference server of either kind, behind the calls the engine makes.
//!
//! The engine never needs to know which server software answers: a pairing's target and its draft
//! are each a [`Backend`], so llama.cpp and vLLM mix freely (a llama.cpp draft on a small card, a
//! vLLM target on the big one) as long as the vocabularies match — which the engine checks with
//! the same tokenizer probes whatever the kinds.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use serde::Deserialize;
use serde_json::Value;

use super::llamacpp::LlamaServer;
use super::types::{Completion, DraftOptions, Role, Sampling, StreamEvent, TokenId};
use super::vllm::VllmServer;
use super::BackendError;

/// Which server software runs at a URL (`target_kind`/`draft_kind` in a pairing's config).
///
/// Spelled like the agent's process kinds (`llama-server`, `vllm`); the old `llamacpp` is still
/// read, with a warning at load (see `config::spellings`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
pub enum BackendKind {
    /// llama.cpp's `llama-server`.
    #[default]
    #[serde(rename = "llama-server", alias = "llamacpp")]
    Llamacpp,
    /// `vllm serve` (its OpenAI-compatible server).
    #[serde(rename = "vllm")]
    Vllm,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Llamacpp => "llama-server",
            BackendKind::Vllm => "vllm",
        }
    }
}

/// What the engine learns about a server when it probes it.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub model: String,
    /// Build or version, for logs and audits (`b1-0c1e570`, `vllm 0.32.0`).
    pub build: String,
    /// Tokens of prompt + generation one sequence may hold.
    pub n_ctx: usize,
    pub n_vocab: Option<u64>,
    /// End-of-generation token ids.
    pub end_of_generation: HashSet<TokenId>,
    /// Whether `end_of_generation` is known (vLLM tells only with its tokenizer-info endpoint).
    pub eos_known: bool,
    /// How many prompts one verification request may carry in one pass (llama.cpp: its slots).
    pub verify_slots: u32,
    /// The longest draft the server verifies in ONE sequence (`draft_tokens`, the bundled
    /// llama.cpp patch); `None` on a stock build.
    pub one_pass_max: Option<usize>,
    /// Whether a response carries each generated token's text (`return_pieces`, the bundled
    /// patch), so one-pass verifications need no token details.
    pub returns_pieces: bool,
    /// Whether a per-request `speculative.n_max` takes effect (the patch; stock builds ignore it,
    /// so native pairing cannot be steered there).
    pub steers_native: bool,
    /// The chat template reasons aloud (`<think>`, `enable_thinking`, `reasoning_content`):
    /// llama-server's chat endpoint then splits the answer into `reasoning_content` and `content`
    /// with a parser generated from the template, which the pairing's probe then learns
    /// ([`super::reasoning::probe`]) to reproduce it or to leave such chats to the target.
    pub chat_reasoning: bool,
    /// The temperature the server samples with when a request sets none (llama-server's
    /// `--temp`, from `/props`); `None` when it does not say.
    pub default_temperature: Option<f32>,
}

/// A server of either kind.
#[derive(Debug, Clone)]
pub enum Backend {
    Llamacpp(LlamaServer),
    Vllm(VllmServer),
    /// A SIMULATION for the engine's unit tests ([`super::simulated`]).
    #[cfg(test)]
    Simulated(std::sync::Arc<super::simulated::SimulatedServer>),
}

/// Events of a streamed generation, whichever server produced them.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, BackendError>> + Send>>;

/// vLLM takes up to `VLLM_MAX_COMPLETION_PROMPTS` prompts per request (1024 by default); far more
/// than any draft length, so it never limits k.
const VLLM_PROMPTS_PER_REQUEST: u32 = 1024;

impl Backend {
    pub fn new(
        kind: BackendKind,
        role: Role,
        url: &str,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        Ok(match kind {
            BackendKind::Llamacpp => Backend::Llamacpp(LlamaServer::new(role, url, timeout)?),
            BackendKind::Vllm => Backend::Vllm(VllmServer::new(role, url, timeout)?),
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            #[cfg(test)]
            Backend::Simulated(_) => BackendKind::Llamacpp,
            Backend::Llamacpp(_) => BackendKind::Llamacpp,
            Backend::Vllm(_) => BackendKind::Vllm,
        }
    }

    pub fn base_url(&self) -> &str {
        match self {
            #[cfg(test)]
            Backend::Simulated(_) => "simulated://",
            Backend::Llamacpp(s) => s.base_url(),
            Backend::Vllm(s) => s.endpoint().base_url(),
        }
    }

    /// The llama.cpp server, for what only llama.cpp has (native pairing, `/metrics` counters).
    pub fn as_llamacpp(&self) -> Option<&LlamaServer> {
        match self {
            #[cfg(test)]
            Backend::Simulated(_) => None,
            Backend::Llamacpp(s) => Some(s),
            Backend::Vllm(_) => None,
        }
    }

    pub async fn health(&self) -> Result<bool, BackendError> {
        match self {
            #[cfg(test)]
            Backend::Simulated(_) => Ok(true),
            Backend::Llamacpp(s) => s.health().await,
            Backend::Vllm(s) => s.endpoint().healthy().await,
        }
    }

    pub async fn facts(&self) -> Result<ServerFacts, BackendError> {
        match self {
            #[cfg(test)]
            Backend::Simulated(s) => Ok(s.facts()),
            Backend::Llamacpp(s) => {
                let props = s.props().await?;
                // No more JSON requests in flight than the server has HTTP threads for (its
                // slots + 2 at least), see `Endpoint::limit_requests`.
                s.endpoint().limit_requests(props.total_slots as usize + 2);
                s.slot_memory()
                    .configure(props.capabilities.cached_prefix, props.total_slots as usize);
                let model = s.model_info().await?;
                let mut end_of_generation = HashSet::new();
                if !props.eos_token().is_empty() {
                    if let Ok(ids) = s.tokenize(props.eos_token(), false).await {
                        if let [id] = ids.as_slice() {
                            end_of_generation.insert(*id);
                        }
                    }
                }
                Ok(ServerFacts {
                    model: model.id,
                    build: props.build_info.clone(),
                    n_ctx: props.default_generation_settings.n_ctx as usize,
                    n_vocab: model.n_vocab,
                    end_of_generation,
                    eos_known: true,
                    verify_slots: props.total_slots,
                    one_pass_max: props.capabilities.one_pass_max(),
                    returns_pieces: props.capabilities.return_pieces,
                    steers_native: props.capabilities.speculative_n_max,
                    chat_reasoning: template_reasons(&props.chat_template),
                    default_temperature: props
                        .default_generation_settings
                        .params
                        .temperature
                        .map(|t| t as f32),
                })
            }
            Backend::Vllm(s) => {
                let f = s.facts().await?;
                let mut end_of_generation = HashSet::new();
                if let Some(eos) = &f.eos_token {
                    if let [id] = s.tokenize(eos, false).await?.as_slice() {
                        end_of_generation.insert(*id);
                    }
                }
                Ok(ServerFacts {
                    model: f.model,
                    build: format!("vllm {}", f.version),
                    n_ctx: f.max_model_len,
                    n_vocab: None,
                    eos_known: !end_of_generation.is_empty(),
                    end_of_generation,
                    verify_slots: VLLM_PROMPTS_PER_REQUEST,
                    // vLLM verifies greedy drafts in one sequence already (`prompt_logprobs`),
                    // behind `verify`; it has no client-draft field.
                    one_pass_max: None,
                    returns_pieces: false,
                    steers_native: false,
                    // vLLM splits reasoning only with `--reasoning-parser`, which it does not
                    // advertise: its chats are rendered and tokenized by vLLM itself.
                    chat_reasoning: false,
                    // vLLM does not say its default (its model's generation config, else 1.0):
                    // the engine leaves the temperature to it (`Sampling::server_temperature`).
                    default_temperature: None,
                })
            }
        }
    }

    pub async fn tokenize(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<TokenId>, BackendError> {
        match self {
            Backend::Llamacpp(s) => s.tokenize(text, add_special).await,
            Backend::Vllm(s) => s.tokenize(text, add_special).await,
            #[cfg(test)]
            Backend::Simulated(s) => Ok(s.tokenize(text)),
        }
    }

    pub async fn detokenize(&self, tokens: &[TokenId]) -> Result<String, BackendError> {
        match self {
            #[cfg(test)]
            Backend::Simulated(s) => Ok(s.detokenize(tokens)),
            Backend::Llamacpp(s) => s.detokenize(tokens).await,
            Backend::Vllm(s) => s.detokenize(tokens).await,
        }
    }

    /// Chat messages rendered with this server's own template (and the request's
    /// `chat_template_kwargs`), as token ids.
    pub async fn tokenize_chat(
        &self,
        messages: &Value,
        template_kwargs: Option<&Value>,
    ) -> Result<Vec<TokenId>, BackendError> {
        match self {
            #[cfg(test)]
            Backend::Simulated(s) => Ok(s.tokenize(&messages.to_string())),
            Backend::Llamacpp(s) => {
                let rendered = s.apply_template_with(messages, template_kwargs).await?;
                s.tokenize(&rendered, true).await
            }
            Backend::Vllm(s) => s.tokenize_chat(messages, template_kwargs).await,
        }
    }

    /// Up to `n` tokens after `prompt` (a draft's proposal).
    pub async fn complete(
        &self,
        prompt: &[TokenId],
        n: usize,
        sampling: &Sampling,
    ) -> Result<Completion, BackendError> {
        match self {
            Backend::Llamacpp(s) => s.complete(prompt, n, sampling).await,
            Backend::Vllm(s) => s.complete(prompt, n, sampling).await,
            #[cfg(test)]
            Backend::Simulated(s) => s.complete(prompt, n),
        }
    }

    /// A round's draft: up to `n` greedy tokens after `prompt`, asked as `opts` says where the
    /// server can act on it (a llama-server: a confidence stop, sampling on its device); other
    /// drafters draft `n` tokens.
    pub async fn draft(
        &self,
        prompt: &[TokenId],
        n: usize,
        opts: DraftOptions,
    ) -> Result<Completion, BackendError> {
        match self {
            Backend::Llamacpp(s) => s.draft(prompt, n, opts).await,
            Backend::Vllm(s) => s.complete(prompt, n, &Sampling::greedy()).await,
            #[cfg(test)]
            Backend::Simulated(s) => s.draft(prompt, n, opts.p_min),
        }
    }

    /// The target's own choice after `ctx`, `ctx+d1`, …, `ctx+d1..dk` (k + 1 results, in order),
    /// from one request.
    pub async fn verify(
        &self,
        ctx: &[TokenId],
        proposal: &[TokenId],
        sampling: &Sampling,
        n_probs: usize,
    ) -> Result<Vec<Completion>, BackendError> {
        match self {
            Backend::Llamacpp(s) => {
                let prompts: Vec<Vec<TokenId>> = (0..=proposal.len())
                    .map(|i| [ctx, &proposal[..i]].concat())
                    .collect();
                s.next_token_many(&prompts, sampling, n_probs).await
            }
            Backend::Vllm(s) => s.verify(ctx, proposal, sampling).await,
            #[cfg(test)]
            Backend::Simulated(s) => {
                s.spend_verify_time(proposal.len()).await;
                s.verify(ctx, proposal)
            }
        }
    }

    /// One-pass verification by the server's own sampler (only where
    /// [`ServerFacts::one_pass_max`] says the server takes client drafts): the accepted draft
    /// tokens and the token after them.
    pub async fn verify_one_pass(
        &self,
        ctx: &[TokenId],
        proposal: &[TokenId],
        sampling: &Sampling,
        n_probs: usize,
    ) -> Result<Completion, BackendError> {
        match self {
            Backend::Llamacpp(s) => s.verify_draft(ctx, proposal, sampling, n_probs).await,
            Backend::Vllm(_) => Err(BackendError::Status {
                server: "target",
                path: "/v1/completions".into(),
                status: 501,
                body: "vLLM takes no client drafts; it verifies through `verify`".into(),
            }),
            #[cfg(test)]
            Backend::Simulated(s) => {
                s.spend_verify_time(proposal.len()).await;
                s.verify_one_pass(ctx, proposal, n_probs)
            }
        }
    }

    /// Stream up to `n` tokens after `prompt`, sampled by the server itself.
    pub async fn stream(
        &self,
        prompt: &[TokenId],
        n: usize,
        sampling: &Sampling,
        native_draft_tokens: Option<usize>,
    ) -> Result<EventStream, BackendError> {
        match self {
            Backend::Llamacpp(s) => Ok(Box::pin(
                s.stream(prompt, n, sampling, native_draft_tokens).await?,
            )),
            Backend::Vllm(s) => s.stream(prompt, n, sampling).await,
            #[cfg(test)]
            Backend::Simulated(s) => s.stream(prompt, n),
        }
    }

    /// Relay any request unchanged: method, path and query, content type and body as the client
    /// sent them (the routes the engine does not drive).
    pub async fn forward_raw(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, BackendError> {
        match self {
            Backend::Llamacpp(s) => {
                s.forward_raw(method, path_and_query, content_type, body)
                    .await
            }
            Backend::Vllm(s) => {
                s.forward_raw(method, path_and_query, content_type, body)
                    .await
            }
            #[cfg(test)]
            Backend::Simulated(_) => Err(BackendError::Status {
                server: "simulated",
                path: path_and_query.to_string(),
                status: 404,
                body: "the simulation forwards nothing".into(),
            }),
        }
    }

    /// Relay an OpenAI request unchanged (passthrough).
    pub async fn forward(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, BackendError> {
        match self {
            Backend::Llamacpp(s) => s.forward(path, body).await,
            Backend::Vllm(s) => s.forward(path, body).await,
            #[cfg(test)]
            Backend::Simulated(_) => Err(BackendError::Status {
                server: "simulated",
                path: path.to_string(),
                status: 404,
                body: "the simulation forwards nothing".into(),
            }),
        }
    }
}

/// Whether a chat template reasons aloud, as far as its source says: the markers llama.cpp's
/// template analysis keys on (`<think>` tags, an `enable_thinking` switch, `reasoning_content`
/// in the messages it renders).
pub fn template_reasons(template: &str) -> bool {
    [
        "<think>",
        "[THINK]",
        "enable_thinking",
        "reasoning_content",
        "<|channel|>",
    ]
    .iter()
    .any(|m| template.contains(m))
}
