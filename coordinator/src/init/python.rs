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

use std::collections::BTreeSet;
use tightwad_serve::engine::controller::K_MAX;

use serde::Serialize;
use serde_norway::Value as Yaml;

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

/// The agent's default peer-protocol port.
const AGENT_PORT: u16 = 7420;

struct Walker {
    not_carried: Vec<NotCarried>,
}

impl Walker {
    fn skip(&mut self, key: &str, reason: &str) {
        self.not_carried.push(NotCarried {
            key: key.to_string(),
            reason: reason.to_string(),
        });
    }

    /// Reports every key of `map` not in `handled`.
    fn rest(&mut self, prefix: &str, map: &serde_norway::Mapping, handled: &[&str], reason: &str) {
        for key in map.keys() {
            let name = key_name(key);
            if !handled.contains(&name.as_str()) {
                self.skip(&format!("{prefix}{name}"), reason);
            }
        }
    }
}

fn key_name(key: &Yaml) -> String {
    match key {
        Yaml::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

fn get<'a>(map: &'a serde_norway::Mapping, key: &str) -> Option<&'a Yaml> {
    map.get(Yaml::String(key.to_string()))
        .filter(|v| !v.is_null())
}

fn text(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(v: &Yaml) -> Option<u64> {
    match v {
        Yaml::Number(n) => n.as_u64(),
        Yaml::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `10485760`, `"10MB"`, `"10 MiB"`, `"512k"` → bytes.
fn byte_size(v: &Yaml) -> Option<u64> {
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
fn slug(s: &str) -> String {
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
fn upstream(w: &mut Walker, key: &str, v: &Yaml) -> Option<(String, Option<String>)> {
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
    let mut hosts: Vec<toml::Value> = Vec::new();
    let mut pools: Vec<toml::Value> = Vec::new();
    let mut snippets: Vec<String> = Vec::new();

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

    if let Some(proxy) = get(root, "proxy").and_then(Yaml::as_mapping) {
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
        let target = get(proxy, "target").and_then(|v| upstream(&mut w, "proxy.target", v));
        let mut draft = get(proxy, "draft").and_then(|v| upstream(&mut w, "proxy.draft", v));
        // More drafters become `drafts`: the pairing measures each and drafts with whichever
        // delivers the most; there is no vote, the output is always the target's own.
        let mut more_drafts: Vec<String> = Vec::new();
        if let Some(Yaml::Sequence(drafters)) = get(proxy, "drafters") {
            for (i, d) in drafters.iter().enumerate() {
                let key = format!("proxy.drafters[{i}]");
                match upstream(&mut w, &key, d) {
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
            if get(proxy, key).is_some() {
                w.skip(&format!("proxy.{key}"), reason);
            }
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
    } else if get(root, "proxy").is_some() {
        w.skip("proxy", "not a mapping");
    }

    // The RPC cluster: coordinator (this machine) + workers' rpc-servers, serving the default model.
    let models = get(root, "models").and_then(Yaml::as_mapping);
    let default_model = models.and_then(|m| {
        m.iter()
            .find(|(_, v)| {
                v.as_mapping()
                    .and_then(|v| get(v, "default"))
                    .and_then(Yaml::as_bool)
                    == Some(true)
            })
            .or_else(|| m.iter().next())
            .map(|(k, v)| (key_name(k), v.clone()))
    });
    if let Some(models) = models {
        for (name, model) in models {
            let name = key_name(name);
            let Some(model) = model.as_mapping() else {
                w.skip(&format!("models.{name}"), "not a mapping");
                continue;
            };
            for key in ["moe_placement", "moe_hot_profile"] {
                if get(model, key).is_some() {
                    w.skip(
                        &format!("models.{name}.{key}"),
                        "no MoE expert placement: pass llama.cpp's -ot flags in the process's args",
                    );
                }
            }
            w.rest(
                &format!("models.{name}."),
                model,
                &[
                    "path",
                    "ctx_size",
                    "predict",
                    "flash_attn",
                    "default",
                    "moe_placement",
                    "moe_hot_profile",
                ],
                "unknown key in the predecessor's schema",
            );
            if default_model.as_ref().map(|(n, _)| n) != Some(&name) {
                w.skip(&format!("models.{name}"), "only the default model becomes the pool's llama-server; add other models as agent processes");
            }
        }
    }
    let workers = get(root, "workers")
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default();
    let coordinator = get(root, "coordinator").and_then(Yaml::as_mapping);
    let mut worker_refs: Vec<toml::Value> = Vec::new();
    let mut rpc_addresses = Vec::new();
    let mut names = BTreeSet::new();
    for (i, worker) in workers.iter().enumerate() {
        let key = format!("workers[{i}]");
        let Some(worker) = worker.as_mapping() else {
            w.skip(&key, "not a mapping");
            continue;
        };
        let Some(address) = get(worker, "host").and_then(text) else {
            w.skip(&format!("{key}.host"), "missing");
            continue;
        };
        let mut name = slug(&address);
        while !names.insert(name.clone()) {
            name.push('_');
        }
        let mut host = toml::Table::new();
        host.insert("name".into(), name.clone().into());
        host.insert("address".into(), format!("{address}:{AGENT_PORT}").into());
        hosts.push(host.into());
        if get(worker, "ssh_user").is_some() {
            w.skip(
                &format!("{key}.ssh_user"),
                "no SSH: the agent on the host does the work",
            );
        }
        if get(worker, "peer_port").is_some() {
            w.skip(
                &format!("{key}.peer_port"),
                &format!("the agent listens on {AGENT_PORT} (QUIC), written in [[hosts]]"),
            );
        }
        let mut snippet = format!("# In {name}'s agent.toml:\n");
        if let Some(dir) = get(worker, "model_dir").and_then(text) {
            snippet.push_str(&format!("#   model_dirs = [{}]\n", quote(&dir)));
        }
        let gpus = get(worker, "gpus")
            .and_then(Yaml::as_sequence)
            .cloned()
            .unwrap_or_default();
        for (g, gpu) in gpus.iter().enumerate() {
            let gpu = gpu.as_mapping();
            let port = gpu
                .and_then(|m| get(m, "rpc_port"))
                .and_then(number)
                .unwrap_or(50052);
            let process = if gpus.len() > 1 {
                format!("rpc-{g}")
            } else {
                "rpc".into()
            };
            snippet.push_str(&format!(
                "#   [[process]]\n#   name = \"{process}\"\n#   kind = \"rpc-server\"\n#   args = [\"-H\", \"0.0.0.0\", \"-p\", \"{port}\"]\n"
            ));
            worker_refs.push(format!("{name}/{process}").into());
            rpc_addresses.push(format!("{address}:{port}"));
            if let Some(gpu) = gpu {
                w.rest(
                    &format!("{key}.gpus[{g}]."),
                    gpu,
                    &["name", "vram_gb", "rpc_port"],
                    "unknown key in the predecessor's schema",
                );
            }
        }
        if gpus.len() > 1 {
            w.skip(&format!("{key}.gpus"), "one rpc-server per GPU written; pin each to its GPU with CUDA_VISIBLE_DEVICES in the process's env");
        }
        w.rest(
            &format!("{key}."),
            worker,
            &["host", "ssh_user", "model_dir", "peer_port", "gpus"],
            "unknown key in the predecessor's schema",
        );
        snippets.push(snippet);
    }
    if let Some(coordinator) = coordinator {
        let port = get(coordinator, "port").and_then(number).unwrap_or(8080);
        let mut args = vec![
            "-ngl".to_string(),
            "999".into(),
            "--host".into(),
            get(coordinator, "host")
                .and_then(text)
                .unwrap_or_else(|| "0.0.0.0".into()),
            "--port".into(),
            port.to_string(),
        ];
        match &default_model {
            Some((_, model)) => {
                let m = model.as_mapping();
                if let Some(path) = m.and_then(|m| get(m, "path")).and_then(text) {
                    args.splice(0..0, ["-m".to_string(), path]);
                }
                let ctx = m
                    .and_then(|m| get(m, "ctx_size"))
                    .and_then(number)
                    .unwrap_or(8192);
                let predict = m
                    .and_then(|m| get(m, "predict"))
                    .and_then(number)
                    .unwrap_or(4096);
                args.extend([
                    "--ctx-size".into(),
                    ctx.to_string(),
                    "-n".into(),
                    predict.to_string(),
                ]);
                if m.and_then(|m| get(m, "flash_attn")).and_then(Yaml::as_bool) != Some(false) {
                    args.extend(["--flash-attn".into(), "on".into()]);
                }
            }
            None => w.skip(
                "coordinator",
                "no models: the llama-server below has no -m; add one",
            ),
        }
        if let Some(extra) = get(coordinator, "extra_args").and_then(Yaml::as_sequence) {
            args.extend(extra.iter().filter_map(text));
        }
        if get(coordinator, "env").is_some() {
            w.skip(
                "coordinator.env",
                "set it in the process's env in agent.toml",
            );
        }
        for key in ["backend", "gpus"] {
            if get(coordinator, key).is_some() {
                w.skip(&format!("coordinator.{key}"), "the agent detects GPUs and llama.cpp builds itself (`tightwad status` shows them)");
            }
        }
        w.rest(
            "coordinator.",
            coordinator,
            &["host", "port", "backend", "gpus", "extra_args", "env"],
            "unknown key in the predecessor's schema",
        );
        let mut host = toml::Table::new();
        host.insert("name".into(), "coordinator".into());
        host.insert("address".into(), format!("127.0.0.1:{AGENT_PORT}").into());
        hosts.insert(0, host.into());
        let quoted: Vec<String> = args.iter().map(|a| quote(a)).collect();
        snippets.insert(0, format!(
            "# In the coordinator machine's agent.toml (`tightwad up` adds --rpc {}):\n#   [[process]]\n#   name = \"llama-server\"\n#   kind = \"llama-server\"\n#   args = [{}]\n",
            rpc_addresses.join(","),
            quoted.join(", ")
        ));
        if !worker_refs.is_empty() {
            let mut pool = toml::Table::new();
            pool.insert(
                "name".into(),
                default_model
                    .as_ref()
                    .map(|(n, _)| slug(n))
                    .unwrap_or_else(|| "pool".into())
                    .into(),
            );
            pool.insert("coordinator".into(), "coordinator/llama-server".into());
            pool.insert("workers".into(), worker_refs.into());
            pools.push(pool.into());
        }
        if !pairing.contains_key("target") {
            pairing.insert("target".into(), format!("http://127.0.0.1:{port}").into());
            pairing.entry("name").or_insert_with(|| "tightwad".into());
        }
    }
    if let Some(binaries) = get(root, "binaries").and_then(Yaml::as_mapping) {
        for key in binaries.keys() {
            w.skip(&format!("binaries.{}", key_name(key)), "binary paths are per host now: set them in that host's agent.toml under [binaries] (llama_server, rpc_server)");
        }
    }
    if !pairing.contains_key("target") {
        pairing.insert("name".into(), "tightwad".into());
        pairing.insert("target".into(), "http://127.0.0.1:8080".into());
    }
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

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(byte_size(&Yaml::from("10MB")), Some(10 << 20));
        assert_eq!(byte_size(&Yaml::from("512k")), Some(512 << 10));
        assert_eq!(byte_size(&Yaml::from(4096)), Some(4096));
        assert_eq!(byte_size(&Yaml::from("lots")), None);
        assert_eq!(slug("Qwen3 32B"), "Qwen3-32B");
    }

    #[test]
    fn bad_yaml_is_a_clear_error() {
        let e = convert("proxy: [unclosed").unwrap_err().to_string();
        assert!(e.contains("not a valid YAML config"), "{e}");
        assert!(convert("- a list").is_err());
    }
}
