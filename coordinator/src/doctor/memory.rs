//! Memory fit per host: model weights (the GGUF's tensor bytes) plus a KV cache estimate for the
//! configured context, against the memory the host's agent reports. An RPC worker holds its
//! share of a pooled model in device memory, which cannot spill to system RAM, so there it must
//! fit; MoE models on small RPC workers are flagged with the estimate (the field report's worker
//! was asked for a 22.3 GB buffer on a 12 GB card).

use std::collections::BTreeMap;

use serde_json::json;
use tightwad_protocol::messages::{AgentStatus, GgufSummary, ModelArg};

use tightwad_placement::plan::{
    check, config_from_args, plan, DeviceKind, ModelBytes, PlanOptions, Target,
};

use super::agents::Cluster;
use super::report::{gib, Category, Check, Status};
use crate::cluster::layout::{Layout, ProcessRef};

pub fn params(count: u64) -> String {
    if count >= 1_000_000_000 {
        format!("{:.1}B", count as f64 / 1e9)
    } else {
        format!("{:.0}M", count as f64 / 1e6)
    }
}

/// The context a llama-server will allocate: `-c`/`--ctx-size`, else (llama.cpp's default 0)
/// the model's training context.
pub fn context_of(args: &[String], model: &GgufSummary) -> u64 {
    let mut iter = args.iter();
    let mut configured = None;
    while let Some(arg) = iter.next() {
        if let Some(v) = arg.strip_prefix("--ctx-size=") {
            configured = v.parse().ok();
        } else if arg == "-c" || arg == "--ctx-size" {
            configured = iter.next().and_then(|v| v.parse().ok());
        }
    }
    match configured {
        Some(c) if c > 0 => c,
        _ => model.context_length.unwrap_or(4096),
    }
}

/// Weights + KV of one model for `context` tokens.
fn model_bytes(model: &ModelArg, args: &[String]) -> Option<(u64, u64)> {
    let g = model.gguf.as_ref()?;
    let weights = if g.tensor_bytes > 0 {
        g.tensor_bytes
    } else {
        model.size_bytes
    };
    // The estimate is for F16 caches; quantized ones (`-ctk q8_0 -ctv q8_0`) are smaller.
    let f16 = g.kv_cache_bytes(context_of(args, g)).unwrap_or(0) as f64;
    let k = cache_type_bytes(args, &["-ctk", "--cache-type-k"]);
    let v = cache_type_bytes(args, &["-ctv", "--cache-type-v"]);
    Some((weights, (f16 * (k + v) / 4.0) as u64))
}

/// Bytes per cache element of the type named by one of `flags` (llama.cpp's default f16: 2):
/// the placement planner's reading of the same flags.
fn cache_type_bytes(args: &[String], flags: &[&str]) -> f64 {
    tightwad_placement::plan::cache_element_bytes(
        tightwad_placement::plan::flag_value(args, flags).as_deref(),
    )
}

/// Memory a host offers: (device memory, system RAM total, RAM available). Device memory is the
/// GPUs' VRAM, or the RAM itself on a host without GPU (llama.cpp then runs on the CPU).
fn capacity(status: &AgentStatus) -> (u64, u64, u64) {
    let inv = &status.inventory;
    let ram = inv.host.ram_total_bytes;
    let vram: u64 = if is_mac(status) {
        // Unified memory: Metal's recommendedMaxWorkingSetSize is about 70% of it (the field
        // report's 16 GB M2 reported 11,453 MiB).
        ram / 10 * 7
    } else {
        inv.gpus.iter().map(|g| g.memory_total_mib << 20).sum()
    };
    (
        if vram > 0 { vram } else { ram },
        ram,
        inv.host.ram_available_bytes,
    )
}

fn running(state: tightwad_protocol::messages::ProcessState) -> bool {
    use tightwad_protocol::messages::ProcessState;
    matches!(state, ProcessState::Ready | ProcessState::Starting)
}

/// A Mac: llama.cpp runs on Metal there, in unified memory (the agent lists no GPU for it).
fn is_mac(status: &AgentStatus) -> bool {
    let os = status.inventory.host.os.to_ascii_lowercase();
    os.contains("macos") || os.contains("mac os") || os.contains("darwin")
}

