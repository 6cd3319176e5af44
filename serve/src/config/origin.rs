//! Where a value that does not fit came from, for the error message: the file and the line of the
//! key, the `TIGHTWAD_*` variable, or the command-line flag.
//!
//! figment tags every value with the layer (provider) that gave it, so a failed extraction says
//! which layer the bad value came from and its key path (`pairings.0.draft_tokens`), but it keeps
//! no positions inside a file: its TOML provider reads the file into plain values. The line is
//! found here instead, by walking the same key path through the file parsed once more with its
//! spans (`toml::de::DeTable`, the parser `toml::from_str` itself uses). That is what lets an
//! environment variable or a flag override one key while a mistake in another key of the file
//! is still reported at its line.

use std::path::Path;

use figment::providers::Env;
use figment::value::{Tag, Value};
use figment::{Figment, Metadata, Provider, Source};
use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// Prefix of the variables that set top-level keys.
pub(super) const ENV_PREFIX: &str = "TIGHTWAD_";
/// Prefix of the variables that set a key of the single pairing.
pub(super) const ENV_PAIRING_PREFIX: &str = "TIGHTWAD_PAIRING_";
/// The name of the flags' layer (figment metadata), to tell its values apart in errors.
pub(super) const FLAGS: &str = "command-line flags";
/// Keys and the flags that set them (the pairing's keys and the top-level ones).
const FLAG_KEYS: &[(&str, &str)] = &[
    ("listen", "--listen"),
    ("api_keys", "--api-key"),
    ("target", "--target"),
    ("draft", "--draft"),
    ("name", "--model"),
    ("draft_tokens", "--draft-tokens"),
    ("draft_p_min", "--draft-p-min"),
    ("draft_backend_sampling", "--draft-backend-sampling"),
    ("disable_above_tok_s", "--disable-above-tok-s"),
    ("prompt_lookup_fallback", "--prompt-lookup-fallback"),
    ("native", "--native"),
    ("adaptive", "--no-adaptive"),
    ("verify", "--verify"),
];

/// The flag that sets `key`, if one does.
fn flag_for(key: &str) -> Option<&'static str> {
    FLAG_KEYS.iter().find(|(k, _)| *k == key).map(|(_, f)| *f)
}

/// The file the first layer was read from, with its text (for the lines).
#[derive(Clone, Copy)]
pub(super) struct FileText<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

/// Which layer a value came from.
enum Layer {
    File,
    /// `TIGHTWAD_<KEY>`: a top-level key.
    Env,
    /// `TIGHTWAD_PAIRING_<KEY>`: a key of the single pairing.
    PairingEnv,
    Flag,
    Unknown,
}

fn layer_of(metadata: Option<&Metadata>) -> Layer {
    let Some(md) = metadata else {
        return Layer::Unknown;
    };
    if matches!(md.source, Some(Source::File(_))) {
        Layer::File
    } else if md.name == Env::prefixed(ENV_PAIRING_PREFIX).metadata().name {
        Layer::PairingEnv
    } else if md.name == Env::prefixed(ENV_PREFIX).metadata().name {
        Layer::Env
    } else if md.name == FLAGS {
        Layer::Flag
    } else {
        Layer::Unknown
    }
}

