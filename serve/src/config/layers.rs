//! The three layers of a proxy's configuration, each over the one before: the file
//! (`tightwad.toml`), then `TIGHTWAD_*` environment variables, then command-line flags.
//!
//! The layering is figment's (a well-kept crate for exactly this, rather than our own merge):
//! its file provider reads the file (with the workspace's TOML parser, [`Toml11`]), its `Env`
//! provider the variables, and the flags are a provider of their own ([`FlagOverrides`]). Every value keeps the layer it came from, so an
//! error names the file and line ([`super::origin`] finds the line), the variable or the flag.
//!
//! Every key can be set in each layer: `TIGHTWAD_<KEY>` sets a top-level key, and
//! `TIGHTWAD_PAIRING_<KEY>` a key of the single pairing (with no file, the environment alone can
//! describe it); `TIGHTWAD_PAIRINGS` replaces the whole list (a list of inline tables). The keys
//! are the ones the JSON Schema lists, so a new key is settable everywhere at once. Values are
//! read as figment reads environment variables: `8`, `true`, `["a", "b"]`, `{target = "…"}`, else
//! the plain string.
//!
//! Flags and the per-pairing variables act on one pairing: the single pairing of the layers
//! below (or a new one when there is none), changing only the fields they name. With several
//! pairings they are refused with a message that says so, instead of silently changing the first
//! one: per-pairing settings of a multi-pairing proxy live in the file. figment merges lists
//! whole, so this one step is ours ([`one_pairing`]): while the layers are merged, the
//! single-pairing layer waits in a profile of its own, then its values move into the pairing,
//! keeping their figment tags and so their origin.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::origin::{self, FileText, ENV_PAIRING_PREFIX, ENV_PREFIX, FLAGS};
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

/// figment's TOML format through the workspace's `toml` (TOML 1.1): the parser every other
/// command reads this same file with (the fleet commands, `init`). figment's own `Toml` provider
/// is an older toml (TOML 1.0) that would refuse files they accept, and a second TOML parser.
struct Toml11;

impl Format for Toml11 {
    type Error = toml::de::Error;
    const NAME: &'static str = "TOML";

    fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        toml::from_str(text)
    }
}

/// The figment profile the single-pairing layer is gathered in until [`one_pairing`] moves it
/// into the pairing; the default profile (the one extracted) never sees it.
const ONE_PAIRING: &str = "tightwad-one-pairing";

/// The properties of a JSON Schema: the keys a file may hold.
fn keys_of(schema: schemars::Schema) -> Vec<String> {
    schema
        .as_object()
        .and_then(|o| o.get("properties"))
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Top-level keys (`TIGHTWAD_` + the key in capitals).
pub(super) fn top_keys() -> Vec<String> {
    keys_of(schemars::schema_for!(ProxyConfig))
}

/// Keys of a pairing (`TIGHTWAD_PAIRING_` + the key in capitals).
pub(super) fn pairing_keys() -> Vec<String> {
    keys_of(schemars::schema_for!(PairingEntry))
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
    pub draft_p_min: Option<f64>,
    pub draft_backend_sampling: bool,
    pub disable_above_tok_s: Option<f64>,
    pub prompt_lookup_fallback: bool,
    pub native: bool,
    pub no_adaptive: bool,
    pub verify: Option<VerifyMode>,
}

/// The flags as a figment layer: `--listen` over the top-level key; the pairing flags in the
/// single-pairing profile, each only where given. `--api-key` adds to the list (see
/// [`Layers::figment`]), so it is not here.
impl Provider for FlagOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAGS)
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut top = Dict::new();
        if let Some(listen) = self.listen {
            top.insert("listen".into(), Value::from(listen.to_string()));
        }
        let mut pairing = Dict::new();
        let mut set = |key: &str, value: Value| {
            pairing.insert(key.to_string(), value);
        };
        if let Some(target) = &self.target {
            set("target", Value::from(target.clone()));
        }
        if let Some(draft) = &self.draft {
            set("draft", Value::from(draft.clone()));
        }
        if let Some(name) = &self.model {
            set("name", Value::from(name.clone()));
        }
        if let Some(k) = self.draft_tokens {
            set("draft_tokens", Value::serialize(k)?);
        }
        if let Some(p) = self.draft_p_min {
            set("draft_p_min", Value::serialize(p)?);
        }
        if self.draft_backend_sampling {
            set("draft_backend_sampling", Value::from(true));
        }
        if let Some(limit) = self.disable_above_tok_s {
            set("disable_above_tok_s", Value::serialize(limit)?);
        }
        if self.prompt_lookup_fallback {
            set("prompt_lookup_fallback", Value::from(true));
        }
        if self.native {
            set("native", Value::from(true));
        }
        if self.no_adaptive {
            set("adaptive", Value::from(false));
        }
        if let Some(verify) = self.verify {
            set("verify", Value::serialize(verify)?);
        }
        let mut out = Map::new();
        out.insert(Profile::Default, top);
        out.insert(Profile::new(ONE_PAIRING), pairing);
        Ok(out)
    }
}

