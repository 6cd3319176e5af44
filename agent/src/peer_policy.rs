//! `[peer]` in agent.toml: what the coordinator may ask of this agent beyond its own config.
//!
//! The coordinator's key is code execution on every agent it enrolled: it can start a process
//! with arguments of its choosing (llama-server's `--log-file` writes any file, its
//! `--chat-template-file` reads one, `-m` loads any file as a model) and send `tightwad build`
//! a source tree to compile and run. This policy narrows that, checked here, where the request
//! arrives: the arguments in this agent's own config are trusted as they are; what a peer adds
//! or changes must use a flag it may pass, model paths must resolve (after `..` and symlinks)
//! inside the model folders, and builds can be turned off. A refusal says what to change in
//! which file.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use tightwad_protocol::messages::ProcessKind;

/// Flags that read or write files outside the model folders, or fetch from the network: a peer
/// may not pass them unless `deny_flags` is set without them.
pub const DEFAULT_DENIED_FLAGS: &[&str] = &[
    "--log-file",
    "--chat-template-file",
    "--slot-save-path",
    "--path",
    "--api-key-file",
    "--ssl-key-file",
    "--ssl-cert-file",
    "--grammar-file",
    "--json-schema-file",
    "-lcs",
    "--lookup-cache-static",
    "-lcd",
    "--lookup-cache-dynamic",
    "-mu",
    "--model-url",
    "-hf",
    "-hfr",
    "--hf-repo",
    "-hff",
    "--hf-file",
    "-hfd",
    "-hfrd",
    "--hf-repo-draft",
    "-hfv",
    "-hfrv",
    "--hf-repo-v",
    "-hffv",
    "--hf-file-v",
    "-dr",
    "--docker-repo",
    // vLLM
    "--download-dir",
];

/// Flags whose value is a file llama-server or vLLM loads as (part of) a model, beyond the model
/// files themselves (`flags::MODEL_FLAGS`): confined to the model folders too.
const OTHER_MODEL_PATH_FLAGS: &[&str] = &[
    "--lora",
    "--lora-scaled",
    "--control-vector",
    "--control-vector-scaled",
    "-mv",
    "--model-vocoder",
    "--tokenizer",
];

/// `[peer]` in agent.toml.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PeerPolicy {
    /// When not empty, the only flags a peer may add to a process's configured arguments (the
    /// flags of the configured arguments themselves stay allowed, with other values).
    pub allow_flags: Vec<String>,
    /// Flags a peer may never pass with a value other than the configured one (default:
    /// [`DEFAULT_DENIED_FLAGS`], the ones that read or write other files or download).
    pub deny_flags: Vec<String>,
    /// Model paths a peer passes (`-m`, `-md`, `--mmproj`, `--lora`, vLLM's model) must be
    /// inside `model_dirs`, after resolving `..` and symlinks (default true).
    pub confine_model_paths: bool,
    /// Whether the coordinator may run `tightwad build` here: it compiles and runs the source
    /// and patches it sends (default true).
    pub allow_build: bool,
    /// The file this policy was read from, for the fix in a refusal; not read from the file.
    #[serde(skip)]
    #[schemars(skip)]
    pub config_file: Option<PathBuf>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        PeerPolicy {
            allow_flags: Vec::new(),
            deny_flags: DEFAULT_DENIED_FLAGS.iter().map(|f| f.to_string()).collect(),
            confine_model_paths: true,
            allow_build: true,
            config_file: None,
        }
    }
}

/// What the policy refused, and how to allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by this agent's [peer] policy: {what}; to allow it, {fix} in {file}")]
pub struct Refusal {
    pub what: String,
    pub fix: String,
    pub file: String,
}

impl PeerPolicy {
    fn refusal(&self, what: String, fix: String) -> Refusal {
        Refusal {
            what,
            fix,
            file: self
                .config_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the agent's config file (--config)".into()),
        }
    }

