//! How a proxy is described: a TOML file, command-line flags over it.
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
//! target = "http://10.0.0.2:8080"    # llama-server with -np >= draft_tokens + 1
//! draft = "http://10.0.0.3:8080"     # optional: no draft = target-only; "prompt-lookup" = no model
//! drafts = ["http://10.0.0.4:8080"]  # optional: more draft servers; the best measured one drafts
//! prompt_lookup_fallback = false     # draft from the context while the draft server is down
//! draft_tokens = 4                  # the largest k the controller may use
//! disable_above_tok_s = 40           # optional: never speculate on a target faster than this
//! adaptive = true                    # false: speculate every round with draft_tokens
//! pipeline = true                    # draft the next block while the target verifies
//! native = false                     # true: the target runs llama.cpp's own speculation (with
//!                                    # `draft` too: the faster of the two paths, measured)
//! moe = false                        # true: a mixture-of-experts target (k <= 4 until measured cheap)
//! target_kind = "llamacpp"           # or "vllm" (`vllm serve`); the draft likewise:
//! draft_kind = "llamacpp"
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::backend::BackendKind;
use crate::engine::{PairingConfig, VerifyMode};

#[derive(Debug, Error)]
pub enum ConfigError {
    // The cause is the source, printed once by whoever walks the chain (`{e:#}`).
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
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
fn default_draft_tokens() -> usize {
    4
}
fn default_target_timeout() -> u64 {
    300
}
fn default_draft_timeout() -> u64 {
    10
}

/// The proxy's whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default = "default_listen")]
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
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_s: u64,
    /// A request's body must have arrived within this many seconds; else 408. No concurrency
    /// place is taken before the body is in.
    #[serde(default = "default_body_read_timeout")]
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
    pub hosts: Vec<toml::Value>,
    /// Fleet layout read by `tightwad up`/`doctor` (see `fleet::layout`): processes per host,
    /// RPC pools, native pairings. Opaque here; the proxy itself does not use them.
    #[serde(default)]
    pub processes: Vec<toml::Value>,
    #[serde(default)]
    pub pools: Vec<toml::Value>,
    #[serde(default)]
    pub native_pairings: Vec<toml::Value>,
    /// The coordinator's own identity folder for the peer protocol.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// The file this was read from (the dashboard asks the hosts listed there).
    #[serde(skip)]
    pub source: Option<std::path::PathBuf>,
    #[serde(default)]
    pub pairings: Vec<PairingEntry>,
}

/// One `[[pairings]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingEntry {
    pub name: Option<String>,
    pub target: String,
    pub draft: Option<String>,
    /// More draft servers for this target (after `draft`): each request goes to the drafter whose
    /// measured acceptance × speed delivers most; one that fails hands over to the next.
    #[serde(default)]
    pub drafts: Vec<String>,
    #[serde(default = "default_draft_tokens")]
    pub draft_tokens: usize,
    #[serde(default = "default_target_timeout")]
    pub target_timeout_s: u64,
    #[serde(default = "default_draft_timeout")]
    pub draft_timeout_s: u64,
    /// Serve target-only whenever the target alone is faster than this many tokens/s.
    #[serde(default)]
    pub disable_above_tok_s: Option<f64>,
    /// Draft from the context itself (prompt lookup) while the draft server is down.
    #[serde(default)]
    pub prompt_lookup_fallback: bool,
    /// Draft the next block while the target verifies the current one.
    #[serde(default = "default_pipeline")]
    pub pipeline: bool,
    /// The target speculates by itself (llama.cpp `-md` with the draft on a remote rpc-server);
    /// the proxy steers `speculative.n_max` per request. With a `draft` URL as well, the pairing
    /// has two paths and each request takes the one that has been delivering more tokens/s.
    #[serde(default)]
    pub native: bool,
    /// The target is a mixture-of-experts model (`tightwad init` sets it from the GGUF's expert
    /// count): k stays at 4 or less unless verification is measured to cost nearly the same for
    /// 8 tokens as for 1.
    #[serde(default)]
    pub moe: bool,
    /// `false` pins speculation on with `draft_tokens` every round (for experiments and tests).
    #[serde(default = "default_adaptive")]
    pub adaptive: bool,
    /// The target's server software: `llamacpp` (default) or `vllm`.
    #[serde(default)]
    pub target_kind: BackendKind,
    /// The draft's server software: `llamacpp` (default) or `vllm`.
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