/// `pairings[0].draft_tokens` for `["pairings", "0", "draft_tokens"]`.
fn key_text(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// The variable or flag that set the key at `path` (a top-level key, or a key of a pairing),
/// or `None` for the file's keys.
fn setting_name(layer: &Layer, path: &[String]) -> Option<String> {
    let top = path.first().map(String::as_str).unwrap_or_default();
    // A key of the single pairing: `pairings`, its index, the key.
    let in_pairing = path.get(2).map(String::as_str).unwrap_or(top);
    match layer {
        Layer::Env => Some(format!("{ENV_PREFIX}{}", top.to_ascii_uppercase())),
        Layer::PairingEnv => Some(format!(
            "{ENV_PAIRING_PREFIX}{}",
            in_pairing.to_ascii_uppercase()
        )),
        Layer::Flag => Some(
            flag_for(if top == "pairings" { in_pairing } else { top })
                .unwrap_or("a command-line flag")
                .to_string(),
        ),
        Layer::File | Layer::Unknown => None,
    }
}

/// The variable or flag that set the single pairing's `key` (the value tagged `tag`), for the
/// messages that refuse or complete the single-pairing layer.
pub(super) fn pairing_setting(figment: &Figment, tag: Tag, key: &str) -> String {
    let layer = layer_of(figment.get_metadata(tag));
    let path = ["pairings".to_string(), "0".to_string(), key.to_string()];
    setting_name(&layer, &path).unwrap_or_else(|| key.to_string())
}

/// Where the value tagged `tag` came from, in words: the file, or the variable that set `key`.
pub(super) fn place(figment: &Figment, tag: Tag, key: &str, file: Option<FileText>) -> String {
    match layer_of(figment.get_metadata(tag)) {
        Layer::File => file.map_or_else(
            || "the config file".to_string(),
            |f| f.path.display().to_string(),
        ),
        layer => setting_name(&layer, &[key.to_string()]).unwrap_or_else(|| "the config".into()),
    }
}

/// Where the value at `path` from `layer` was set, in words: `FILE, line N`, the variable or
/// the flag.
fn where_set(layer: &Layer, path: &[String], file: Option<FileText>) -> Option<String> {
    match (layer, file) {
        (Layer::File, Some(file)) => Some(match line_of(file.text, path) {
            Some(line) => format!("{}, line {line}", file.path.display()),
            None => file.path.display().to_string(),
        }),
        _ => setting_name(layer, path),
    }
}

/// A failed read or extraction, as the operator should read it: `FILE, line N: KEY: what`,
/// `TIGHTWAD_VAR: KEY: what` or `--flag: KEY: what`.
pub(super) fn describe(error: figment::Error, file: Option<FileText>) -> ConfigError {
    let layer = layer_of(error.metadata.as_ref());
    let message = match &error.kind {
        // The old spellings are hidden aliases: not offered as what to write.
        figment::error::Kind::UnknownField(name, expected) => format!(
            "unknown key `{name}`; the keys here are {}",
            expected
                .iter()
                .filter(|k| !super::spellings::is_old_key(k))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ),
        kind => kind.to_string(),
    };
    let key = key_text(&error.path);
    ConfigError::Parse {
        origin: where_set(&layer, &error.path, file).unwrap_or_else(|| "the configuration".into()),
        message: if key.is_empty() {
            message
        } else {
            format!("{key}: {message}")
        },
    }
}

/// A value that cannot run ([`ConfigError::Key`], from the checks), named where it was set: the
/// file and line, the variable or the flag, found from the tag figment kept on the value.
pub(super) fn locate(error: ConfigError, figment: &Figment, file: Option<FileText>) -> ConfigError {
    let ConfigError::Key { key, message } = error else {
        return error;
    };
    let path: Vec<String> = key.split('.').map(str::to_string).collect();
    let value = path.split_first().and_then(|(top, rest)| {
        let mut value = figment.find_value(top).ok()?;
        for part in rest {
            value = match value {
                Value::Dict(_, mut d) => d.remove(part)?,
                Value::Array(_, mut a) => {
                    let i = part.parse::<usize>().ok()?;
                    (i < a.len()).then(|| a.swap_remove(i))?
                }
                _ => return None,
            };
        }
        Some(value)
    });
    let Some(value) = value else {
        return ConfigError::Key { key, message };
    };
    let layer = layer_of(figment.get_metadata(value.tag()));
    let Some(origin) = where_set(&layer, &path, file) else {
        return ConfigError::Key { key, message };
    };
    ConfigError::Parse { origin, message }
}

/// The line (from 1) of the key at `path` in the TOML `text`: of the key itself where the path
/// ends at a key, of the array element (a `[[pairings]]` header) where it ends at an index.
pub(super) fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable = root.get_ref();
    let mut value: Option<&DeValue> = None;
    let mut at = root.span().start;
    for part in path {
        match value {
            None => {
                let (k, v) = table.iter().find(|(k, _)| k.get_ref() == part)?;
                at = k.span().start;
                value = Some(v.get_ref());
            }
            Some(DeValue::Table(t)) => {
                table = t;
                let (k, v) = table.iter().find(|(k, _)| k.get_ref() == part)?;
                at = k.span().start;
                value = Some(v.get_ref());
            }
            Some(DeValue::Array(items)) => {
                let item = items.get(part.parse::<usize>().ok()?)?;
                at = item.span().start;
                value = Some(item.get_ref());
            }
            Some(_) => return None,
        }
    }
    Some(text.get(..at)?.matches('\n').count() + 1)
}
