//! The predecessor's `proxy:` section: where the proxy listens and its limits go to the top of
//! the coordinator config, and its target and drafters become the one `[[pairings]]` entry.
//! Kept apart from the fleet (`workers:`, `coordinator:`) because it only names URLs: nothing
//! here runs on a host.

use serde_norway::Value as Yaml;
use tightwad_serve::engine::controller::K_MAX;

use super::yaml::{byte_size, get, number, slug, text, upstream, Walker};

/// `proxy:` → `listen`, `api_keys`, the limits (into `out`) and the pairing (into `pairing`).
pub(super) fn proxy(
    w: &mut Walker,
    root: &serde_norway::Mapping,
    out: &mut toml::Table,
    pairing: &mut toml::Table,
) {
    if let Some(proxy) = get(root, "proxy").and_then(Yaml::as_mapping) {
        listen_and_limits(w, proxy, out);
        upstreams(w, proxy, pairing);
        draft_tokens(w, proxy, pairing);
        not_kept(w, proxy);
    } else if get(root, "proxy").is_some() {
        w.skip("proxy", "not a mapping");
    }
}

/// `host`/`port` → `listen`; `auth_token` → `api_keys`; `max_tokens_limit`; `max_body_size` →
/// `max_body_bytes`.
fn listen_and_limits(w: &mut Walker, proxy: &serde_norway::Mapping, out: &mut toml::Table) {
    let host = get(proxy, "host")
        .and_then(text)
        .unwrap_or_else(|| "0.0.0.0".into());
    let port = get(proxy, "port").and_then(number).unwrap_or(8088);
    out.insert("listen".into(), format!("{host}:{port}").into());
    if let Some(token) = get(proxy, "auth_token").and_then(text) {
        out.insert("api_keys".into(), vec![toml::Value::from(token)].into());
    }
    if let Some(limit) = get(proxy, "max_tokens_limit").and_then(number) {
        out.insert("max_tokens_limit".into(), (limit as i64).into());
    }
    if let Some(v) = get(proxy, "max_body_size") {
        match byte_size(v) {
            Some(bytes) => {
                out.insert("max_body_bytes".into(), (bytes as i64).into());
            }
            None => w.skip("proxy.max_body_size", "not a size in bytes"),
        }
    }
}

/// `target`, `draft` and `drafters` → the pairing's `name`, `target`, `draft` and `drafts`.
fn upstreams(w: &mut Walker, proxy: &serde_norway::Mapping, pairing: &mut toml::Table) {
    let target = get(proxy, "target").and_then(|v| upstream(w, "proxy.target", v));
    let mut draft = get(proxy, "draft").and_then(|v| upstream(w, "proxy.draft", v));
    // More drafters become `drafts`: the pairing measures each and drafts with whichever
    // delivers the most; there is no vote, the output is always the target's own.
    let mut more_drafts: Vec<String> = Vec::new();
    if let Some(Yaml::Sequence(drafters)) = get(proxy, "drafters") {
        for (i, d) in drafters.iter().enumerate() {
            let key = format!("proxy.drafters[{i}]");
            match upstream(w, &key, d) {
                Some(parsed) if draft.is_none() => draft = Some(parsed),
                Some((url, _)) => {
                    let known = draft.as_ref().is_some_and(|(d, _)| *d == url)
                        || more_drafts.contains(&url);
                    if !known {
                        more_drafts.push(url);
                    }
                }
                None => {}
            }
        }
    }
    match target {
        Some((url, model)) => {
            let name = model
                .as_deref()
                .map(slug)
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "tightwad".into());
            pairing.insert("name".into(), name.into());
            pairing.insert("target".into(), url.into());
        }
        None => w.skip(
            "proxy.target",
            "no llama-server target: the pairing below is a template to fill in",
        ),
    }
    if let Some((url, _)) = draft {
        pairing.insert("draft".into(), url.into());
    }
    if !more_drafts.is_empty() {
        pairing.insert(
            "drafts".into(),
            more_drafts
                .into_iter()
                .map(toml::Value::from)
                .collect::<Vec<_>>()
                .into(),
        );
    }
}

/// `max_draft_tokens` → the pairing's `draft_tokens` (at most [`K_MAX`]; `auto` → unset).
fn draft_tokens(w: &mut Walker, proxy: &serde_norway::Mapping, pairing: &mut toml::Table) {
    if let Some(v) = get(proxy, "max_draft_tokens") {
        let auto = text(v).as_deref() == Some("auto");
        match number(v) {
            // "Let the system choose": the proxy's own default, which follows how the target
            // verifies (`engine::draft_length`), so nothing is written.
            _ if auto => {}
            Some(k) => {
                if k > K_MAX as u64 {
                    w.skip(
                        "proxy.max_draft_tokens",
                        &format!("{k} is above Tightwad's limit; {K_MAX} written (the controller picks the best k up to it)"),
                    );
                }
                pairing.insert(
                    "draft_tokens".into(),
                    (k.clamp(1, K_MAX as u64) as i64).into(),
                );
            }
            None => w.skip("proxy.max_draft_tokens", "neither a number nor \"auto\""),
        }
    }
}

/// The `proxy:` keys with no counterpart, each reported with why, then any unknown key.
fn not_kept(w: &mut Walker, proxy: &serde_norway::Mapping) {
    if get(proxy, "fallback_on_draft_failure").and_then(Yaml::as_bool) == Some(false) {
        w.skip(
            "proxy.fallback_on_draft_failure",
            "false cannot be kept: when the draft fails Tightwad always serves from the target alone (set prompt_lookup_fallback = true to keep speculating)",
        );
    }
    for (key, reason) in [
        ("consensus_mode", "drafter voting emits text the target never checked; Tightwad's output is always the target's own"),
        ("chat_template", "llama-server applies the model's own template from its GGUF (or --chat-template on the llama-server)"),
        ("allow_private_upstream", "Tightwad's upstreams are the configured URLs only; there is nothing to allow"),
    ] {
        w.present("proxy.", proxy, key, reason);
    }
    w.rest(
        "proxy.",
        proxy,
        &[
            "host",
            "port",
            "auth_token",
            "max_tokens_limit",
            "max_body_size",
            "target",
            "draft",
            "drafters",
            "max_draft_tokens",
            "fallback_on_draft_failure",
            "consensus_mode",
            "chat_template",
            "allow_private_upstream",
        ],
        "unknown key in the predecessor's schema",
    );
}