#[derive(Default)]
struct HostLoad {
    /// (what, bytes) that may spill into system RAM (a llama-server's own weights and KV).
    local: Vec<(String, u64)>,
    /// (what, bytes) held by an rpc-server for a remote llama-server: device memory only.
    rpc: Vec<(String, u64)>,
    /// (what, bytes, device memory) of each RPC device a pool places here: one rpc-server
    /// exposes one device, which must hold its share alone.
    rpc_devices: Vec<(String, u64, u64)>,
    /// (message, hint) for MoE pools whose placement overflows an RPC device.
    moe_notes: Vec<(String, String)>,
    /// Bytes of processes not running yet: they still have to come out of the RAM available now
    /// (a running server's memory is already taken from it).
    pending: u64,
    /// Bytes of `local` that the flags keep in system RAM on a GPU host (`-ngl 0`: all of it;
    /// `--cpu-moe`: the expert tensors).
    in_ram: u64,
}

/// The value of the first of `flags` in `args` (`-ngl 0`, `--n-gpu-layers=0`).
fn flag_value<'a>(args: &'a [String], flags: &[&str]) -> Option<&'a str> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if flags.contains(&arg.as_str()) {
            return iter.next().map(String::as_str);
        }
        if let Some((flag, value)) = arg.split_once('=') {
            if flags.contains(&flag) {
                return Some(value);
            }
        }
    }
    None
}

/// What a process's flags keep in system RAM instead of GPU memory.
fn bytes_kept_in_ram(args: &[String], model: &ModelArg, total: u64) -> u64 {
    let is_draft = matches!(
        model.flag.as_str(),
        "-md" | "--model-draft" | "--spec-draft-model"
    );
    let (layer_flags, moe_flags): (&[&str], &[&str]) = if is_draft {
        (
            &[
                "-ngld",
                "--spec-draft-ngl",
                "--gpu-layers-draft",
                "--n-gpu-layers-draft",
            ],
            &["-cmoed", "--cpu-moe-draft", "--spec-draft-cpu-moe"],
        )
    } else {
        (
            &["-ngl", "--gpu-layers", "--n-gpu-layers"],
            &["-cmoe", "--cpu-moe"],
        )
    };
    if flag_value(args, layer_flags) == Some("0") {
        return total;
    }
    if args.iter().any(|a| moe_flags.contains(&a.as_str())) {
        return model
            .gguf
            .as_ref()
            .map(|g| g.expert_tensor_bytes)
            .unwrap_or(0);
    }
    0
}

/// What the planner needs to place a pool's model: the model's bytes (from the coordinator
/// host's GGUF inventory), the devices (each worker's rpc-server, then the coordinator's GPUs,
/// then its RAM), the context and cache types from the coordinator's arguments, and those
/// arguments. Doctor checks the configured flags with it; `tightwad up` plans with it
/// (`place = true`).
pub struct PoolPlacement {
    pub bytes: ModelBytes,
    pub target: Target,
    pub options: PlanOptions,
    pub args: Vec<String>,
}

pub fn pool_placement(
    cluster: &Cluster,
    pool: &crate::cluster::layout::PoolEntry,
) -> Option<PoolPlacement> {
    let model = cluster.main_model(&pool.coordinator)?;
    let g = model.gguf.as_ref()?;
    let args = cluster
        .check(&pool.coordinator)
        .map(|c| c.args.clone())
        .unwrap_or_default();
    let coordinator = cluster.status(&pool.coordinator.host)?;
    let mut devices = Vec::new();
    for worker in &pool.workers {
        let (Some(view), Some(status)) = (cluster.host(&worker.host), cluster.status(&worker.host))
        else {
            continue;
        };
        let worker_process = status.processes.iter().find(|p| p.name == worker.process);
        let endpoint = crate::cluster::launch::rpc_address(&view.entry.address, worker_process);
        devices.push(crate::cluster::devices::rpc_device(
            &worker.host,
            &endpoint,
            status,
        ));
    }
    devices.extend(crate::cluster::devices::gpu_devices(
        &pool.coordinator.host,
        coordinator,
    ));
    let target = Target {
        host: pool.coordinator.host.clone(),
        ram_bytes: coordinator.inventory.host.ram_total_bytes,
        devices,
    };
    let bytes = ModelBytes::from_summary(g, model.size_bytes);
    let options = PlanOptions {
        context: Some(context_of(&args, g)),
        cache_k_bytes: cache_type_bytes(&args, &["-ctk", "--cache-type-k"]),
        cache_v_bytes: cache_type_bytes(&args, &["-ctv", "--cache-type-v"]),
        ..PlanOptions::default()
    };
    Some(PoolPlacement {
        bytes,
        target,
        options,
        args,
    })
}

