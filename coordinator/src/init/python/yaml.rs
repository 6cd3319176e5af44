//! Walking the predecessor's YAML: the [`Walker`] that records every key it cannot carry over,
//! and the small readers (`get`, `text`, `number`, `byte_size`, ...) every section shares, so
//! each section reads values the same lenient way (a number may also be written as a string).

use serde_norway::Value as Yaml;

use super::NotCarried;

pub(super) struct Walker {
    pub(super) not_carried: Vec<NotCarried>,
}

impl Walker {
    pub(super) fn skip(&mut self, key: &str, reason: &str) {
        self.not_carried.push(NotCarried {
            key: key.to_string(),
            reason: reason.to_string(),
        });
    }

    /// Reports `prefix` + `key` when `map` holds it: a key with no counterpart, for `reason`.
    pub(super) fn present(
        &mut self,
        prefix: &str,
        map: &serde_norway::Mapping,
        key: &str,
        reason: &str,
    ) {
        if get(map, key).is_some() {
            self.skip(&format!("{prefix}{key}"), reason);
        }
    }

    /// Reports every key of `map` not in `handled`.
    pub(super) fn rest(
        &mut self,
        prefix: &str,
        map: &serde_norway::Mapping,
        handled: &[&str],
        reason: &str,
    ) {
        for key in map.keys() {
            let name = key_name(key);
            if !handled.contains(&name.as_str()) {
                self.skip(&format!("{prefix}{name}"), reason);
            }
        }
    }
}

pub(super) fn key_name(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

pub(super) fn get<'a>(map: &'a serde_norway::Mapping, key: &str) -> Option<&'a Yaml> {
    map.get(Yaml::String(key.to_string()))
        .filter(|v| !v.is_null())
}

pub(super) fn text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn number(v: &Yaml) -> Option<u64> {
    match v {
        Yaml::Number(n) => n.as_u64(),
        Yaml::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `10485760`, `"10MB"`, `"10 MiB"`, `"512k"` → bytes.
pub(super) fn byte_size(v: &Yaml) -> Option<u64> {
    if let Some(n) = number(v) {
        return Some(n);
    }
    let s = text(v)?.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (digits, unit) = s.split_at(split);
    let value: f64 = digits.parse().ok()?;
    let factor = match unit.trim().trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((value * factor) as u64)
}

/// A name usable as a host, process or pairing name.
pub(super) fn slug(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.trim_matches('-').to_string()
}

/// One upstream (`proxy.target`, `proxy.draft`, a drafter): its URL when it is a llama-server.
pub(super) fn upstream(w: &mut Walker, key: &str, v: &Yaml) -> Option<(String, Option<String>)> {
    let Some(map) = v.as_mapping() else {
        w.skip(key, "not a mapping of url/model_name/backend");
        return None;
    };
    w.rest(
        &format!("{key}."),
        map,
        &["url", "model_name", "backend"],
        "unknown key in the predecessor's schema",
    );
    let backend = get(map, "backend")
        .and_then(text)
        .unwrap_or_else(|| "llamacpp".into());
    let url = get(map, "url").and_then(text);
    let model = get(map, "model_name").and_then(text);
    if backend != "llamacpp" {
        w.skip(
            &format!("{key}.backend"),
            &format!(
                "backend {backend:?}: Tightwad verifies with llama-server's token ids and probabilities, which Ollama does not give; serve the model with llama-server and set the URL"
            ),
        );
        return None;
    }
    match url {
        Some(url) => Some((url.trim_end_matches('/').to_string(), model)),
        None => {
            w.skip(&format!("{key}.url"), "missing");
            None
        }
    }
}

pub(super) fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}
