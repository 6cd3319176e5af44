//! agent.toml's layers, each over the one before: the file, then `TIGHTWAD_AGENT_<KEY>`
//! environment variables (every top-level key the JSON Schema lists: `TIGHTWAD_AGENT_LISTEN`,
//! `TIGHTWAD_AGENT_MODEL_DIRS='["/data/models"]'`, …), then the flags (`--state-dir`,
//! `--listen`). The same layers as the proxy's `tightwad.toml`, merged the same way: by figment
//! (a file provider, its `Env` provider, the flags `Serialized`), not by hand.
//!
//! figment keeps no positions inside the file, so the file is first read alone by toml itself,
//! whose errors carry the line; whatever fails after that came from a variable or a flag, and
//! the error names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Format, Serialized};
use figment::{Figment, Provider};

use super::{old_spellings, AgentConfig};

/// Prefix of the variables that set agent.toml's keys. `TIGHTWAD_AGENT_CONFIG` (the file's path)
/// names no key and is not read as one.
pub const ENV_PREFIX: &str = "TIGHTWAD_AGENT_";

/// figment's TOML format through the workspace's `toml` (TOML 1.1), the parser that checked the
/// file just before; figment's own `Toml` is an older toml (TOML 1.0). The proxy's loader has
/// the same few lines (`tightwad_serve::config::layers`; the agent does not depend on it).
struct Toml11;

impl Format for Toml11 {
    type Error = toml::de::Error;
    const NAME: &'static str = "TOML";

    fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        toml::from_str(text)
    }
}

/// The command line's settings, the last layer; `None`: not given, the layers below decide.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AgentFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// The top-level keys of agent.toml (the schema's properties).
fn keys() -> Vec<String> {
    schemars::schema_for!(AgentConfig)
        .as_object()
        .and_then(|o| o.get("properties"))
        .and_then(|p| p.as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The file (if any) and the environment, then `flags`; with the warnings about the file's old
/// spellings. Not yet completed (`~` expanded, processes checked): see
/// [`AgentConfig::load_layered`].
pub(super) fn read(
    path: Option<&Path>,
    flags: &AgentFlags,
) -> anyhow::Result<(AgentConfig, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut figment = Figment::new();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading agent config {}", path.display()))?;
        warnings = old_spellings(path, &text);
        toml::from_str::<AgentConfig>(&text)
            .with_context(|| format!("parsing agent config {}", path.display()))?;
        figment = figment.merge(Toml11::file_exact(path));
    }
    let keys = keys();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    refuse_values_figment_misreads(&keys)?;
    figment = figment
        .merge(Env::prefixed(ENV_PREFIX).only(&keys))
        .merge(Serialized::defaults(flags));
    let config = figment.extract().map_err(describe)?;
    Ok((config, warnings))
}

/// Refuse a variable figment 0.10 would misread: it unescapes a quoted value slicing at a
/// CHARACTER index as a BYTE index, so a non-ASCII character before a backslash (`"é\n"`)
/// panics or silently loses characters. The proxy's loader refuses the same values
/// (`tightwad_serve::config::layers`, where the fuzz target found it; the agent does not depend
/// on it); the message says how to write them.
fn refuse_values_figment_misreads(keys: &[&str]) -> anyhow::Result<()> {
    for (key, value) in Env::prefixed(ENV_PREFIX).only(keys).iter() {
        let misread = value
            .rfind('\\')
            .is_some_and(|last| value.contains('"') && !value[..last].is_ascii());
        if misread {
            anyhow::bail!(
                "{ENV_PREFIX}{}: a backslash escape after a non-ASCII character in a quoted \
                 value cannot be read here; write the non-ASCII characters as \\uXXXX escapes \
                 (\"\\u00e9\" for \"é\") or leave the value unquoted",
                key.as_str().to_ascii_uppercase()
            );
        }
    }
    Ok(())
}

/// A value from a variable, named by the variable: `TIGHTWAD_AGENT_LISTEN: listen: …`.
fn describe(e: figment::Error) -> anyhow::Error {
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name == Env::prefixed(ENV_PREFIX).metadata().name);
    match e.path.first() {
        Some(top) if from_env => anyhow::anyhow!(
            "{ENV_PREFIX}{}: {}: {}",
            top.to_ascii_uppercase(),
            e.path.join("."),
            e.kind
        ),
        _ => anyhow::anyhow!("agent config: {e}"),
    }
}