pub fn checks(cluster: &Cluster, layout: &Layout) -> Vec<Check> {
    let mut loads: BTreeMap<String, HostLoad> = BTreeMap::new();
    let pooled: std::collections::BTreeSet<&ProcessRef> =
        layout.pools.iter().map(|p| &p.coordinator).collect();
    let native_targets: std::collections::BTreeSet<&ProcessRef> =
        layout.native_pairings.iter().map(|n| &n.target).collect();

    // Plain llama-servers: everything on their own host.
    for (reference, view) in &cluster.processes {
        let Ok(check) = &view.check else { continue };
        if pooled.contains(reference) {
            continue;
        }
        for model in &check.models {
            let is_draft = matches!(
                model.flag.as_str(),
                "-md" | "--model-draft" | "--spec-draft-model"
            );
            if is_draft && native_targets.contains(reference) {
                continue; // on the draft worker, below
            }
            if let Some((w, kv)) = model_bytes(model, &check.args) {
                let load = loads.entry(reference.host.clone()).or_default();
                load.local.push((
                    format!("{reference} {} {} + KV {}", model.flag, gib(w), gib(kv)),
                    w + kv,
                ));
                load.in_ram += bytes_kept_in_ram(&check.args, model, w + kv);
                if !running(check.state) {
                    load.pending += w + kv;
                }
            }
        }
    }

    // Pools: llama.cpp's own placement of the model over the workers' RPC devices and the
    // coordinator's GPUs, as the coordinator's flags configure it (the planner's `check`):
    // experts go with their layers unless `-ot`/`--cpu-moe` keep them in RAM, which is how a
    // 12 GB RPC worker gets asked for 22.3 GB.
    for pool in &layout.pools {
        let Some(PoolPlacement {
            bytes,
            target,
            options,
            args,
        }) = pool_placement(cluster, pool)
        else {
            continue;
        };
        let given = config_from_args(&bytes, &args, target.devices.len());
        let placed = check(&bytes, &target, &options, &given);
        let running_now = cluster
            .check(&pool.coordinator)
            .is_some_and(|c| running(c.state));
        let mut over_rpc = Vec::new();
        for d in &placed.devices {
            let what = format!(
                "pool {} on {}: {} (weights {}, experts {}, KV {})",
                pool.name,
                d.name,
                gib(d.total_bytes()),
                gib(d.weights_bytes),
                gib(d.expert_bytes),
                gib(d.kv_bytes)
            );
            let load = loads.entry(d.host.clone()).or_default();
            if !running_now {
                load.pending += d.total_bytes();
            }
            if d.kind == Some(DeviceKind::Rpc) {
                if d.total_bytes() > d.capacity_bytes {
                    over_rpc.push(d.clone());
                }
                load.rpc_devices
                    .push((what, d.total_bytes(), d.capacity_bytes));
            } else {
                load.local.push((what, d.total_bytes()));
                if d.kind.is_none() {
                    load.in_ram += d.total_bytes();
                }
            }
        }
        if !over_rpc.is_empty() && bytes.is_moe() {
            let planned = plan(&bytes, &target, &options);
            for d in over_rpc {
                let load = loads.entry(d.host.clone()).or_default();
                load.moe_notes.push((
                    format!(
                        "pool {}: MoE model ({} of {} weights are routed experts): with these flags llama.cpp asks {} on {} for {} (experts {}) but it has {}",
                        pool.name,
                        gib(bytes.expert_weights()),
                        gib(bytes.total_weights()),
                        d.host,
                        d.name,
                        gib(d.total_bytes()),
                        gib(d.expert_bytes),
                        gib(d.capacity_bytes)
                    ),
                    format!(
                        "split by each device's own memory{}: the placement plan (`tightwad inspect MODEL --plan`) gives {}{}",
                        if planned.config.cpu_expert_layers.is_empty() {
                            ""
                        } else {
                            " and keep the experts that do not fit in the coordinator's RAM"
                        },
                        crate::cluster::launch::shell_join(&planned.flags),
                        if planned.fits { "" } else { " (and even that does not fit: a smaller quant or context)" }
                    ),
                ));
            }
        }
    }

    // Native pairing: the draft model and its KV live on the draft host's rpc-server.
    for native in &layout.native_pairings {
        let Some(model) = cluster.draft_model(&native.target) else {
            continue;
        };
        let args = cluster
            .check(&native.target)
            .map(|c| c.args.clone())
            .unwrap_or_default();
        if let Some((w, kv)) = model_bytes(model, &args) {
            let load = loads.entry(native.draft_worker.host.clone()).or_default();
            load.rpc.push((
                format!("native {} draft {} + KV {}", native.name, gib(w), gib(kv)),
                w + kv,
            ));
            if !cluster
                .check(&native.target)
                .is_some_and(|c| running(c.state))
            {
                load.pending += w + kv;
            }
        }
    }

    let mut checks = Vec::new();
    for (host, load) in loads {
        let Some(status) = cluster.status(&host) else {
            checks.push(Check::new(
                Category::Memory,
                host,
                Status::Skip,
                "host unreachable",
            ));
            continue;
        };
        let (device, ram, available) = capacity(status);
        let has_gpu = !status.inventory.gpus.is_empty();
        let local: u64 = load.local.iter().map(|(_, b)| b).sum();
        let rpc: u64 = load.rpc.iter().map(|(_, b)| b).sum::<u64>()
            + load.rpc_devices.iter().map(|(_, b, _)| b).sum::<u64>();
        let over_device = load.rpc_devices.iter().any(|(_, b, cap)| b > cap);
        let need = local + rpc;
        let items = load
            .local
            .iter()
            .chain(&load.rpc)
            .map(|(what, _)| what.clone())
            .chain(load.rpc_devices.iter().map(|(what, _, _)| what.clone()))
            .collect::<Vec<_>>()
            .join("; ");
        let memory_name = if is_mac(status) {
            "Metal working set"
        } else if has_gpu {
            "VRAM"
        } else {
            "RAM"
        };
        let details = json!({
            "need_bytes": need, "rpc_bytes": rpc, "device_bytes": device,
            "ram_total_bytes": ram, "ram_available_bytes": available, "gpu": has_gpu,
            "items": load.local.iter().chain(&load.rpc).map(|(w, b)| json!({"what": w, "bytes": b})).collect::<Vec<_>>(),
        });
        let summary = format!(
            "needs ≈ {} ({items}) of {} {memory_name}",
            gib(need),
            gib(device)
        );
        let fits_rpc = rpc <= device && !over_device;
        let fits_at_all = need <= if has_gpu { device + ram } else { ram };
        // On a GPU host, what the flags keep in RAM does not count against VRAM.
        let on_device = need.saturating_sub(if has_gpu { load.in_ram } else { 0 });
        let check = if is_mac(status) && need > device {
            Check::new(
                Category::Memory,
                host.clone(),
                Status::Fail,
                format!("over the Metal working set: {summary}"),
            )
            .hint("Metal lets the GPU use about 70% of a Mac's unified memory (the field report's 16 GB M2: 11,453 MiB) and the server dies in warm-up when it asks for more: use a smaller quantization or context, or try `--no-warmup` if the estimate is only just over")
        } else if !fits_rpc {
            Check::new(Category::Memory, host.clone(), Status::Fail, format!("RPC buffers do not fit: {summary}"))
                .hint("an rpc-server cannot spill into system RAM: give this worker a smaller share (fewer workers' memory elsewhere, a smaller quant), or keep those layers on the coordinator (CPU offload) instead of RPC")
        } else if !fits_at_all {
            Check::new(Category::Memory, host.clone(), Status::Fail, format!("does not fit: {summary}"))
                .hint("use a smaller quantization or a shorter context (-c), or run this model on a host with more memory (`tightwad status` lists them)")
        } else if has_gpu && on_device > device {
            Check::new(Category::Memory, host.clone(), Status::Warn, format!("spills {} into system RAM: {summary}", gib(on_device - device)))
                .hint("layers in system RAM run at CPU speed: a smaller quant or context keeps them on the GPU")
        } else if !has_gpu && load.pending > available {
            Check::new(
                Category::Memory,
                host.clone(),
                Status::Warn,
                format!(
                    "more than the {} RAM available now: {summary}",
                    gib(available)
                ),
            )
            .hint("other programs hold memory on this host: stop them, or expect swapping")
        } else {
            Check::new(Category::Memory, host.clone(), Status::Pass, summary)
        };
        checks.push(check.details(details));
        for (note, hint) in load.moe_notes {
            checks.push(Check::new(Category::Memory, host.clone(), Status::Warn, note).hint(hint));
        }
    }
    checks
}

#[cfg(test)]
mod tests;
