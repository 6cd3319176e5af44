//! How a proxy is described: a TOML file, then `TIGHTWAD_*` environment variables, then
//! command-line flags, each layer over the one before ([`layers`], merged by figment; an error
//! names the file and line, the variable or the flag the bad value came from). `tightwad config schema`
//! prints the file's JSON Schema ([`schema`]), shipped as `dist/schema/tightwad.schema.json`.
//!
//! ```toml
//! listen = "127.0.0.1:8088"
//! max_body_bytes = 4194304
//! api_keys = ["sk-local-1"]          # optional; clients send `Authorization: Bearer sk-local-1`
//! max_concurrent_requests = 64
//! max_concurrent_per_client = 16
//! max_tokens_limit = 4096            # optional
//! default_max_tokens = 4096          # a request that names no max_tokens gets this (0: none)
//! max_connections_per_client = 128   # open connections from one address; more are closed
//! header_read_timeout_s = 10         # a request's headers must arrive within this
//! body_read_timeout_s = 30           # and its body within this (else 408)
//! remote_control = false             # true: drain/resume/logs from any address without API keys
//! cors_origins = ["http://localhost:5173"]  # browser apps allowed to call the API ("*": any)
//!
//! [[pairings]]
//! name = "llama-70b"                 # the model name clients ask for
//! target = "http://10.0.0.2:8080"    # llama-server (patched: -np 1 a request; stock: k + 1)
//! draft = "http://10.0.0.3:8080"     # optional: no draft = target-only; "prompt-lookup" = no model
//! drafts = ["http://10.0.0.4:8080"]  # optional: more draft servers; the best measured one drafts
//! prompt_lookup_fallback = false     # draft from the context while the draft server is down
//! aliases = ["llama3", "gpt-4o"]     # optional: more names clients may ask for it by
//! draft_tokens = 8                   # optional: the largest k (default: 8 where the target
//!                                    # verifies in one pass, else 4)
//! disable_above_tok_s = 40           # optional: never speculate on a target faster than this
//! adaptive = true                    # false: speculate every round with draft_tokens
//! pipeline = "auto"                  # draft the next block while the target verifies: auto/on/off
//! native = false                     # true: the target runs llama.cpp's own speculation (with
//!                                    # `draft` too: the faster of the two paths, measured)
//! moe = false                        # true: a mixture-of-experts target: with draft_tokens > 4,
//!                                    # k <= 4 until verifying 8 tokens is measured cheap
//! target_kind = "llama-server"       # or "vllm" (`vllm serve`); the draft likewise:
//! draft_kind = "llama-server"
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::backend::BackendKind;
use crate::engine::{PairingConfig, VerifyMode};

mod check;
pub mod layers;
mod origin;
pub mod schema;
mod spellings;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_every_key;

pub use layers::{FlagOverrides, Loaded};

