//! A plan read back from llama-server arguments (`-c`, `-ngl`, `--tensor-split`, `--rpc`, `-ot`,
//! `--cpu-moe`): what a given command line would allocate, for [`evaluate`](super::evaluate).

use super::*;

/// The value of the last of `names` in `args` (`-c 4096` or `--ctx-size=4096`), as llama.cpp
/// reads its flags: a later one wins.
pub fn flag_value(args: &[String], names: &[&str]) -> Option<String> {
    let mut found = None;
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        if names.contains(&a.as_str()) {
            found = iter.next().cloned();
        } else if let Some((f, v)) = a.split_once('=') {
            if names.contains(&f) {
                found = Some(v.to_string());
            }
        }
    }
    found
}

/// Bytes per KV-cache element of a `-ctk`/`-ctv` type (ggml block sizes: q8_0 34 bytes / 32,
/// q5_* 22–24 / 32, q4_* 18–20 / 32, iq4_nl 18 / 32); llama.cpp's default f16 (2) otherwise.
pub fn cache_element_bytes(kind: Option<&str>) -> f64 {
    match kind.map(str::to_ascii_lowercase).as_deref() {
        Some("f32") => 4.0,
        Some("q8_0") => 34.0 / 32.0,
        Some("q5_0") => 22.0 / 32.0,
        Some("q5_1") => 24.0 / 32.0,
        Some("q4_0") | Some("iq4_nl") => 18.0 / 32.0,
        Some("q4_1") => 20.0 / 32.0,
        _ => 2.0,
    }
}

/// Plan options from llama-server arguments: `-c`, `-ctk`/`-ctv`, `-ub` (headroom 0: a
/// prediction of what the server allocates, not a plan to fit).
pub fn options_from_args(args: &[String]) -> PlanOptions {
    let value = |names: &[&str]| flag_value(args, names);
    let cache = |names: &[&str]| cache_element_bytes(value(names).as_deref());
    PlanOptions {
        context: value(&["-c", "--ctx-size"]).and_then(|v| v.parse().ok()),
        cache_k_bytes: cache(&["-ctk", "--cache-type-k"]),
        cache_v_bytes: cache(&["-ctv", "--cache-type-v"]),
        ubatch: value(&["-ub", "--ubatch-size"])
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        headroom_bytes: 0,
        experts_on_rpc: true,
    }
}

/// The RPC endpoints of `--rpc a:p,b:q`.
pub fn rpc_endpoints(args: &[String]) -> Vec<String> {
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        let list = if a == "--rpc" {
            iter.next().cloned()
        } else {
            a.strip_prefix("--rpc=").map(str::to_string)
        };
        if let Some(list) = list {
            return list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
    }
    Vec::new()
}

/// llama.cpp's configuration from llama-server arguments: `-ngl`, `--tensor-split`,
/// `--cpu-moe`, `--n-cpu-moe`, and `-ot PATTERN=CPU` overrides whose pattern selects expert
/// tensors of whole layers.
pub fn config_from_args(model: &ModelBytes, args: &[String], n_devices: usize) -> Config {
    let value = |names: &[&str]| flag_value(args, names);
    let all = model.n_layer + 1;
    let gpu_layers = match value(&["-ngl", "--gpu-layers", "--n-gpu-layers"]).as_deref() {
        Some("all") | Some("auto") | None => all,
        Some(v) => v.parse::<u32>().map(|n| n.min(all)).unwrap_or(all),
    };
    let tensor_split: Vec<f64> = value(&["-ts", "--tensor-split"])
        .map(|v| {
            v.split([',', '/'])
                .map(|x| x.trim().parse::<f64>().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    let tensor_split = if tensor_split.len() == n_devices {
        tensor_split
    } else {
        Vec::new()
    };
    let mut cpu_expert_layers = BTreeSet::new();
    if args.iter().any(|a| a == "-cmoe" || a == "--cpu-moe") {
        cpu_expert_layers.extend(0..model.n_layer);
    }
    if let Some(n) = value(&["-ncmoe", "--n-cpu-moe"]).and_then(|v| v.parse::<u32>().ok()) {
        cpu_expert_layers.extend(0..n.min(model.n_layer));
    }
    let mut overrides = Vec::new();
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        if a == "-ot" || a == "--override-tensor" {
            if let Some(v) = iter.next() {
                overrides.push(v.clone());
            }
        } else if let Some(v) = a.strip_prefix("--override-tensor=") {
            overrides.push(v.to_string());
        }
    }
    for spec in overrides.iter().flat_map(|o| o.split(',')) {
        let Some((pattern, buft)) = spec.rsplit_once('=') else {
            continue;
        };
        if !buft.eq_ignore_ascii_case("CPU") {
            continue;
        }
        let Ok(re) = regex::Regex::new(pattern) else {
            continue;
        };
        for il in 0..model.n_layer {
            let names = ["up", "down", "gate"].map(|w| format!("blk.{il}.ffn_{w}_exps.weight"));
            if names.iter().any(|n| re.is_match(n)) {
                cpu_expert_layers.insert(il);
            }
        }
    }
    Config {
        gpu_layers,
        tensor_split,
        cpu_expert_layers,
    }
}
