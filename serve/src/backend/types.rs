//! The types every backend and the engine share: token ids, the sampler settings, one position's
//! sampled token and candidates, a completion and a stream event. Their serde shapes are
//! llama-server's `/completion` JSON (the richest of the servers); the vLLM client builds the same
//! values from its own replies, so the engine never knows which server answered.

use serde::Deserialize;

/// A token id in the model's vocabulary (llama.cpp uses `int32_t`; ids are never negative).
pub type TokenId = u32;

/// Which role a server plays; used in error messages and logs so the user knows which host failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Target,
    Draft,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Target => "target",
            Role::Draft => "draft",
        }
    }
}

/// The sampler settings forwarded to the target (and the draft, which always decodes greedily).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_k: Option<i32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    /// The request set no temperature and the server's own default applies, one the proxy cannot
    /// read (vLLM's: its model's generation config, else 1.0): `temperature` is not sent, and
    /// the request is never taken for greedy (the server samples every position itself).
    pub server_temperature: bool,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling::default()
    }

    pub fn is_greedy(&self) -> bool {
        !self.server_temperature && self.temperature <= 0.0
    }

    /// The settings as request fields, under the names llama-server's `/completion` and vLLM's
    /// `/v1/completions` share (`temperature`, `top_k`, `top_p`, `min_p`, `seed`).
    pub fn write_fields(&self, body: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::json;
        if !self.server_temperature {
            body.insert("temperature".into(), json!(self.temperature.max(0.0)));
        }
        if let Some(v) = self.top_k {
            body.insert("top_k".into(), json!(v));
        }
        if let Some(v) = self.top_p {
            body.insert("top_p".into(), json!(v));
        }
        if let Some(v) = self.min_p {
            body.insert("min_p".into(), json!(v));
        }
        if let Some(v) = self.seed {
            body.insert("seed".into(), json!(v));
        }
    }
}

/// How a round's draft is asked of a draft server beyond "n greedy tokens" (the pairing's
/// `draft_p_min` and `draft_backend_sampling`; a drafter that cannot act on them ignores them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DraftOptions {
    /// End the draft after a token the draft model gave less than this probability (the
    /// patched llama-server's `stop_p_min`); 0: drafts run to k.
    pub p_min: f64,
    /// Sample on the draft server's device (llama-server's per-request `backend_sampling`): no
    /// copy of the vocabulary's logits to the host per draft token. The same tokens either way;
    /// with the pinned llama.cpp each such request first sets the sampler up on the device
    /// (~10 ms on an H100), a loss (`benchmarks/results/gpu/distributed/draft-backend-sampling.md`).
    pub backend_sampling: bool,
}

/// One candidate of a position's distribution (after the sampler chain when asked for).
#[derive(Debug, Clone, Deserialize)]
pub struct Candidate {
    pub id: TokenId,
    #[serde(default)]
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub prob: Option<f64>,
    #[serde(default)]
    pub logprob: Option<f64>,
}

/// The sampled token at one position, with its exact bytes and (when requested) its neighbours.
#[derive(Debug, Clone, Deserialize)]
pub struct SampledToken {
    pub id: TokenId,
    #[serde(default)]
    pub bytes: Vec<u8>,
    #[serde(default)]
    pub top_probs: Vec<Candidate>,
    #[serde(default)]
    pub top_logprobs: Vec<Candidate>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub prompt_n: f64,
    #[serde(default)]
    pub prompt_ms: f64,
    #[serde(default)]
    pub predicted_n: f64,
    #[serde(default)]
    pub predicted_ms: f64,
    /// Tokens llama.cpp's own speculation drafted / accepted (native pairing).
    #[serde(default)]
    pub draft_n: Option<u64>,
    #[serde(default)]
    pub draft_n_accepted: Option<u64>,
}

/// One prompt's result from `/completion`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Completion {
    #[serde(default)]
    pub tokens: Vec<TokenId>,
    /// The text of `tokens` as the server wrote it (invalid UTF-8 replaced by U+FFFD).
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub stop_type: String,
    #[serde(default)]
    pub completion_probabilities: Vec<SampledToken>,
    /// The text of each of `tokens` (a patched llama-server's `return_pieces`; empty otherwise).
    #[serde(default)]
    pub pieces: Vec<Piece>,
    #[serde(default)]
    pub timings: Option<Timings>,
    /// The slot that served the request (llama-server's `id_slot`).
    #[serde(default)]
    pub id_slot: Option<usize>,
    /// The prompt's length as the server took it (llama-server's `tokens_evaluated`): with a
    /// named cached prefix, the proof that the server prepended it.
    #[serde(default)]
    pub tokens_evaluated: Option<u64>,
}

/// One token's text as a patched llama-server reports it (`return_pieces`, shaped as `/tokenize`'s
/// `with_pieces`): a string, or the bytes of a token that is not valid UTF-8 on its own (part of a
/// character), which a string could not carry without losing them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Piece {
    Text(String),
    Bytes(Vec<u8>),
}

impl Piece {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Piece::Text(s) => s.as_bytes(),
            Piece::Bytes(b) => b,
        }
    }
}

/// One event of a streamed `/completion`.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamEvent {
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub tokens: Vec<TokenId>,
    /// Tokens generated so far; jumps by more than one where events were skipped.
    #[serde(default)]
    pub tokens_predicted: usize,
    #[serde(default)]
    pub completion_probabilities: Vec<SampledToken>,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub stop_type: String,
    #[serde(default)]
    pub timings: Option<Timings>,
}