#[derive(Debug, Error)]
pub enum ConfigError {
    // The cause is the source, printed once by whoever walks the chain (`{e:#}`).
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A value that does not fit its key (or a file that is not TOML), with where it came
    /// from: `FILE, line N`, the `TIGHTWAD_*` variable or the flag.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value read without error that cannot run, at its key path (`pairings.0.draft_tokens`);
    /// the loader turns it into a [`ConfigError::Parse`] naming where the value was set.
    #[error("{message}")]
    Key { key: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8088))
}
fn default_body_limit() -> usize {
    4 * 1024 * 1024
}
fn default_max_concurrent() -> usize {
    64
}
fn default_max_concurrent_per_client() -> usize {
    16
}
fn default_max_connections_per_client() -> usize {
    128
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_body_read_timeout() -> u64 {
    30
}
fn default_default_max_tokens() -> usize {
    4096
}
fn default_target_timeout() -> u64 {
    300
}
fn default_draft_timeout() -> u64 {
    10
}

fn default_draft_p_min() -> f64 {
    crate::engine::DEFAULT_DRAFT_P_MIN
}

/// The proxy's whole configuration (`tightwad.toml`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "tightwad.toml", extend("$id" = "https://tightwad.dev/schema/tightwad.schema.json"))]
pub struct ProxyConfig {
    /// Address the proxy listens on. Anything but loopback with no `api_keys` opens the models to
    /// the whole network; the proxy says so loudly at startup.
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Larger request bodies are refused with 413 before they are read.
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    /// Bearer keys clients must present (none: open). `TIGHTWAD_API_KEY` adds one.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Generations in flight at once, all clients together; more get 429.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// Generations in flight at once from one client address; more get 429.
    #[serde(default = "default_max_concurrent_per_client")]
    pub max_concurrent_per_client: usize,
    /// Largest `max_tokens` a request may ask for (and the default when it asks for none).
    #[serde(default)]
    pub max_tokens_limit: Option<usize>,
    /// `max_tokens` for a request that names none (without it, a request generates to the end of
    /// the context); 0: no default. `max_tokens_limit`, when set, takes its place.
    #[serde(default = "default_default_max_tokens")]
    pub default_max_tokens: usize,
    /// Open connections from one client address; a connection beyond it is closed at once.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// A request's headers must have arrived this many seconds after the connection (or the
    /// previous request) is ready for them; else the connection is closed.
    #[serde(
        default = "default_header_read_timeout",
        alias = "header_read_timeout_secs"
    )]
    pub header_read_timeout_s: u64,
    /// A request's body must have arrived within this many seconds; else 408. No concurrency
    /// place is taken before the body is in.
    #[serde(
        default = "default_body_read_timeout",
        alias = "body_read_timeout_secs"
    )]
    pub body_read_timeout_s: u64,
    /// The control routes (drain, resume, the proxy's log) answer other addresses than loopback
    /// only with a valid API key; `true` opens them to any address when no keys are configured.
    #[serde(default)]
    pub remote_control: bool,
    /// Browser origins (`https://app.example`) allowed to call the API from a page (CORS);
    /// `["*"]` allows any. Empty (the default): no CORS headers, so browsers keep other sites'
    /// pages from calling the proxy.
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// The fleet's hosts, read by `tightwad status`/`agent`/`models` (see `fleet::config`).
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub hosts: Vec<toml::Value>,
    /// Fleet layout read by `tightwad up`/`doctor` (see `fleet::layout`): processes per host,
    /// RPC pools, native pairings. Opaque here; the proxy itself does not use them.
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub processes: Vec<toml::Value>,
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub pools: Vec<toml::Value>,
    /// Pairings whose target speculates by itself (see `fleet::layout`).
    #[serde(default)]
    #[schemars(with = "Vec<serde_json::Map<String, serde_json::Value>>")]
    pub native_pairings: Vec<toml::Value>,
    /// The coordinator's own identity folder for the peer protocol.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// The file this was read from (the dashboard asks the hosts listed there).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
    /// The models served: each a target, optionally with draft servers, under its own name.
    #[serde(default)]
    pub pairings: Vec<PairingEntry>,
}

/// One `[[pairings]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingEntry {
    /// The model name clients ask for (default `tightwad`, then `tightwad-1`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More model names clients may ask for this pairing by (like llama-swap's aliases); listed
    /// in `/v1/models` too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The target server's URL: the big model whose output clients get (llama-server with
    /// `-np` at least `draft_tokens + 1`, or vLLM).
    pub target: String,
    /// A draft server's URL (a small model with the target's vocabulary), or `prompt-lookup` to
    /// draft from the context itself. None: target-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// More draft servers for this target (after `draft`): each request goes to the drafter whose
    /// measured acceptance × speed delivers most; one that fails hands over to the next.
    #[serde(default)]
    pub drafts: Vec<String>,
    /// The largest number of tokens drafted per round (k), 1 to 8. Unset: 8 where the target
    /// verifies a draft in one sequence (Tightwad's llama.cpp patch; capped by its
    /// `--spec-draft-n-max`), else 4 (a stock llama-server then needs `-np k+1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub draft_tokens: Option<usize>,
    /// A draft ends after a token its model gave less than this probability (0, the default:
    /// drafts always run to k). The unsure token is still proposed; the tokens after it, likely
    /// rejected, are not drafted. Needs the bundled llama.cpp patch on the draft server (a stock
    /// one ignores it and drafts k tokens). Measured a loss on the benchmarks' models.
    #[serde(default = "default_draft_p_min")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub draft_p_min: f64,
    /// Draft servers sample each draft token on their own device (llama-server's per-request
    /// `backend_sampling`), meant to save copying the vocabulary's logits to the host per draft
    /// token. The same tokens either way. Measured a loss with the pinned llama.cpp (an H100
    /// draft: ~10 ms a request to set the device sampler up; no gain on CPU), so off by default.
    /// Not with `draft_p_min` above 0 (the confidence stop reads the logits on the host).
    #[serde(default)]
    pub draft_backend_sampling: bool,
    /// Seconds the target may take to answer before the request fails with 504.
    #[serde(default = "default_target_timeout", alias = "target_timeout_secs")]
    pub target_timeout_s: u64,
    /// Seconds the draft may take; past it the stream continues target-only.
    #[serde(default = "default_draft_timeout", alias = "draft_timeout_secs")]
    pub draft_timeout_s: u64,
    /// Serve target-only whenever the target alone is faster than this many tokens/s (only with
    /// `adaptive = true`: the controller measures the target's speed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_above_tok_s: Option<f64>,
    /// Draft from the context itself (prompt lookup) while the draft server is down.
    #[serde(default)]
    pub prompt_lookup_fallback: bool,
    /// Draft the next block while the target verifies the current one: `"auto"` (default: where
    /// it measures faster — it does not when draft and target share a GPU or a few cores),
    /// `"on"` or `"off"` (`true`/`false` still read).
    #[serde(default)]
    pub pipeline: crate::engine::Pipelining,
    /// The target speculates by itself (llama.cpp `-md` with the draft on a remote rpc-server);
    /// the proxy steers `speculative.n_max` per request. With a `draft` URL as well, the pairing
    /// has two paths and each request takes the one that has been delivering more tokens/s.
    #[serde(default)]
    pub native: bool,
    /// The target is a mixture-of-experts model (`tightwad init` sets it from the GGUF's expert
    /// count): k stays at 4 or less unless verification is measured to cost nearly the same for
    /// 8 tokens as for 1. It acts only with `adaptive = true` and `draft_tokens` above 4 (else
    /// k never exceeds 4 anyway); the proxy warns at startup when it cannot act.
    #[serde(default)]
    pub moe: bool,
    /// `false` pins speculation on with `draft_tokens` every round (for experiments and tests).
    #[serde(default = "default_adaptive")]
    pub adaptive: bool,
    /// The target's server software: `llama-server` (default) or `vllm`.
    #[serde(default)]
    pub target_kind: BackendKind,
    /// The draft's server software: `llama-server` (default) or `vllm`.
    #[serde(default)]
    pub draft_kind: BackendKind,
    /// How the target verifies a draft: `auto` (one sequence when the target advertises client
    /// drafts — the bundled llama.cpp patch —, else one prompt per draft position),
    /// `one-pass`, or `multi-prompt` (to compare them).
    #[serde(default)]
    pub verify: VerifyMode,
}

