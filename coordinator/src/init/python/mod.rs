//! `tightwad init --from cluster.yaml`: turns the Python Tightwad's config into ours and says,
//! key by key, what it could not carry over and why.
//!
//! The YAML is read with `serde_norway`, the maintained fork of `serde_yaml` (which is archived;
//! `serde_yml` has an unsoundness advisory), into a plain value that this module walks, so every
//! key is either mapped or reported: none is dropped in silence.
//!
//! What maps where (the predecessor's keys, from its `config.py`):
//! - `proxy.host`/`port` → `listen`; `auth_token` → `api_keys`; `max_tokens_limit`;
//!   `max_body_size` → `max_body_bytes`;
//! - `proxy.target`/`draft` (llamacpp backends) → one `[[pairings]]`; `max_draft_tokens` →
//!   `draft_tokens` (at most 8, the controller's K_MAX; `auto` → unset, the proxy's default: 8 on
//!   a one-pass target, 4 otherwise, the adaptive controller choosing below it);
//!   `drafters[0]` when there is no `draft`, every further drafter → `drafts` (the proxy measures
//!   them and drafts with the best; several drafters are not voting, the output stays the
//!   target's);
//! - `coordinator` + `workers` + the default model → `[[hosts]]` (agents on port 7420) and an RPC
//!   `[[pools]]` entry, with the `agent.toml` processes each host needs written as comments;
//! - the rest (consensus voting, chat templates, the quality gate, Ollama backends, SSH, RAM
//!   reclaim, peer tokens) has no counterpart, by design; each such key is reported.
//!
//! The walk is split by section: `yaml` holds the walker and the value readers, `proxy` the
//! `proxy:` section, `fleet` the RPC cluster (`models:`, `workers:`, `coordinator:`,
//! `binaries:`); this module runs them in order and writes the result.

mod fleet;
mod proxy;
#[cfg(test)]
mod tests;
mod yaml;

use serde::Serialize;
use serde_norway::Value as Yaml;

use fleet::Fleet;
use yaml::{get, Walker};

/// A key of the old config that the new one does not carry, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotCarried {
    pub key: String,
    pub reason: String,
}

/// The converted config and the report.
#[derive(Debug, Clone, Serialize)]
pub struct Conversion {
    /// The coordinator config (TOML), with comments.
    pub toml: String,
    pub not_carried: Vec<NotCarried>,
    /// `agent.toml` processes the hosts need (also in `toml`, as comments).
    pub agent_snippets: Vec<String>,
    /// What the config does about API keys (the predecessor listened on 0.0.0.0 by default).
    #[serde(skip)]
    pub access: super::access::Access,
}

/// Converts the text of a Python Tightwad `cluster.yaml`; a `listen` beyond loopback without an
/// `auth_token` gets a generated API key (see [`super::access`]).
pub fn convert(yaml: &str) -> anyhow::Result<Conversion> {
    convert_with(yaml, false)
}

/// [`convert`]; with `no_api_key`, a network `listen` without a key stays open, loudly.
pub fn convert_with(yaml: &str, no_api_key: bool) -> anyhow::Result<Conversion> {
    let root: Yaml = serde_norway::from_str(yaml)
        .map_err(|e| anyhow::anyhow!("not a valid YAML config: {e}"))?;
    let Some(root) = root.as_mapping() else {
        anyhow::bail!("the config's top level must be a mapping (coordinator:, proxy:, ...)");
    };
    let mut w = Walker {
        not_carried: Vec::new(),
    };
    let mut out = toml::Table::new();
    let mut pairing = toml::Table::new();
    let mut fleet = Fleet::default();

    top_level(&mut w, root);
    proxy::proxy(&mut w, root, &mut out, &mut pairing);
    // The RPC cluster: coordinator (this machine) + workers' rpc-servers, serving the default model.
    let default_model = fleet::default_model(root);
    fleet::models(&mut w, root, default_model.as_ref());
    let rpc = fleet::workers(&mut w, root, &mut fleet);
    if let Some(coordinator) = get(root, "coordinator").and_then(Yaml::as_mapping) {
        fleet::coordinator(
            &mut w,
            coordinator,
            default_model.as_ref(),
            rpc,
            &mut fleet,
            &mut pairing,
        );
    }
    fleet::binaries(&mut w, root);
    if !pairing.contains_key("target") {
        pairing.insert("name".into(), "tightwad".into());
        pairing.insert("target".into(), "http://127.0.0.1:8080".into());
    }
    write(w, out, pairing, fleet, no_api_key)
}

/// Reports the top-level sections with no counterpart, the known ones with why.
fn top_level(w: &mut Walker, root: &serde_norway::Mapping) {
    w.rest(
        "",
        root,
        &["proxy", "coordinator", "workers", "models", "binaries"],
        "no counterpart in Tightwad",
    );
    for (key, reason) in [
        ("ram_reclaim", "llama.cpp memory-maps models; Tightwad does not reclaim page cache"),
        ("peer", "replaced by tightwad-agent (QUIC with pinned mutual TLS on port 7420): install it on each host and enroll it with `tightwad token`"),
        ("quality_gate", "no quality gate: Tightwad's output is always the target's own"),
    ] {
        if let Some(entry) = w.not_carried.iter_mut().find(|n| n.key == key) {
            entry.reason = reason.to_string();
        }
    }
}

/// The config's text: a header, what was not carried over, the access note, the TOML, then the
/// hosts' `agent.toml` snippets as comments.
fn write(
    w: Walker,
    mut out: toml::Table,
    pairing: toml::Table,
    fleet: Fleet,
    no_api_key: bool,
) -> anyhow::Result<Conversion> {
    let Fleet {
        hosts,
        pools,
        snippets,
    } = fleet;
    if !hosts.is_empty() {
        out.insert("hosts".into(), hosts.into());
    }
    if !pools.is_empty() {
        out.insert("pools".into(), pools.into());
    }
    out.insert("pairings".into(), vec![toml::Value::Table(pairing)].into());
    let listen: Option<std::net::SocketAddr> = out
        .get("listen")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok());
    let access = match &listen {
        Some(addr) => super::access::decide(addr, out.contains_key("api_keys"), no_api_key),
        None => super::access::Access::Local,
    };
    let body = toml::to_string(&out)?;
    let mut text = String::from("# Tightwad coordinator config, converted by `tightwad init --from` from a Python Tightwad config.\n# Check it with `tightwad doctor`; serve with `tightwad proxy --config <this file>`.\n");
    if !w.not_carried.is_empty() {
        text.push_str("#\n# Not carried over:\n");
        for n in &w.not_carried {
            text.push_str(&format!("#   {}: {}\n", n.key, n.reason));
        }
    }
    text.push('\n');
    if let (Some(addr), super::access::Access::Generated(_) | super::access::Access::Open) =
        (&listen, &access)
    {
        text.push_str(&access.lines(addr));
    }
    text.push_str(&body);
    for s in &snippets {
        text.push('\n');
        text.push_str(s);
    }
    Ok(Conversion {
        toml: text,
        not_carried: w.not_carried,
        agent_snippets: snippets,
        access,
    })
}
