//! What a running llama-server says about itself at `/props`: its slots, model, default
//! sampling, and the request fields a patched build honours beyond stock llama.cpp.

use serde::Deserialize;

/// What `/props` tells about a running server.
#[derive(Debug, Clone, Deserialize)]
pub struct Props {
    #[serde(default)]
    pub total_slots: u32,
    #[serde(default)]
    pub build_info: String,
    #[serde(default)]
    pub model_path: String,
    #[serde(default)]
    pub chat_template: String,
    #[serde(default)]
    pub default_generation_settings: GenerationSettings,
    #[serde(default)]
    eos_token: Option<String>,
    /// Request fields this server honours beyond stock llama.cpp (Tightwad's bundled patch,
    /// `patches/llama.cpp/`); all false on a stock build.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// What a patched llama-server advertises in `/props`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Capabilities {
    /// `draft_tokens` on `/completion`: the slot verifies a client's draft in one sequence.
    #[serde(default)]
    pub draft_tokens: bool,
    /// The longest client draft the server takes (its `--spec-draft-n-max`).
    #[serde(default)]
    pub draft_tokens_max: Option<u32>,
    /// Per-request `speculative.n_max` takes effect (stock llama.cpp parses and ignores it).
    #[serde(default, rename = "speculative.n_max")]
    pub speculative_n_max: bool,
    /// `return_pieces`: a response carries the text of each generated token, so a one-pass
    /// verification needs no token details (`n_probs`, a softmax over the vocabulary per token).
    #[serde(default)]
    pub return_pieces: bool,
    /// `stop_p_min`: a completion ends after a token its model gave less than that probability,
    /// so a draft stops where the draft model is unsure (`draft_p_min`).
    #[serde(default)]
    pub stop_p_min: bool,
    /// `cached_prefix`: a request names the tokens a slot already holds instead of sending them
    /// (see `llamacpp::prefix`).
    #[serde(default)]
    pub cached_prefix: bool,
}

impl Capabilities {
    /// The longest draft the server verifies in one sequence (`None`: a stock server). A patched
    /// server that does not say its limit takes llama.cpp's default `--spec-draft-n-max` (3);
    /// one that says 0 takes no drafts.
    pub fn one_pass_max(&self) -> Option<usize> {
        self.draft_tokens
            .then(|| self.draft_tokens_max.unwrap_or(3) as usize)
    }
}

impl Props {
    /// The end-of-sequence token's text (empty when the model has none).
    pub fn eos_token(&self) -> &str {
        self.eos_token.as_deref().unwrap_or("")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationSettings {
    #[serde(default)]
    pub n_ctx: u32,
    /// The sampling a request that sets nothing gets (the server's `--temp` and the like).
    #[serde(default)]
    pub params: GenerationParams,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationParams {
    #[serde(default)]
    pub temperature: Option<f64>,
}
