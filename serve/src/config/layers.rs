//! The three layers of a proxy's configuration, each over the one before: the file
//! (`tightwad.toml`), then `TIGHTWAD_*` environment variables, then command-line flags.
//!
//! Every key can be set in each layer: `TIGHTWAD_<KEY>` sets a top-level key, and
//! `TIGHTWAD_PAIRING_<KEY>` a key of the single pairing (with no file, the environment alone can
//! describe it); `TIGHTWAD_PAIRINGS` replaces the whole list (a TOML array of inline tables).
//! Each layer is checked on its own, so an error names where the bad value came from: the file
//! and line, or the variable.
//!
//! Flags and the per-pairing variables act on one pairing: the file's only one (or a new one when
//! it has none). With several pairings a per-pairing flag is refused with a message that says so,
//! instead of silently changing the first one: per-pairing settings of a multi-pairing proxy live
//! in the file.

use std::net::SocketAddr;
use std::path::Path;

use super::{ConfigError, PairingEntry, ProxyConfig};
use crate::engine::VerifyMode;

/// A configuration as loaded, with what the operator should hear about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: ProxyConfig,
    /// Old spellings, settings that cannot act, an open listener: each a sentence saying what
    /// to change. The binary logs them at startup (and on reload).
    pub warnings: Vec<String>,
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
    "pairings",
];

/// Keys of the single pairing (`TIGHTWAD_PAIRING_` + the key in capitals).
const ENV_PAIRING_KEYS: &[&str] = &[
    "name",
    "aliases",
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
    "verify",
];

impl ProxyConfig {
    /// The file alone (no environment, no flags), as the fleet commands read it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::load_layered(Some(path), std::iter::empty())?.config)
    }

    /// `path` with the environment `vars` over it (see the module doc). Not validated: flags may
    /// still complete it; call [`ProxyConfig::validate`] last.
    pub fn load_with_env(
        path: &Path,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Ok(Self::load_layered(Some(path), vars)?.config)
    }

    /// The file (if any), then the environment; with the warnings about the file's spellings.
    pub fn load_layered(
        path: Option<&Path>,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut warnings = Vec::new();
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                warnings.extend(super::spellings::old_spellings(path, &text));
                // Parsed from its own text, so an error carries the line.
                let mut config: ProxyConfig =
                    toml::from_str(&text).map_err(|e| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                config.source = Some(path.to_path_buf());
                config
            }
            None => ProxyConfig::default(),
        };
        let (overrides, unknown) = env_overrides(vars);
        warnings.extend(unknown.into_iter().map(|v| {
            format!(
                "{v} is not a pairing key and is ignored; the keys are {}",
                ENV_PAIRING_KEYS.join(", ")
            )
        }));
        if !overrides.is_empty() {
            config = overlay_env(config, &overrides)?;
        }
        Ok(Loaded { config, warnings })
    }
}

/// One `TIGHTWAD_*` variable that names a config key.
struct EnvOverride {
    variable: String,
    /// `TIGHTWAD_PAIRING_*`: a key of the single pairing, not a top-level one.
    in_pairing: bool,
    key: String,
    value: toml::Value,
}

/// The variables that name config keys, and the `TIGHTWAD_PAIRING_*` ones that name none (a
/// typo would otherwise be silently ignored).
fn env_overrides(vars: impl Iterator<Item = (String, String)>) -> (Vec<EnvOverride>, Vec<String>) {
    let mut unknown = Vec::new();
    let mut found: Vec<EnvOverride> = vars
        .filter_map(|(variable, raw)| {
            let key = variable.strip_prefix("TIGHTWAD_")?.to_ascii_lowercase();
            let (in_pairing, key) = match key.strip_prefix("pairing_") {
                Some(k) if ENV_PAIRING_KEYS.contains(&k) => (true, k.to_string()),
                Some(_) => {
                    unknown.push(variable);
                    return None;
                }
                None if ENV_KEYS.contains(&key.as_str()) => (false, key),
                None => return None,
            };
            Some(EnvOverride {
                variable,
                in_pairing,
                key,
                value: env_value(&raw),
            })
        })
        .collect();
    found.sort_by(|a, b| a.variable.cmp(&b.variable));
    unknown.sort();
    (found, unknown)
}

