//! What the engine is asked and what it answers: the request as the API layer hands it over, the
//! text deltas sent as soon as they are final, the finished generation's figures, the errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use super::output::{FinishReason, Output};
use super::probe::PairingInfo;
use crate::backend::reasoning::{ReasoningFormat, ReasoningSyntax};
use crate::backend::{BackendError, Sampling, TokenId};
use crate::metrics::ServedBy;

/// Where a prompt comes from; the target turns all of them into token ids.
#[derive(Debug, Clone)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<TokenId>),
    /// OpenAI chat messages, rendered with the target's own chat template (with the request's
    /// `chat_template_kwargs`, e.g. `enable_thinking`, when it has some).
    Chat {
        messages: Value,
        template_kwargs: Option<Value>,
        /// The request's `reasoning_format` (`None`: the target's default), for a target whose
        /// template thinks aloud.
        reasoning_format: Option<ReasoningFormat>,
    },
}

/// One generation as the API layer asks for it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: PromptInput,
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    /// The client set no temperature: the engine samples with the target's own default (probed),
    /// as the target alone would, and `sampling.temperature` is the fallback when it is unknown.
    pub default_temperature: bool,
    pub stop: Vec<String>,
}

/// How the API layer asks for a request to be served: what the engine would generate, or why
/// only the target can serve it.
#[derive(Debug, Clone)]
pub enum Plan {
    /// The engine generates it (speculating when that pays).
    Generate(GenerationRequest),
    /// The target serves it unchanged, for this reason.
    Forward(ForwardReason),
}

/// Why a request went to the target unchanged (a label in `/metrics`, the
/// `x-tightwad-served-by` header and the logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardReason {
    /// The request uses a field the engine does not drive; its name, cut to a safe label.
    Field(String),
    /// A chat message whose content is not plain text.
    NonTextContent,
    /// No drafter can speak for this target (none configured, another vocabulary, too few
    /// target slots, the draft host down).
    NoDrafter,
    /// The controller has speculation off: the target alone is faster right now.
    SpeculationOff,
    /// The target's chat template thinks aloud and the engine cannot split its answer into
    /// `reasoning_content` and `content` exactly as the target would: a template with a parser
    /// of its own, tags the probe could not confirm, a conversation that ends with the
    /// assistant's own (continued) message.
    Reasoning,
    /// A route the engine does not drive (`/v1/embeddings`, `/v1/responses`, `/tokenize`, …).
    Route,
}

impl ForwardReason {
    /// A field's name as a label: ASCII letters, digits and `_` only, at most 40 of them (a
    /// client's field names never reach logs or headers raw).
    pub fn field(name: &str) -> ForwardReason {
        ForwardReason::Field(
            name.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(40)
                .collect(),
        )
    }

    /// The reason's kind, a bounded label set for `/metrics`.
    pub fn kind(&self) -> &'static str {
        match self {
            ForwardReason::Field(_) => "field",
            ForwardReason::NonTextContent => "non_text_content",
            ForwardReason::NoDrafter => "no_drafter",
            ForwardReason::SpeculationOff => "speculation_off",
            ForwardReason::Reasoning => "reasoning",
            ForwardReason::Route => "route",
        }
    }

    /// `kind` with the field name where there is one (`field:tools`), for headers and logs.
    pub fn tag(&self) -> String {
        match self {
            ForwardReason::Field(f) => format!("field:{f}"),
            other => other.kind().to_string(),
        }
    }
}

impl std::fmt::Display for ForwardReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardReason::Field(name) => write!(f, "`{name}` is handled by the target itself"),
            ForwardReason::NonTextContent => write!(f, "a message has non-text content"),
            ForwardReason::NoDrafter => write!(f, "no drafter can speak for the target"),
            ForwardReason::SpeculationOff => {
                write!(f, "speculation is off (the target alone is faster now)")
            }
            ForwardReason::Reasoning => write!(
                f,
                "the target's chat template reasons in a way only its own parser splits"
            ),
            ForwardReason::Route => write!(f, "the engine does not drive this route"),
        }
    }
}