/// The single pairing, completed by [`one_pairing`], as the last layer.
struct OnePairing(Value);

impl Provider for OnePairing {
    fn metadata(&self) -> Metadata {
        Metadata::named("the single pairing's variables and flags")
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut top = Dict::new();
        top.insert("pairings".into(), self.0.clone());
        let mut out = Map::new();
        out.insert(Profile::Default, top);
        Ok(out)
    }
}

/// Which layers to read.
pub(super) struct Layers<'a> {
    pub file: Option<&'a Path>,
    /// The process's `TIGHTWAD_*` variables.
    pub env: bool,
    pub flags: Option<&'a FlagOverrides>,
}

impl Layers<'_> {
    /// Read and merge the layers; not validated (see [`ProxyConfig::resolve`]).
    pub(super) fn read(&self) -> Result<Loaded, ConfigError> {
        Ok(self.read_keeping_origins()?.0)
    }

    /// [`Layers::read`], with the merged figment and the file's text: where each value came
    /// from, for the errors of the checks that follow.
    fn read_keeping_origins(&self) -> Result<(Loaded, Figment, Option<String>), ConfigError> {
        let mut warnings = Vec::new();
        let text = match self.file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                warnings.extend(super::spellings::old_spellings(path, &text));
                Some(text)
            }
            None => None,
        };
        let file = self
            .file
            .zip(text.as_deref())
            .map(|(path, text)| FileText { path, text });
        if self.env {
            refuse_values_figment_misreads()?;
            warnings.extend(unknown_pairing_variables());
        }
        let figment = one_pairing(self.figment(), file)?;
        let mut config: ProxyConfig = figment.extract().map_err(|e| origin::describe(e, file))?;
        config.source = self.file.map(Path::to_path_buf);
        let mut seen = std::collections::HashSet::new();
        config.api_keys.retain(|k| seen.insert(k.clone()));
        Ok((Loaded { config, warnings }, figment, text))
    }

    /// The layers merged, the single-pairing layer still in its own profile.
    fn figment(&self) -> Figment {
        let mut figment = Figment::new();
        if let Some(path) = self.file {
            figment = figment.merge(Toml11::file_exact(path));
        }
        if self.env {
            let (top, pairing) = (top_keys(), pairing_keys());
            let top: Vec<&str> = top.iter().map(String::as_str).collect();
            let pairing: Vec<&str> = pairing.iter().map(String::as_str).collect();
            figment = figment.merge(Env::prefixed(ENV_PREFIX).only(&top)).merge(
                Env::prefixed(ENV_PAIRING_PREFIX)
                    .only(&pairing)
                    .profile(ONE_PAIRING),
            );
        }
        if let Some(flags) = self.flags {
            figment = figment.merge(flags);
            if let Some(key) = &flags.api_key {
                figment = figment.admerge(Serialized::default("api_keys", [key]));
            }
        }
        figment
    }
}

