//! The predecessor's RPC cluster: `models:`, `workers:`, `coordinator:` and `binaries:`. The
//! coordinator machine and each worker become `[[hosts]]` (agents on port 7420), the default
//! model's llama-server and the workers' rpc-servers an RPC `[[pools]]` entry, and the
//! `agent.toml` processes each host needs are written as comments, since we cannot write the
//! hosts' own files from here.

use std::collections::BTreeSet;

use serde_norway::Value as Yaml;

use super::yaml::{get, key_name, number, quote, slug, text, Walker};

/// The agent's default peer-protocol port.
const AGENT_PORT: u16 = 7420;

/// What the fleet sections write: `[[hosts]]`, `[[pools]]` and the hosts' `agent.toml` snippets.
#[derive(Default)]
pub(super) struct Fleet {
    pub(super) hosts: Vec<toml::Value>,
    pub(super) pools: Vec<toml::Value>,
    pub(super) snippets: Vec<String>,
}

/// The workers' rpc-servers, for the pool (`HOST/PROCESS`) and the llama-server's `--rpc`.
#[derive(Default)]
pub(super) struct RpcWorkers {
    worker_refs: Vec<toml::Value>,
    rpc_addresses: Vec<String>,
}

/// The model the pool serves: the one marked `default: true`, else the first; its name and entry.
pub(super) fn default_model(root: &serde_norway::Mapping) -> Option<(String, Yaml)> {
    let models = get(root, "models").and_then(Yaml::as_mapping);
    models.and_then(|m| {
        m.iter()
            .find(|(_, v)| {
                v.as_mapping()
                    .and_then(|v| get(v, "default"))
                    .and_then(Yaml::as_bool)
                    == Some(true)
            })
            .or_else(|| m.iter().next())
            .map(|(k, v)| (key_name(k), v.clone()))
    })
}