    /// Checks the arguments a peer asks a process to start with, against what the agent's
    /// config gives that process (`configured`) and its model folders.
    pub fn check_args(
        &self,
        process: &str,
        kind: ProcessKind,
        args: &[String],
        configured: &[String],
        model_dirs: &[PathBuf],
    ) -> Result<(), Refusal> {
        let trusted = pairs(configured);
        for pair in pairs(args) {
            if trusted.contains(&pair) {
                continue;
            }
            let Arg { flag, value } = &pair;
            if let Some(flag) = flag {
                if self.deny_flags.iter().any(|d| d == flag) {
                    return Err(self.refusal(
                        format!("{process}: a peer may not pass {flag}"),
                        format!("remove {flag:?} from deny_flags under [peer]"),
                    ));
                }
                let configured_flag = trusted.iter().any(|t| t.flag.as_ref() == Some(flag));
                if !self.allow_flags.is_empty()
                    && !configured_flag
                    && !self.allow_flags.iter().any(|a| a == flag)
                {
                    return Err(self.refusal(
                        format!("{process}: {flag} is not in allow_flags"),
                        format!("add {flag:?} to allow_flags under [peer]"),
                    ));
                }
            }
            let is_model_path = match flag {
                Some(flag) => {
                    crate::flags::MODEL_FLAGS.contains(&flag.as_str())
                        || OTHER_MODEL_PATH_FLAGS.contains(&flag.as_str())
                }
                // vLLM's `serve MODEL`: a path when it names one (not a Hugging Face id).
                None => {
                    kind == ProcessKind::Vllm
                        && value
                            .as_deref()
                            .is_some_and(|v| v.starts_with(['/', '.', '~']))
                }
            };
            if let (true, true, Some(value)) = (self.confine_model_paths, is_model_path, value) {
                if kind == ProcessKind::Vllm && !value.starts_with(['/', '.', '~']) {
                    continue; // a Hugging Face model id, not a path
                }
                if !inside_model_dirs(Path::new(value), model_dirs) {
                    let shown = flag.as_deref().unwrap_or("model");
                    return Err(self.refusal(
                        format!(
                            "{process}: {shown} {value} is not a file inside the model folders ({})",
                            model_dirs
                                .iter()
                                .map(|d| d.display().to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        "move the file into a model folder, add its folder to model_dirs, or set confine_model_paths = false under [peer]".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the coordinator may run `tightwad build` (or roll one back) here.
    pub fn check_build(&self) -> Result<(), Refusal> {
        if self.allow_build {
            Ok(())
        } else {
            Err(self.refusal(
                "tightwad build is turned off on this agent".into(),
                "set allow_build = true under [peer]".into(),
            ))
        }
    }
}

/// One argument as the policy sees it: a flag with its value (`--x v`, `--x=v`), a flag alone,
/// or a positional value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Arg {
    flag: Option<String>,
    value: Option<String>,
}

fn is_flag(token: &str) -> bool {
    token.starts_with('-') && token.len() > 1 && token.parse::<f64>().is_err()
}

/// Splits arguments into flags and their values: a token that is not a flag is the value of the
/// flag before it (or a positional value when none is waiting).
fn pairs(args: &[String]) -> Vec<Arg> {
    let mut out = Vec::new();
    let mut iter = args.iter().peekable();
    while let Some(token) = iter.next() {
        if !is_flag(token) {
            out.push(Arg {
                flag: None,
                value: Some(token.clone()),
            });
            continue;
        }
        if let Some((flag, value)) = token.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            out.push(Arg {
                flag: Some(flag.to_string()),
                value: Some(value.to_string()),
            });
            continue;
        }
        let value = iter.next_if(|next| !is_flag(next)).cloned();
        out.push(Arg {
            flag: Some(token.clone()),
            value,
        });
    }
    out
}

/// Whether `path` resolves (symlinks and `..` included) to a file inside one of `dirs`. No `~`
/// expansion: the server gets the argument as it is, with no shell in between.
fn inside_model_dirs(path: &Path, dirs: &[PathBuf]) -> bool {
    let Ok(real) = path.canonicalize() else {
        return false;
    };
    dirs.iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|dir| real.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    struct Folders {
        _root: tempfile::TempDir,
        models: PathBuf,
        outside: PathBuf,
    }

    fn folders() -> Folders {
        let root = tempfile::tempdir().expect("tmp");
        let models = root.path().join("models");
        let outside = root.path().join("secret");
        std::fs::create_dir_all(&models).expect("models");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(models.join("m.gguf"), b"GGUF").expect("model");
        std::fs::write(outside.join("key.gguf"), b"secret").expect("secret");
        Folders {
            _root: root,
            models,
            outside,
        }
    }

    fn check(policy: &PeerPolicy, f: &Folders, args: &[&str]) -> Result<(), Refusal> {
        let configured = strings(&["-m", &format!("{}/m.gguf", f.models.display()), "-c", "512"]);
        policy.check_args(
            "target",
            ProcessKind::LlamaServer,
            &strings(args),
            &configured,
            std::slice::from_ref(&f.models),
        )
    }

    #[test]
    fn model_paths_must_resolve_inside_the_model_folders() {
        let f = folders();
        let policy = PeerPolicy::default();
        let inside = format!("{}/m.gguf", f.models.display());
        assert_eq!(check(&policy, &f, &["-m", &inside, "-c", "1024"]), Ok(()));
        let dotdot = format!("{}/../secret/key.gguf", f.models.display());
        let refused = check(&policy, &f, &["-m", &dotdot]).expect_err("..");
        assert!(
            refused.what.contains("not a file inside the model folders"),
            "{refused}"
        );
        let link = f.models.join("link.gguf");
        std::os::unix::fs::symlink(f.outside.join("key.gguf"), &link).expect("symlink");
        let refused =
            check(&policy, &f, &[&format!("--model={}", link.display())]).expect_err("symlink");
        assert!(refused.what.contains("--model"), "{refused}");
        let relaxed = PeerPolicy {
            confine_model_paths: false,
            ..PeerPolicy::default()
        };
        assert_eq!(check(&relaxed, &f, &["-m", &dotdot]), Ok(()));
    }

    #[test]
    fn denied_flags_are_refused_unless_configured_as_they_are() {
        let f = folders();
        let policy = PeerPolicy {
            config_file: Some("/etc/tightwad/agent.toml".into()),
            ..PeerPolicy::default()
        };
        let refused = check(&policy, &f, &["--log-file", "/root/.bashrc"]).expect_err("denied");
        assert_eq!(
            refused.to_string(),
            "refused by this agent's [peer] policy: target: a peer may not pass --log-file; to allow it, remove \"--log-file\" from deny_flags under [peer] in /etc/tightwad/agent.toml"
        );
        let configured = strings(&["--log-file", "/var/log/llama.log"]);
        assert_eq!(
            policy.check_args(
                "target",
                ProcessKind::LlamaServer,
                &configured,
                &configured,
                &[]
            ),
            Ok(())
        );
    }

    #[test]
    fn allow_flags_limits_what_a_peer_adds() {
        let f = folders();
        let policy = PeerPolicy {
            allow_flags: strings(&["--port"]),
            ..PeerPolicy::default()
        };
        // Configured flags with other values, and allowed flags, pass.
        assert_eq!(
            check(&policy, &f, &["-c", "2048", "--port", "9000"]),
            Ok(())
        );
        let refused = check(&policy, &f, &["-ngl", "99"]).expect_err("not allowed");
        assert!(
            refused.fix.contains("add \"-ngl\" to allow_flags"),
            "{refused}"
        );
    }

    #[test]
    fn builds_can_be_turned_off() {
        assert_eq!(PeerPolicy::default().check_build(), Ok(()));
        let off = PeerPolicy {
            allow_build: false,
            ..PeerPolicy::default()
        };
        assert!(off
            .check_build()
            .expect_err("off")
            .to_string()
            .contains("set allow_build = true under [peer]"));
    }

    #[test]
    fn negative_numbers_are_values_not_flags() {
        assert_eq!(
            pairs(&strings(&["--temp", "-1", "--kv-unified"])),
            vec![
                Arg {
                    flag: Some("--temp".into()),
                    value: Some("-1".into())
                },
                Arg {
                    flag: Some("--kv-unified".into()),
                    value: None
                }
            ]
        );
    }
}
