//! Old spellings the proxy's file still reads (serde aliases), each found here by line so the
//! startup log can say which file and line to change and to what: one spelling per concept
//! (`*_timeout_s` for timeouts, `llama-server` for llama.cpp's server, as the agent's
//! `kind = "llama-server"`).

use std::path::Path;

/// Keys renamed: (old, new).
const OLD_KEYS: &[(&str, &str)] = &[
    ("target_timeout_secs", "target_timeout_s"),
    ("draft_timeout_secs", "draft_timeout_s"),
    ("header_read_timeout_secs", "header_read_timeout_s"),
    ("body_read_timeout_secs", "body_read_timeout_s"),
];

/// Whether `key` is an old spelling (read, never suggested).
pub(super) fn is_old_key(key: &str) -> bool {
    OLD_KEYS.iter().any(|(old, _)| *old == key)
}

/// Values renamed, for these keys: (keys, old, new).
const OLD_VALUES: &[(&[&str], &str, &str)] =
    &[(&["target_kind", "draft_kind"], "llamacpp", "llama-server")];

/// One warning per old spelling in `text`: `FILE:LINE: … write NEW instead`.
pub(super) fn old_spellings(path: &Path, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        if key.starts_with('#') || key.starts_with('[') {
            continue;
        }
        if let Some((old, new)) = OLD_KEYS.iter().find(|(old, _)| *old == key) {
            out.push(format!(
                "{}:{}: `{old}` is deprecated; use `{new}`",
                path.display(),
                n + 1
            ));
        }
        let value = value.trim_start();
        for (keys, old, new) in OLD_VALUES {
            if keys.contains(&key) && value.starts_with(&format!("\"{old}\"")) {
                out.push(format!(
                    "{}:{}: {key} = \"{old}\" is deprecated; use {key} = \"{new}\"",
                    path.display(),
                    n + 1
                ));
            }
        }
    }
    out
}