#[cfg(test)]
/// A test in figment's jail (jails run one at a time): a scratch folder as the working directory,
/// and none of the caller's `TIGHTWAD_*` variables (they come back afterwards; the rest of the
/// environment stays, other tests of this process may be reading it).
// figment's own signature: the jail's closure returns `figment::Result`.
#[allow(clippy::result_large_err)]
pub(crate) fn jailed(test: impl FnOnce(&mut figment::Jail)) {
    figment::Jail::expect_with(|jail| {
        for (name, _) in std::env::vars() {
            if name.starts_with("TIGHTWAD_") {
                jail.set_env(&name, "");
                std::env::remove_var(&name);
            }
        }
        test(jail);
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each layer over the one below for the same key; the file's other keys stay.
    #[test]
    fn variables_override_the_file_and_flags_the_variables() {
        jailed(|jail| {
            jail.create_file(
                "agent.toml",
                "listen = \"127.0.0.1:7001\"\nstop_grace_s = 3\n[[process]]\nname = \"t\"\nkind = \"llama-server\"\n",
            )
            .expect("write");
            let path = jail.directory().join("agent.toml");
            jail.set_env("TIGHTWAD_AGENT_LISTEN", "127.0.0.1:7002");
            jail.set_env("TIGHTWAD_AGENT_MODEL_DIRS", "[\"/data/models\"]");
            jail.set_env("TIGHTWAD_AGENT_CONFIG", "ignored: not a key");
            let (config, _) =
                AgentConfig::load_layered(Some(&path), &AgentFlags::default()).expect("loads");
            assert_eq!(config.listen.port(), 7002);
            assert_eq!(config.model_dirs, vec![PathBuf::from("/data/models")]);
            assert_eq!((config.stop_grace_s, config.processes.len()), (3, 1));
            let flags = AgentFlags {
                listen: Some("127.0.0.1:7003".parse().expect("address")),
                state_dir: Some("/srv/agent".into()),
            };
            let (config, _) = AgentConfig::load_layered(Some(&path), &flags).expect("loads");
            assert_eq!(config.listen.port(), 7003);
            assert_eq!(config.state_dir, PathBuf::from("/srv/agent"));
            // No file: the defaults, then the variables.
            let (config, _) =
                AgentConfig::load_layered(None, &AgentFlags::default()).expect("loads");
            assert_eq!(config.listen.port(), 7002);
        });
    }

    /// A mistake is named where it was made: the file's line, or the variable.
    #[test]
    fn errors_name_the_files_line_or_the_variable() {
        jailed(|jail| {
            jail.create_file(
                "agent.toml",
                "stop_grace_s = 3\n\nready_timeout_s = \"soon\"\n",
            )
            .expect("write");
            let path = jail.directory().join("agent.toml");
            jail.set_env("TIGHTWAD_AGENT_STOP_GRACE_S", "4");
            let e = AgentConfig::load_layered(Some(&path), &AgentFlags::default())
                .expect_err("refused");
            let e = format!("{e:#}");
            assert!(
                e.contains("agent.toml") && e.contains("line 3") && e.contains("ready_timeout_s"),
                "{e}"
            );
            jail.create_file("agent.toml", "stop_grace_s = 3\n")
                .expect("write");
            jail.set_env("TIGHTWAD_AGENT_STOP_GRACE_S", "soon");
            let e = AgentConfig::load_layered(Some(&path), &AgentFlags::default())
                .expect_err("refused");
            let e = format!("{e:#}");
            assert!(
                e.starts_with("TIGHTWAD_AGENT_STOP_GRACE_S: stop_grace_s: invalid type"),
                "{e}"
            );
        });
    }

    /// figment would panic on (or silently shorten) a quoted value with a non-ASCII character
    /// before a backslash: refused naming the variable; the suggested spelling reads back.
    #[test]
    fn a_non_ascii_character_before_a_backslash_is_refused_not_a_panic() {
        jailed(|jail| {
            jail.set_env("TIGHTWAD_AGENT_MODEL_DIRS", r#"["/data/é\tx"]"#);
            let e = AgentConfig::load_layered(None, &AgentFlags::default()).expect_err("refused");
            let e = format!("{e:#}");
            assert!(
                e.starts_with("TIGHTWAD_AGENT_MODEL_DIRS:") && e.contains("\\uXXXX"),
                "{e}"
            );
            jail.set_env("TIGHTWAD_AGENT_MODEL_DIRS", r#"["/data/\u00e9\tx"]"#);
            let (config, _) =
                AgentConfig::load_layered(None, &AgentFlags::default()).expect("loads");
            assert_eq!(config.model_dirs, vec![PathBuf::from("/data/é\tx")]);
        });
    }
}