/// A TOML literal (`8`, `true`, `["a"]`, `[{target = "http://a:1"}]`), else the plain string.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// The environment over an already-checked file: the typed file goes back to TOML values, each
/// variable replaces its key, and the result is read again. An error names the variables (the
/// file's own keys were read without error).
fn overlay_env(config: ProxyConfig, overrides: &[EnvOverride]) -> Result<ProxyConfig, ConfigError> {
    let source = config.source.clone();
    let mut table =
        toml::Table::try_from(&config).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    for o in overrides.iter().filter(|o| !o.in_pairing) {
        table.insert(o.key.clone(), o.value.clone());
    }
    let pairing_vars: Vec<&EnvOverride> = overrides.iter().filter(|o| o.in_pairing).collect();
    if !pairing_vars.is_empty() {
        let list = table
            .entry("pairings")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let toml::Value::Array(list) = list else {
            return Err(ConfigError::Invalid("pairings must be a list".into()));
        };
        if list.len() > 1 {
            return Err(ConfigError::Invalid(format!(
                "{} set{} one pairing's key, but the config has {} pairings: set it in that pairing's [[pairings]] table instead",
                join_names(pairing_vars.iter().map(|o| o.variable.as_str())),
                if pairing_vars.len() == 1 { "s" } else { "" },
                list.len()
            )));
        }
        if list.is_empty() {
            list.push(toml::Value::Table(toml::Table::new()));
        }
        if let Some(toml::Value::Table(only)) = list.first_mut() {
            for o in &pairing_vars {
                only.insert(o.key.clone(), o.value.clone());
            }
        }
    }
    let mut config: ProxyConfig =
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: join_names(overrides.iter().map(|o| o.variable.as_str())),
                message: e.to_string(),
            })?;
    config.source = source;
    Ok(config)
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// The command line's settings (`tightwad proxy --target … --draft …`), the last layer.
/// `None`/`false`: the flag was not given, the layers below decide.
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub listen: Option<SocketAddr>,
    /// Added to the keys of the layers below.
    pub api_key: Option<String>,
    pub target: Option<String>,
    pub draft: Option<String>,
    pub model: Option<String>,
    pub draft_tokens: Option<usize>,
    pub disable_above_tok_s: Option<f64>,
    pub prompt_lookup_fallback: bool,
    pub native: bool,
    pub no_adaptive: bool,
    pub verify: Option<VerifyMode>,
}

impl FlagOverrides {
    /// The flags given that set one pairing's fields, as the user typed them.
    fn pairing_flags(&self) -> Vec<&'static str> {
        [
            (self.target.is_some(), "--target"),
            (self.draft.is_some(), "--draft"),
            (self.model.is_some(), "--model"),
            (self.draft_tokens.is_some(), "--draft-tokens"),
            (self.disable_above_tok_s.is_some(), "--disable-above-tok-s"),
            (self.prompt_lookup_fallback, "--prompt-lookup-fallback"),
            (self.native, "--native"),
            (self.no_adaptive, "--no-adaptive"),
            (self.verify.is_some(), "--verify"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect()
    }

    /// Put the flags over `config`. Pairing flags change only the fields they name on the
    /// single pairing (`--target` keeps the file's draft; `--draft` sets the file's pairing's
    /// draft); with no pairing, `--target` makes one; with several, they are refused.
    pub fn apply(&self, config: &mut ProxyConfig) -> Result<(), ConfigError> {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(key) = &self.api_key {
            if !config.api_keys.contains(key) {
                config.api_keys.push(key.clone());
            }
        }
        let flags = self.pairing_flags();
        if flags.is_empty() {
            return Ok(());
        }
        let entry = match config.pairings.len() {
            0 => match &self.target {
                Some(target) => {
                    config.pairings.push(PairingEntry::new(target.clone(), None));
                    &mut config.pairings[0]
                }
                None => {
                    return Err(ConfigError::Invalid(format!(
                        "{} needs a target: pass --target URL (or add a [[pairings]] table to the config file)",
                        flags.join(", ")
                    )))
                }
            },
            1 => &mut config.pairings[0],
            n => {
                let names: Vec<String> = config
                    .pairings
                    .iter()
                    .enumerate()
                    .map(|(i, p)| p.to_pairing_config(i).name)
                    .collect();
                let file = config
                    .source
                    .as_deref()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "the config".into());
                return Err(ConfigError::Invalid(format!(
                    "{} set{} one pairing, but {file} has {n} ({}): change that pairing's [[pairings]] table in {file} instead, or use a config with one pairing",
                    flags.join(", "),
                    if flags.len() == 1 { "s" } else { "" },
                    names.join(", ")
                )));
            }
        };
        if let Some(target) = &self.target {
            entry.target = target.clone();
        }
        if let Some(draft) = &self.draft {
            entry.draft = Some(draft.clone());
        }
        if let Some(name) = &self.model {
            entry.name = Some(name.clone());
        }
        if let Some(k) = self.draft_tokens {
            entry.draft_tokens = k;
        }
        if let Some(limit) = self.disable_above_tok_s {
            entry.disable_above_tok_s = Some(limit);
        }
        if self.prompt_lookup_fallback {
            entry.prompt_lookup_fallback = true;
        }
        if self.native {
            entry.native = true;
        }
        if self.no_adaptive {
            entry.adaptive = false;
        }
        if let Some(v) = self.verify {
            entry.verify = v;
        }
        Ok(())
    }
}

impl ProxyConfig {
    /// All three layers, checked: what `tightwad proxy` (and its reload) serves.
    pub fn resolve(
        file: Option<&Path>,
        vars: impl Iterator<Item = (String, String)>,
        flags: &FlagOverrides,
    ) -> Result<Loaded, ConfigError> {
        let mut loaded = Self::load_layered(file, vars)?;
        flags.apply(&mut loaded.config)?;
        loaded.config.validate()?;
        loaded.warnings.extend(loaded.config.advice());
        Ok(loaded)
    }
}