/// `models:` reports what it cannot carry: MoE placement, unknown keys, every model but the default.
pub(super) fn models(
    w: &mut Walker,
    root: &serde_norway::Mapping,
    default_model: Option<&(String, Yaml)>,
) {
    let models = get(root, "models").and_then(Yaml::as_mapping);
    if let Some(models) = models {
        for (name, model) in models {
            let name = key_name(name);
            let Some(model) = model.as_mapping() else {
                w.skip(&format!("models.{name}"), "not a mapping");
                continue;
            };
            for key in ["moe_placement", "moe_hot_profile"] {
                w.present(
                    &format!("models.{name}."),
                    model,
                    key,
                    "no MoE expert placement: pass llama.cpp's -ot flags in the process's args",
                );
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
            if default_model.map(|(n, _)| n) != Some(&name) {
                w.skip(&format!("models.{name}"), "only the default model becomes the pool's llama-server; add other models as agent processes");
            }
        }
    }
}

/// `workers:` → one `[[hosts]]` entry and one `agent.toml` snippet per worker.
pub(super) fn workers(
    w: &mut Walker,
    root: &serde_norway::Mapping,
    fleet: &mut Fleet,
) -> RpcWorkers {
    let workers = get(root, "workers")
        .and_then(Yaml::as_sequence)
        .cloned()
        .unwrap_or_default();
    let mut rpc = RpcWorkers::default();
    let mut names = BTreeSet::new();
    for (i, worker) in workers.iter().enumerate() {
        let key = format!("workers[{i}]");
        let Some(worker) = worker.as_mapping() else {
            w.skip(&key, "not a mapping");
            continue;
        };
        worker_host(w, &key, worker, &mut names, fleet, &mut rpc);
    }
    rpc
}

/// One worker (`workers[i]`, named `key`) → its host, under a name not yet in `names`.
fn worker_host(
    w: &mut Walker,
    key: &str,
    worker: &serde_norway::Mapping,
    names: &mut BTreeSet<String>,
    fleet: &mut Fleet,
    rpc: &mut RpcWorkers,
) {
    let Some(address) = get(worker, "host").and_then(text) else {
        w.skip(&format!("{key}.host"), "missing");
        return;
    };
    let mut name = slug(&address);
    while !names.insert(name.clone()) {
        name.push('_');
    }
    let mut host = toml::Table::new();
    host.insert("name".into(), name.clone().into());
    host.insert("address".into(), format!("{address}:{AGENT_PORT}").into());
    fleet.hosts.push(host.into());
    let prefix = format!("{key}.");
    w.present(
        &prefix,
        worker,
        "ssh_user",
        "no SSH: the agent on the host does the work",
    );
    w.present(
        &prefix,
        worker,
        "peer_port",
        &format!("the agent listens on {AGENT_PORT} (QUIC), written in [[hosts]]"),
    );
    let mut snippet = format!("# In {name}'s agent.toml:\n");
    if let Some(dir) = get(worker, "model_dir").and_then(text) {
        snippet.push_str(&format!("#   model_dirs = [{}]\n", quote(&dir)));
    }
    rpc_servers(w, key, worker, &name, &address, &mut snippet, rpc);
    w.rest(
        &format!("{key}."),
        worker,
        &["host", "ssh_user", "model_dir", "peer_port", "gpus"],
        "unknown key in the predecessor's schema",
    );
    fleet.snippets.push(snippet);
}

/// A worker's `gpus` → one rpc-server process per GPU (in `snippet`) and its pool entry.
fn rpc_servers(
    w: &mut Walker,
    key: &str,
    worker: &serde_norway::Mapping,
    name: &str,
    address: &str,
    snippet: &mut String,
    rpc: &mut RpcWorkers,
) {
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
        rpc.worker_refs.push(format!("{name}/{process}").into());
        rpc.rpc_addresses.push(format!("{address}:{port}"));
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
}

/// `coordinator:` → the `coordinator` host, its llama-server snippet, the pool of the workers'
/// rpc-servers and, when `proxy:` named none, the pairing's target.
pub(super) fn coordinator(
    w: &mut Walker,
    coordinator: &serde_norway::Mapping,
    default_model: Option<&(String, Yaml)>,
    rpc: RpcWorkers,
    fleet: &mut Fleet,
    pairing: &mut toml::Table,
) {
    let (port, args) = llama_server_args(w, coordinator, default_model);
    w.present(
        "coordinator.",
        coordinator,
        "env",
        "set it in the process's env in agent.toml",
    );
    for key in ["backend", "gpus"] {
        w.present(
            "coordinator.",
            coordinator,
            key,
            "the agent detects GPUs and llama.cpp builds itself (`tightwad status` shows them)",
        );
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
    fleet.hosts.insert(0, host.into());
    let quoted: Vec<String> = args.iter().map(|a| quote(a)).collect();
    fleet.snippets.insert(0, format!(
        "# In the coordinator machine's agent.toml (`tightwad up` adds --rpc {}):\n#   [[process]]\n#   name = \"llama-server\"\n#   kind = \"llama-server\"\n#   args = [{}]\n",
        rpc.rpc_addresses.join(","),
        quoted.join(", ")
    ));
    if !rpc.worker_refs.is_empty() {
        let mut pool = toml::Table::new();
        pool.insert(
            "name".into(),
            default_model
                .map(|(n, _)| slug(n))
                .unwrap_or_else(|| "pool".into())
                .into(),
        );
        pool.insert("coordinator".into(), "coordinator/llama-server".into());
        pool.insert("workers".into(), rpc.worker_refs.into());
        fleet.pools.push(pool.into());
    }
    if !pairing.contains_key("target") {
        pairing.insert("target".into(), format!("http://127.0.0.1:{port}").into());
        pairing.entry("name").or_insert_with(|| "tightwad".into());
    }
}

/// The coordinator's llama-server: its port and args (the default model's path, context and
/// flags, then `extra_args`).
fn llama_server_args(
    w: &mut Walker,
    coordinator: &serde_norway::Mapping,
    default_model: Option<&(String, Yaml)>,
) -> (u64, Vec<String>) {
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
    match default_model {
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
    (port, args)
}

/// `binaries:` → every key reported: binary paths belong to each host's `agent.toml` now.
pub(super) fn binaries(w: &mut Walker, root: &serde_norway::Mapping) {
    if let Some(binaries) = get(root, "binaries").and_then(Yaml::as_mapping) {
        for key in binaries.keys() {
            w.skip(&format!("binaries.{}", key_name(key)), "binary paths are per host now: set them in that host's agent.toml under [binaries] (llama_server, rpc_server)");
        }
    }
}