/// Refuse a variable whose value figment 0.10 would misread: inside a quoted string it finds
/// the first backslash by CHARACTER index and then slices the text at that index as BYTES, so a
/// non-ASCII character before a backslash (`"é\n"`) either panics (found by the
/// `toml_configs` fuzz target) or silently loses characters. Both are worse than a refusal that
/// says how to write the value: the same characters as `\uXXXX` escapes, which figment reads
/// correctly. Unquoted values are taken verbatim by figment and pass.
fn refuse_values_figment_misreads() -> Result<(), ConfigError> {
    let (top, pairing) = (top_keys(), pairing_keys());
    let top: Vec<&str> = top.iter().map(String::as_str).collect();
    let pairing: Vec<&str> = pairing.iter().map(String::as_str).collect();
    let (top_env, pairing_env) = (
        Env::prefixed(ENV_PREFIX).only(&top),
        Env::prefixed(ENV_PAIRING_PREFIX).only(&pairing),
    );
    let read = top_env
        .iter()
        .map(|(key, value)| (ENV_PREFIX, key, value))
        .chain(
            pairing_env
                .iter()
                .map(|(key, value)| (ENV_PAIRING_PREFIX, key, value)),
        );
    for (prefix, key, value) in read {
        if figment_misreads(&value) {
            return Err(ConfigError::Parse {
                origin: format!("{prefix}{}", key.as_str().to_ascii_uppercase()),
                message: "a backslash escape after a non-ASCII character in a quoted value \
                          cannot be read here; write the non-ASCII characters as \\uXXXX \
                          escapes (\"\\u00e9\" for \"é\") or leave the value unquoted"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Whether figment's string unescaping would mangle `value` (see
/// [`refuse_values_figment_misreads`]): a quote somewhere (only quoted text is unescaped) and a
/// non-ASCII character before the LAST backslash — each quoted string of a list is unescaped on
/// its own, so any of their first backslashes may be the one.
fn figment_misreads(value: &str) -> bool {
    let Some(backslash) = value.rfind('\\') else {
        return false;
    };
    value.contains('"') && !value[..backslash].is_ascii()
}

/// `TIGHTWAD_PAIRING_*` variables that name no pairing key: a typo would otherwise be ignored
/// without a word.
fn unknown_pairing_variables() -> Vec<String> {
    let keys = pairing_keys();
    let mut unknown: Vec<String> = Env::prefixed(ENV_PAIRING_PREFIX)
        .iter()
        .filter(|(key, _)| !keys.iter().any(|k| k.as_str() == key.as_str()))
        .map(|(key, _)| format!("{ENV_PAIRING_PREFIX}{}", key.as_str().to_ascii_uppercase()))
        .collect();
    unknown.sort();
    unknown
        .into_iter()
        .map(|v| {
            format!(
                "{v} is not a pairing key and is ignored; the keys are {}",
                keys.join(", ")
            )
        })
        .collect()
}

/// Move the single-pairing layer (its profile) into the one pairing of the layers below: over
/// its fields, or as a new pairing when there is none; refused with several.
fn one_pairing(figment: Figment, file: Option<FileText>) -> Result<Figment, ConfigError> {
    // A layer that could not be read: the extraction reports it, with its origin.
    let Ok(data) = figment.data() else {
        return Ok(figment);
    };
    let Some(overlay) = data
        .get(&Profile::new(ONE_PAIRING))
        .filter(|d| !d.is_empty())
    else {
        return Ok(figment);
    };
    let settings: Vec<String> = overlay
        .iter()
        .map(|(key, value)| origin::pairing_setting(&figment, value.tag(), key))
        .collect();
    let (tag, mut list) = match figment.find_value("pairings") {
        Ok(Value::Array(tag, list)) => (tag, list),
        // Not a list: the extraction says so, with its line.
        Ok(_) => return Ok(figment),
        Err(_) => (Tag::Default, Vec::new()),
    };
    match list.as_mut_slice() {
        [] => {
            if !overlay.contains_key("target") {
                return Err(ConfigError::Invalid(format!(
                    "{} need{} a target: pass --target URL or set {ENV_PAIRING_PREFIX}TARGET (or add a [[pairings]] table to the config file)",
                    settings.join(", "),
                    if settings.len() == 1 { "s" } else { "" }
                )));
            }
            list.push(Value::Dict(Tag::Default, overlay.clone()));
        }
        [Value::Dict(_, only)] => only.extend(overlay.clone()),
        // Not a table: the extraction says so, with its line.
        [_] => return Ok(figment),
        several => {
            let names: Vec<String> = several
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let name = p.as_dict().and_then(|d| d.get("name")?.as_str());
                    match (name, i) {
                        (Some(name), _) => name.to_string(),
                        (None, 0) => "tightwad".to_string(),
                        (None, i) => format!("tightwad-{i}"),
                    }
                })
                .collect();
            let place = origin::place(&figment, tag, "pairings", file);
            return Err(ConfigError::Invalid(format!(
                "{} set{} one pairing's field, but {place} has {} pairings ({}): change that pairing's [[pairings]] table in {place} instead, or use a config with one pairing",
                settings.join(", "),
                if settings.len() == 1 { "s" } else { "" },
                several.len(),
                names.join(", ")
            )));
        }
    }
    Ok(figment.merge(OnePairing(Value::Array(tag, list))))
}

impl ProxyConfig {
    /// The file alone (no environment, no flags), as the fleet commands read it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let layers = Layers {
            file: Some(path),
            env: false,
            flags: None,
        };
        Ok(layers.read()?.config)
    }

    /// `path` with the process's `TIGHTWAD_*` variables over it (see the module doc). Not
    /// validated: flags may still complete it; call [`ProxyConfig::validate`] last.
    pub fn load_with_env(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::load_layered(Some(path))?.config)
    }

    /// The file (if any), then the environment; with the warnings about the file's spellings
    /// and the pairing variables that name no key.
    pub fn load_layered(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        Layers {
            file: path,
            env: true,
            flags: None,
        }
        .read()
    }

    /// All three layers, checked: what `tightwad proxy` (and its reload) serves.
    /// A value that cannot run is named where it was set, like a value of the wrong type.
    pub fn resolve(file: Option<&Path>, flags: &FlagOverrides) -> Result<Loaded, ConfigError> {
        let (mut loaded, figment, text) = Layers {
            file,
            env: true,
            flags: Some(flags),
        }
        .read_keeping_origins()?;
        let file = file
            .zip(text.as_deref())
            .map(|(path, text)| FileText { path, text });
        loaded
            .config
            .validate()
            .map_err(|e| origin::locate(e, &figment, file))?;
        loaded.warnings.extend(loaded.config.advice());
        Ok(loaded)
    }
}