fn default_adaptive() -> bool {
    true
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: default_listen(),
            max_body_bytes: default_body_limit(),
            api_keys: Vec::new(),
            max_concurrent_requests: default_max_concurrent(),
            max_concurrent_per_client: default_max_concurrent_per_client(),
            max_tokens_limit: None,
            default_max_tokens: default_default_max_tokens(),
            max_connections_per_client: default_max_connections_per_client(),
            header_read_timeout_s: default_header_read_timeout(),
            body_read_timeout_s: default_body_read_timeout(),
            remote_control: false,
            cors_origins: Vec::new(),
            hosts: Vec::new(),
            processes: Vec::new(),
            pools: Vec::new(),
            native_pairings: Vec::new(),
            state_dir: None,
            source: None,
            pairings: Vec::new(),
        }
    }
}

impl PairingEntry {
    pub fn new(target: String, draft: Option<String>) -> Self {
        PairingEntry {
            name: None,
            aliases: Vec::new(),
            target,
            draft,
            drafts: Vec::new(),
            draft_tokens: None,
            draft_p_min: default_draft_p_min(),
            draft_backend_sampling: false,
            target_timeout_s: default_target_timeout(),
            draft_timeout_s: default_draft_timeout(),
            disable_above_tok_s: None,
            prompt_lookup_fallback: false,
            adaptive: true,
            pipeline: crate::engine::Pipelining::Auto,
            native: false,
            moe: false,
            target_kind: BackendKind::default(),
            draft_kind: BackendKind::default(),
            verify: VerifyMode::default(),
        }
    }

    pub fn to_pairing_config(&self, index: usize) -> PairingConfig {
        PairingConfig {
            name: self.name.clone().unwrap_or_else(|| {
                if index == 0 {
                    "tightwad".to_string()
                } else {
                    format!("tightwad-{index}")
                }
            }),
            aliases: self.aliases.clone(),
            target_url: self.target.clone(),
            draft_url: self.draft.clone(),
            drafts: self.drafts.clone(),
            draft_tokens: self.draft_tokens,
            draft_p_min: self.draft_p_min,
            draft_backend_sampling: self.draft_backend_sampling,
            target_timeout: Duration::from_secs(self.target_timeout_s),
            draft_timeout: Duration::from_secs(self.draft_timeout_s),
            disable_above_tok_s: self.disable_above_tok_s,
            adaptive: self.adaptive,
            prompt_lookup_fallback: self.prompt_lookup_fallback,
            pipeline: self.pipeline,
            native: self.native,
            moe: self.moe,
            target_kind: self.target_kind,
            draft_kind: self.draft_kind,
            verify: self.verify,
        }
    }
}
