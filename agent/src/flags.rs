//! Checks a process's arguments against the `--help` of that very binary before starting it.
//!
//! Flags change between llama.cpp builds (`--draft-max` became `--spec-draft-n-max`; the field
//! report lost a start to `--np` where the build wants `-np`), and a wrong flag otherwise shows
//! up only as a server that exits during start-up, on a machine nobody is sitting at.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tightwad_protocol::messages::ProcessKind;

/// Flags whose value is a model file llama-server loads (dry runs check them, the peer
/// policy confines them to the model folders).
pub const MODEL_FLAGS: &[&str] = &[
    "-m",
    "--model",
    "-md",
    "--model-draft",
    "--spec-draft-model",
    "-mm",
    "--mmproj",
];

/// Indentation from which a help line is a description, not an option line.
const DESCRIPTION_INDENT: usize = 16;

/// The flags a binary's help lists, with the help line each came from.
#[derive(Debug, Clone, Default)]
pub struct HelpFlags {
    flags: HashMap<String, String>,
}

impl HelpFlags {
    /// Collects flags from option lines (`-np,   --parallel N   ...`, argparse's
    /// `--max-model-len MAX_MODEL_LEN, --max_model_len MAX_MODEL_LEN`).
    pub fn parse(help: &str) -> Self {
        let mut flags: HashMap<String, String> = HashMap::new();
        // Flags of the option line being read, so its wrapped description lines attach to it.
        let mut current: Vec<String> = Vec::new();
        for line in help.lines() {
            let trimmed = line.trim_start();
            // Option lines start near the margin; deeply indented lines are wrapped
            // descriptions, even when they begin with a flag (`use --spec-draft-n-max or`).
            let indent = line.len() - trimmed.len();
            if !trimmed.starts_with('-') || indent >= DESCRIPTION_INDENT {
                if !trimmed.is_empty() && line.starts_with(' ') {
                    for flag in &current {
                        if let Some(text) = flags.get_mut(flag) {
                            text.push(' ');
                            text.push_str(trimmed.trim_end());
                        }
                    }
                } else {
                    current.clear();
                }
                continue;
            }
            current.clear();
            for token in trimmed.split_whitespace() {
                let bare = token.trim_end_matches(',');
                if bare.starts_with('-') && bare.len() > 1 && !is_number(bare) {
                    let name = bare.split(['=', '[', '<']).next().unwrap_or(bare);
                    if is_flag_name(name) && !flags.contains_key(name) {
                        flags.insert(name.to_string(), trimmed.trim_end().to_string());
                        current.push(name.to_string());
                    }
                } else if !token.ends_with(',') {
                    // A value placeholder ends the option list, unless a comma says another
                    // spelling follows (argparse: `--a A, --b A`).
                    break;
                }
            }
        }
        HelpFlags { flags }
    }

    pub fn contains(&self, flag: &str) -> bool {
        self.flags.contains_key(flag)
    }