fn default_pipeline() -> bool {
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
            target,
            draft,
            drafts: Vec::new(),
            draft_tokens: default_draft_tokens(),
            target_timeout_s: default_target_timeout(),
            draft_timeout_s: default_draft_timeout(),
            disable_above_tok_s: None,
            prompt_lookup_fallback: false,
            adaptive: true,
            pipeline: true,
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
            target_url: self.target.clone(),
            draft_url: self.draft.clone(),
            drafts: self.drafts.clone(),
            draft_tokens: self.draft_tokens,
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

impl ProxyConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Read `path` (unknown keys and bad values are errors naming the key, file and line), then
    /// let `TIGHTWAD_<KEY>` variables override top-level keys and `TIGHTWAD_PAIRING_<KEY>` the
    /// first pairing's keys. Values are TOML literals (`8`, `true`, `["a"]`) or plain strings.
    pub fn load_with_env(
        path: &Path,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let shown = path.display().to_string();
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let overridden = apply_env(&mut table, vars);
        // Re-parse through the typed schema; keep line numbers when nothing was overridden.
        let parsed = if overridden.is_empty() {
            toml::from_str::<ProxyConfig>(&text)
        } else {
            toml::Value::Table(table).try_into::<ProxyConfig>()
        };
        let mut config = parsed.map_err(|e| ConfigError::Parse {
            path: if overridden.is_empty() {
                shown.clone()
            } else {
                format!("{shown} (with {})", overridden.join(", "))
            },
            message: e.to_string(),
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            (
                "max_connections_per_client",
                self.max_connections_per_client as u64,
            ),
            ("header_read_timeout_s", self.header_read_timeout_s),
            ("body_read_timeout_s", self.body_read_timeout_s),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if self.pairings.is_empty() {
            return Err(ConfigError::Invalid(
                "no target configured: pass --target URL or add a [[pairings]] table".into(),
            ));
        }
        for (i, p) in self.pairings.iter().enumerate() {
            let draft_url = p
                .draft
                .as_ref()
                .filter(|d| d.as_str() != crate::engine::PROMPT_LOOKUP);
            let listed = p.drafts.iter().map(|u| ("drafts", Some(u)));
            for (what, url) in [("target", Some(&p.target)), ("draft", draft_url)]
                .into_iter()
                .chain(listed)
            {
                if let Some(url) = url {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(ConfigError::Invalid(format!(
                            "pairing {i}: {what} URL {url:?} must start with http:// or https://"
                        )));
                    }
                }
            }
            if p.drafts.iter().any(|d| d == crate::engine::PROMPT_LOOKUP) {
                return Err(ConfigError::Invalid(format!(
                    "pairing {i}: drafts lists draft servers; use draft = \"prompt-lookup\" (or prompt_lookup_fallback = true) for prompt lookup"
                )));
            }
            if p.native && !p.drafts.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "pairing {i}: a native pairing drafts inside the target; remove drafts"
                )));
            }
            if p.native && p.target_kind != BackendKind::Llamacpp {
                return Err(ConfigError::Invalid(format!(
                    "pairing {i}: native = true needs a llama.cpp target (llama.cpp's own speculation); with target_kind = \"{}\" give a draft URL instead",
                    p.target_kind.as_str()
                )));
            }
            let k_max = crate::engine::controller::K_MAX;
            if p.draft_tokens == 0 || p.draft_tokens > k_max {
                return Err(ConfigError::Invalid(format!(
                    "pairing {i}: draft_tokens must be between 1 and {k_max} (the most the controller drafts per round), got {}",
                    p.draft_tokens
                )));
            }
        }
        Ok(())
    }
}

/// Top-level keys an environment variable may set (`TIGHTWAD_` + the key in capitals).
const ENV_KEYS: &[&str] = &[
    "listen",
    "max_body_bytes",
    "api_keys",
    "max_concurrent_requests",
    "max_concurrent_per_client",
    "max_tokens_limit",
    "default_max_tokens",
    "max_connections_per_client",
    "header_read_timeout_s",
    "body_read_timeout_s",
    "remote_control",
    "cors_origins",
    "state_dir",
];
/// First-pairing keys (`TIGHTWAD_PAIRING_` + the key in capitals).
const ENV_PAIRING_KEYS: &[&str] = &[
    "name",
    "target",
    "draft",
    "drafts",
    "draft_tokens",
    "target_timeout_s",
    "draft_timeout_s",
    "disable_above_tok_s",
    "prompt_lookup_fallback",
    "adaptive",
    "pipeline",
    "native",
    "moe",
    "target_kind",
    "draft_kind",
];

fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Overlay the environment on a parsed file; returns the variables used.
fn apply_env(table: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut used = Vec::new();
    for (name, raw) in vars {
        let Some(key) = name.strip_prefix("TIGHTWAD_").map(str::to_ascii_lowercase) else {
            continue;
        };
        if let Some(pkey) = key.strip_prefix("pairing_") {
            if !ENV_PAIRING_KEYS.contains(&pkey) {
                continue;
            }
            let pairings = table
                .entry("pairings")
                .or_insert_with(|| toml::Value::Array(vec![]));
            if let toml::Value::Array(list) = pairings {
                if list.is_empty() {
                    list.push(toml::Value::Table(toml::Table::new()));
                }
                if let Some(toml::Value::Table(first)) = list.first_mut() {
                    first.insert(pkey.to_string(), env_value(&raw));
                    used.push(name.clone());
                }
            }
        } else if ENV_KEYS.contains(&key.as_str()) {
            table.insert(key, env_value(&raw));
            used.push(name);
        }
    }
    used.sort();
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_override_file_keys() {
        let dir = std::env::temp_dir().join(format!("tightwad-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "max_body_bytes = 10
[[pairings]]
target = \"http://a:1\"
",
        )
        .expect("write");
        let vars = vec![
            ("TIGHTWAD_MAX_BODY_BYTES".to_string(), "2048".to_string()),
            (
                "TIGHTWAD_PAIRING_DRAFT".to_string(),
                "http://b:2".to_string(),
            ),
            ("TIGHTWAD_PAIRING_ADAPTIVE".to_string(), "false".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = ProxyConfig::load_with_env(&path, vars.into_iter()).expect("loads");
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.pairings[0].draft.as_deref(), Some("http://b:2"));
        assert!(!c.pairings[0].adaptive);
        let bad = vec![("TIGHTWAD_MAX_BODY_BYTES".to_string(), "lots".to_string())];
        let e = ProxyConfig::load_with_env(&path, bad.into_iter())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TIGHTWAD_MAX_BODY_BYTES") && e.contains("max_body_bytes"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_errors_name_the_key_the_file_and_the_line() {
        let dir = std::env::temp_dir().join(format!("tightwad-line-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n\n[[pairings]]\ntarget = \"http://a:1\"\ndraft_tokns = 3\n",
        )
        .expect("write");
        let e = ProxyConfig::load_with_env(&path, std::iter::empty())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml") && e.contains("draft_tokns") && e.contains("line 5"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn drafts_add_draft_servers_after_draft_and_are_checked() {
        let c: ProxyConfig = toml::from_str(
            "[[pairings]]\ntarget = \"http://a:1\"\ndraft = \"http://b:2\"\ndrafts = [\"http://c:3\"]\n",
        )
        .expect("valid config");
        c.validate().expect("valid");
        let pc = c.pairings[0].to_pairing_config(0);
        assert_eq!(pc.draft_url.as_deref(), Some("http://b:2"));
        assert_eq!(pc.drafts, vec!["http://c:3".to_string()]);
        let bad: ProxyConfig =
            toml::from_str("[[pairings]]\ntarget = \"http://a:1\"\ndrafts = [\"c:3\"]\n")
                .expect("parses");
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("drafts") && e.contains("c:3"), "{e}");
        let e = toml::from_str::<ProxyConfig>(
            "[[pairings]]\ntarget = \"http://a:1\"\ndrafts = \"http://c:3\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("drafts") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let e = toml::from_str::<ProxyConfig>("listen = \"127.0.0.1:1\"\nlisten_port = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn a_full_file_parses_with_defaults() {
        let c: ProxyConfig = toml::from_str(
            "[[pairings]]\nname = \"m\"\ntarget = \"http://a:1\"\ndraft = \"http://b:2\"\n",
        )
        .expect("valid config");
        assert_eq!(c.pairings[0].draft_tokens, 4);
        c.validate().expect("valid");
        let pc = c.pairings[0].to_pairing_config(0);
        assert_eq!(pc.name, "m");
    }
}