/// One request as the engine takes it from the API layer.
#[derive(Debug, Clone)]
pub struct Job {
    pub plan: Plan,
    /// The target's route for forwarding (`/v1/chat/completions`, `/v1/completions`).
    pub path: &'static str,
    /// The client's body, sent to the target as is when the request is forwarded.
    pub body: Value,
    /// The client asked for something only the engine gives (token ids): never forward.
    pub engine_only: bool,
}

/// How the engine serves a [`Job`].
pub enum Route {
    /// Ready to generate: [`super::Pairing::run`] streams it.
    Generate(Prepared),
    /// The target's own reply, to relay as it is.
    Forwarded {
        response: reqwest::Response,
        reason: ForwardReason,
    },
}

/// What a generation sends the API layer, in order, over one channel: text as soon as the target
/// has confirmed it, then the end.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done(Result<Generation, EngineError>),
}

/// The outcome of a finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The generated token ids, when all are known (see [`Output::token_ids`]).
    pub token_ids: Option<Vec<TokenId>>,
    pub served_by: ServedBy,
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
    pub prefetched: usize,
    pub elapsed: Duration,
}

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the prompt has {prompt} tokens but the target's context holds {n_ctx}; shorten the prompt or start the target with a larger -c")]
    ContextExceeded { prompt: usize, n_ctx: usize },
    #[error("the client went away")]
    ClientGone,
}

/// A request checked against the target and tokenized, ready to generate.
#[derive(Debug)]
pub struct Prepared {
    pub(super) request: GenerationRequest,
    pub(super) info: Arc<PairingInfo>,
    pub(super) prompt: Vec<TokenId>,
    pub(super) started: Instant,
    pub(super) reasoning: Option<ReasoningSplit>,
    /// The speculation path chosen for it when routed (a pairing with both paths).
    pub(super) path: Option<super::path_choice::SpeculationPath>,
}

/// Where a request goes ([`super::pairing::Pairing`]'s routing).
pub(super) enum Destination {
    /// To the target untouched, for this reason.
    Forward(ForwardReason),
    /// Through the engine, by this speculation path (`None`: the pairing has one).
    Engine(Option<super::path_choice::SpeculationPath>),
}

impl Prepared {
    /// How the answer's text is split into `reasoning_content` and `content` (a chat to a
    /// target whose template thinks aloud), `None` for plain text.
    pub fn reasoning(&self) -> Option<&ReasoningSplit> {
        self.reasoning.as_ref()
    }
}

/// One chat answer's split as the target makes it: its template's tags, what its generation
/// prompt leaves open (`<think>\n` when the template forces the block open), and whether the
/// thinking is taken out of the content.
#[derive(Debug, Clone)]
pub struct ReasoningSplit {
    pub syntax: Arc<ReasoningSyntax>,
    pub pending: String,
    pub extract: bool,
}

impl ReasoningSplit {
    /// `(reasoning_content, content)` of the text generated so far (or all of it).
    pub fn split(&self, text: &str) -> (String, String) {
        self.syntax.split(&self.pending, text, self.extract)
    }
}

/// Progress of one generation, shared by the speculative and the target-only phases.
pub(super) struct Run {
    pub(super) ctx: Vec<TokenId>,
    pub(super) out: Output,
    pub(super) rounds: usize,
    pub(super) drafted: usize,
    pub(super) accepted: usize,
    /// Rounds whose draft was ready when the previous verification ended (pipelining won).
    pub(super) prefetched: usize,
    /// When the first speculation round ended, and the tokens out by then. The controller's
    /// speculative throughput is measured from here, as the target's own speed leaves out the
    /// first token: the opening round reads the prompt on both servers.
    pub(super) steady_from: Option<(std::time::Instant, usize)>,
}

impl Run {
    /// Whether `ctx` holds every generated token (a streamed stretch can skip some ids).
    pub(super) fn ids_known(&self) -> bool {
        self.out.token_ids().is_some()
    }
}