    /// The help text of a flag the binary still lists only to say it was removed (llama.cpp
    /// keeps `--draft-max` in its help as "the argument has been removed").
    pub fn removed(&self, flag: &str) -> Option<&str> {
        self.flags
            .get(flag)
            .map(String::as_str)
            .filter(|text| text.to_ascii_lowercase().contains("has been removed"))
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// The known flag closest to `unknown`, with its help line.
    pub fn suggest(&self, unknown: &str) -> Option<(&str, &str)> {
        let bare = unknown.trim_start_matches('-');
        let mut best: Option<(usize, &str, &str)> = None;
        for (flag, line) in &self.flags {
            if self.removed(flag).is_some() {
                continue;
            }
            let distance = if flag.trim_start_matches('-') == bare {
                0
            } else {
                edit_distance(flag, unknown)
            };
            if distance <= 3
                && best.is_none_or(|(d, f, _)| distance < d || (distance == d && flag.as_str() < f))
            {
                best = Some((distance, flag, line));
            }
        }
        best.map(|(_, flag, line)| (flag, line))
    }
}

/// `-x`, `--long-name`, `--snake_case`: one or two dashes, then a letter or digit.
fn is_flag_name(name: &str) -> bool {
    let body = name
        .strip_prefix("--")
        .or_else(|| name.strip_prefix('-'))
        .unwrap_or("");
    body.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_number(token: &str) -> bool {
    token.parse::<f64>().is_ok()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// The flags of `args` (values are skipped: anything not starting with `-`, and numbers).
pub fn flags_in(args: &[String]) -> BTreeSet<String> {
    args.iter()
        .filter(|a| a.starts_with('-') && a.len() > 1 && !is_number(a))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("{binary} does not accept {flag:?}: it is not listed by `{binary} --help`{hint}")]
    Unknown {
        binary: String,
        flag: String,
        hint: String,
    },
    #[error("{binary} no longer accepts {flag:?}; its help says: \"{help}\"")]
    Removed {
        binary: String,
        flag: String,
        help: String,
    },
    #[error("could not run `{binary} --help` to check the arguments: {reason}")]
    HelpUnavailable { binary: String, reason: String },
}

/// Validates `args` for `binary`; the error quotes the binary and its own help line.
pub fn check(binary: &Path, help: &HelpFlags, args: &[String]) -> Result<(), FlagError> {
    for flag in flags_in(args) {
        if let Some(text) = help.removed(&flag) {
            return Err(FlagError::Removed {
                binary: binary.display().to_string(),
                flag,
                help: text.split_whitespace().collect::<Vec<_>>().join(" "),
            });
        }
        if help.contains(&flag) {
            continue;
        }
        let hint = match help.suggest(&flag) {
            Some((suggestion, line)) => {
                format!("; did you mean {suggestion:?}? its help says: \"{line}\"")
            }
            None => String::new(),
        };
        return Err(FlagError::Unknown {
            binary: binary.display().to_string(),
            flag,
            hint,
        });
    }
    Ok(())
}

/// `--help` output cached per binary (path + modification time), since it cannot change while
/// the file does not.
#[derive(Default)]
pub struct HelpCache {
    entries: Mutex<HashMap<PathBuf, (Option<SystemTime>, HelpFlags)>>,
}

impl HelpCache {
    pub async fn flags_for(
        &self,
        binary: &Path,
        kind: ProcessKind,
    ) -> Result<HelpFlags, FlagError> {
        let modified = std::fs::metadata(binary).and_then(|m| m.modified()).ok();
        if let Ok(entries) = self.entries.lock() {
            if let Some((cached_time, flags)) = entries.get(binary) {
                if *cached_time == modified {
                    return Ok(flags.clone());
                }
            }
        }
        let help_args: &[&str] = match kind {
            ProcessKind::Vllm => &["serve", "--help=all"],
            _ => &["--help"],
        };
        // `vllm serve --help=all` imports torch and vLLM first: a minute or more on a busy CPU.
        let help_timeout = match kind {
            ProcessKind::Vllm => Duration::from_secs(180),
            _ => Duration::from_secs(30),
        };
        let text = run_capture(binary, help_args, help_timeout)
            .await
            .map_err(|reason| FlagError::HelpUnavailable {
                binary: binary.display().to_string(),
                reason,
            })?;
        let flags = HelpFlags::parse(&text);
        if flags.is_empty() {
            return Err(FlagError::HelpUnavailable {
                binary: binary.display().to_string(),
                reason: "its help output lists no flags".into(),
            });
        }
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(binary.to_path_buf(), (modified, flags.clone()));
        }
        Ok(flags)
    }
}

/// Runs a short-lived command and returns stdout + stderr (llama.cpp prints help and version on
/// either, depending on the build).
pub async fn run_capture(
    binary: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
        .map_err(|e| e.to_string())?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA_HELP: &str = "\
----- common params -----

-h,    --help, --usage                  print usage and exit
-np,   --parallel N                     number of parallel sequences to decode (default: 1)
-m,    --model FNAME                    model path to load
--spec-draft-n-max N                    number of tokens to draft
--draft, --draft-n, --draft-max N       the argument has been removed. use --spec-draft-n-max or
                                        --spec-ngram-mod-n-max
--mmap, --no-mmap                       whether to memory-map model
-dev,  --device <dev1,dev2,..>          comma-separated list of devices
";

    #[test]
    fn llama_style_help() {
        let help = HelpFlags::parse(LLAMA_HELP);
        for flag in [
            "-h",
            "--help",
            "--usage",
            "-np",
            "--parallel",
            "-m",
            "--model",
            "--no-mmap",
            "-dev",
            "--device",
            "--spec-draft-n-max",
        ] {
            assert!(help.contains(flag), "{flag}");
        }
        assert!(!help.contains("FNAME"));
        assert!(!help.contains("-----"));
    }

    #[test]
    fn argparse_style_help() {
        let help = HelpFlags::parse("  --max-model-len MAX_MODEL_LEN, --max_model_len MAX_MODEL_LEN\n                        Model context length.\n  --dtype {auto,half}   Data type.\n");
        assert!(help.contains("--max-model-len"));
        assert!(help.contains("--max_model_len"));
        assert!(help.contains("--dtype"));
    }

    #[test]
    fn unknown_flag_is_refused_with_suggestion() {
        let help = HelpFlags::parse(LLAMA_HELP);
        let args: Vec<String> = ["--np", "1", "-m", "x.gguf"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let err =
            check(Path::new("/bin/llama-server"), &help, &args).expect_err("--np must be refused");
        let text = err.to_string();
        assert!(text.contains("\"--np\""), "{text}");
        assert!(text.contains("did you mean \"-np\""), "{text}");
        assert!(text.contains("/bin/llama-server"), "{text}");
        let ok: Vec<String> = [
            "-np",
            "4",
            "--parallel=2",
            "-m",
            "x",
            "--spec-draft-n-max",
            "-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        check(Path::new("llama-server"), &help, &ok).expect("valid");
        let old: Vec<String> = vec!["--draft-max".into(), "8".into()];
        let err = check(Path::new("llama-server"), &help, &old).expect_err("removed flag");
        assert!(
            err.to_string()
                .contains("use --spec-draft-n-max or --spec-ngram-mod-n-max"),
            "{err}"
        );
    }
}
