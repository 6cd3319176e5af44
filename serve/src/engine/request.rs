//! What the engine is asked and what it answers: the request as the API layer hands it over, the
//! text deltas sent as soon as they are final, the finished generation's figures, the errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use super::output::{FinishReason, Output};
use super::probe::PairingInfo;
use crate::backend::{BackendError, Sampling, TokenId};
use crate::metrics::ServedBy;

/// Where a prompt comes from; the target turns all of them into token ids.
#[derive(Debug, Clone)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<TokenId>),
    /// OpenAI chat messages, rendered with the target's own chat template.
    Chat(Value),
}

/// One generation as the API layer asks for it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: PromptInput,
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
}

/// A piece of the answer, sent as soon as the target has confirmed it.
#[derive(Debug, Clone)]
pub struct Delta {
    pub text: String,
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
}

impl Run {
    /// Whether `ctx` holds every generated token (a streamed stretch can skip some ids).
    pub(super) fn ids_known(&self) -> bool {
        self.out.token_ids().is_some()
    }
}
