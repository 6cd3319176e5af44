//! llama.cpp's placement rules: what a [`Config`] puts on which device (`get_layer_buft_list`,
//! `load_tensors`), the KV and compute buffers that go with it, and the flags that ask for it.
//! The planner ([`plan`](super::plan)) chooses a configuration; this is what one means.

use std::collections::BTreeSet;

use super::{Config, DeviceUse, ModelBytes, PlanOptions, Target, EXPS_PATTERN};

pub(super) fn context_of(model: &ModelBytes, options: &PlanOptions) -> u64 {
    let c = options
        .context
        .filter(|c| *c > 0)
        .unwrap_or(model.context_length);
    // llama.cpp pads the KV cache to 256 cells.
    c.div_ceil(256).saturating_mul(256)
}

pub(super) fn kv_layer_bytes(model: &ModelBytes, options: &PlanOptions, context: u64) -> u64 {
    // kv_per_token_layer is K+V at 2 bytes each: scale each half by its cache type.
    let f16 = model.kv_per_token_layer as f64 * context as f64;
    (f16 * (options.cache_k_bytes + options.cache_v_bytes) / 4.0) as u64
}

/// Compute buffer estimate per device: about eight activations of width n_embd per token of a
/// micro-batch. A SIMPLE MODEL calibrated against the `compute buffer size` llama-server logs on
/// CPU and RPC devices (the placement test states the margin); GPU backends with flash attention
/// off need more, which the per-device headroom covers.
pub(super) fn compute_bytes(model: &ModelBytes, options: &PlanOptions, _holds_output: bool) -> u64 {
    options
        .ubatch
        .saturating_mul(4)
        .saturating_mul(model.n_embd)
        .saturating_mul(8)
}

/// The device index of each of the n_layer + 1 slots (blocks, then output), `None` for CPU —
/// llama.cpp's `get_layer_buft_list`.
pub fn slot_devices(n_layer: u32, n_devices: usize, config: &Config) -> Vec<Option<usize>> {
    let slots = n_layer as i64 + 1;
    if n_devices == 0 {
        return vec![None; slots as usize];
    }
    let ngl = (config.gpu_layers as i64).min(slots);
    let start = slots - ngl;
    let mut splits: Vec<f32> =
        if config.tensor_split.len() == n_devices && config.tensor_split.iter().any(|x| *x > 0.0) {
            config.tensor_split.iter().map(|x| *x as f32).collect()
        } else {
            vec![1.0; n_devices]
        };
    let mut sum = 0.0f32;
    for s in splits.iter_mut() {
        sum += *s;
        *s = sum;
    }
    for s in splits.iter_mut() {
        *s /= sum;
    }
    (0..slots)
        .map(|il| {
            if il < start || ngl <= 0 {
                return None;
            }
            let x = (il - start) as f32 / ngl as f32;
            let d = splits.partition_point(|s| *s <= x);
            Some(d.min(n_devices - 1))
        })
        .collect()
}

/// What `config` puts where: llama.cpp's placement of this model on `target`.
pub fn evaluate(
    model: &ModelBytes,
    target: &Target,
    options: &PlanOptions,
    config: &Config,
) -> Vec<DeviceUse> {
    let context = context_of(model, options);
    let kv = kv_layer_bytes(model, options, context);
    let n = target.devices.len();
    // No `--tensor-split`: llama.cpp splits by each device's (free) memory.
    let config = &if config.tensor_split.iter().any(|x| *x > 0.0) {
        config.clone()
    } else {
        Config {
            tensor_split: target
                .devices
                .iter()
                .map(|d| d.memory_bytes as f64)
                .collect(),
            ..config.clone()
        }
    };
    let slots = slot_devices(model.n_layer, n, config);
    let mut uses: Vec<DeviceUse> = target
        .devices
        .iter()
        .map(|d| DeviceUse {
            name: d.name.clone(),
            kind: Some(d.kind),
            host: d.host.clone(),
            capacity_bytes: d.memory_bytes,
            layers: None,
            holds_output: false,
            weights_bytes: 0,
            expert_bytes: 0,
            kv_bytes: 0,
            compute_bytes: 0,
        })
        .collect();
    uses.push(DeviceUse {
        name: "CPU".into(),
        kind: None,
        host: target.host.clone(),
        capacity_bytes: target.ram_bytes,
        layers: None,
        holds_output: false,
        weights_bytes: model.input,
        expert_bytes: 0,
        kv_bytes: 0,
        compute_bytes: 0,
    });
    let cpu = n;
    for il in 0..model.n_layer {
        let d = slots[il as usize].unwrap_or(cpu);
        let u = &mut uses[d];
        u.layers = Some(match u.layers {
            Some((first, _)) => (first, il),
            None => (il, il),
        });
        u.weights_bytes = u.weights_bytes.saturating_add(model.layer[il as usize]);
        u.kv_bytes = u.kv_bytes.saturating_add(kv);
        let experts = model.experts[il as usize];
        let holder = if config.cpu_expert_layers.contains(&il) {
            &mut uses[cpu]
        } else {
            &mut uses[d]
        };
        holder.expert_bytes = holder.expert_bytes.saturating_add(experts);
    }
    let out = slots[model.n_layer as usize].unwrap_or(cpu);
    uses[out].holds_output = true;
    let output = if model.output_tied && out == cpu {
        0
    } else {
        model.output
    };
    uses[out].weights_bytes = uses[out].weights_bytes.saturating_add(output);
    for (i, u) in uses.iter_mut().enumerate() {
        if u.layers.is_some() || u.holds_output || i == cpu {
            u.compute_bytes = compute_bytes(model, options, u.holds_output);
        }
    }
    uses
}

/// The flags that make llama-server use `config` on `n_devices` devices.
pub fn flags_for(
    model: &ModelBytes,
    config: &Config,
    n_devices: usize,
    context: u64,
) -> Vec<String> {
    let mut flags = vec!["-c".to_string(), context.to_string()];
    if n_devices > 0 {
        flags.extend(["-ngl".to_string(), config.gpu_layers.to_string()]);
        if n_devices > 1 {
            flags.push("--tensor-split".into());
            flags.push(
                config
                    .tensor_split
                    .iter()
                    .map(|x| format!("{x}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    let moe_layers: BTreeSet<u32> = (0..model.n_layer)
        .filter(|i| model.experts[*i as usize] > 0)
        .collect();
    // Experts of layers that are on the CPU anyway need no override.
    let offloaded_from = (model.n_layer + 1).saturating_sub(config.gpu_layers);
    let cpu: BTreeSet<u32> = config
        .cpu_expert_layers
        .iter()
        .copied()
        .filter(|i| moe_layers.contains(i) && *i >= offloaded_from && n_devices > 0)
        .collect();
    if cpu.is_empty() {
        return flags;
    }
    let offloaded_moe: BTreeSet<u32> = moe_layers
        .iter()
        .copied()
        .filter(|i| *i >= offloaded_from)
        .collect();
    let prefix = cpu.iter().copied().enumerate().all(|(k, i)| k as u32 == i);
    if cpu == offloaded_moe {
        flags.push("--cpu-moe".into());
    } else if prefix {
        flags.extend(["--n-cpu-moe".to_string(), cpu.len().to_string()]);
    } else {
        let list = cpu.iter().map(u32::to_string).collect::<Vec<_>>().join("|");
        flags.extend([
            "-ot".to_string(),
            format!(r"blk\.({list}){EXPS_PATTERN}=CPU"),
        ]);
    }
    flags
}
