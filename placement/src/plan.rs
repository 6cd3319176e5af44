//! The placement planner: which tensors of a GGUF model go on which device, how much memory each
//! device then needs, and the llama-server flags that make llama.cpp do exactly that.
//!
//! It follows llama.cpp's own rules (src/llama-model.cpp, `load_tensors`), so a prediction is the
//! allocation llama.cpp will make, not a rule of thumb:
//! - the token embeddings (the input layer) always stay on the CPU;
//! - with `-ngl N`, the last N of the n_layer + 1 "layers" (blocks plus the output layer) are
//!   offloaded; layer `i` of those goes to the first device whose cumulative `--tensor-split`
//!   fraction exceeds `i / (n_layer + 1)` (RPC devices are listed before local GPUs);
//! - a layer's KV cache lives with the layer;
//! - `-ot PATTERN=CPU` (and `--cpu-moe`, `--n-cpu-moe N`, which are such patterns) moves matching
//!   tensors to CPU memory whatever their layer's device.
//!
//! Planning puts every layer's attention, norms, router, dense or shared-expert FFN and KV cache on
//! the devices, then fills each device's remaining memory with the routed experts of its own
//! layers; experts that fit nowhere stay in CPU RAM (`-ot`). The field report's failure (an RPC
//! worker asked for 22.3 GB on a 12 GB card because the split was made over the host's total
//! VRAM and the experts went with their layers) is what [`evaluate`] reports for a split as given.

mod args;
mod bytes;

pub use args::{
    cache_element_bytes, config_from_args, flag_value, options_from_args, rpc_endpoints,
};
pub use bytes::{role_of, ModelBytes, TensorRole};

use std::collections::BTreeSet;

use serde::Serialize;

use crate::gguf::GgufModel;

/// llama.cpp's pattern for routed-expert tensors (`LLM_FFN_EXPS_REGEX`, common/common.h).
pub const EXPS_PATTERN: &str = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps";

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A GPU of the host that runs llama-server.
    Gpu,
    /// An rpc-server on another host (`--rpc`): device memory only, no spill to RAM.
    Rpc,
}

/// A device llama-server offloads to, in llama.cpp's order (RPC devices first).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    /// llama.cpp's name where known (`CUDA0`, `RPC0[10.0.0.3:50052]`), else a label.
    pub name: String,
    pub kind: DeviceKind,
    /// The host it belongs to (for reports).
    pub host: String,
    pub memory_bytes: u64,
}

/// Where a model runs: the llama-server host's RAM and the devices it offloads to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    pub host: String,
    pub ram_bytes: u64,
    pub devices: Vec<Device>,
}

/// What the caller fixes; the planner chooses the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Context tokens (`-c`); `None`: the model's training context (llama.cpp's `-c 0`).
    pub context: Option<u64>,
    /// Bytes per K and per V cache element (`-ctk`/`-ctv`; f16 = 2).
    pub cache_k_bytes: f64,
    pub cache_v_bytes: f64,
    /// Micro-batch (`-ub`), which sizes the compute buffers.
    pub ubatch: u64,
    /// Memory kept free on every device beyond the predicted buffers (driver, fragmentation).
    pub headroom_bytes: u64,
    /// May routed experts go to RPC workers (where they fit)? Off, they stay in CPU RAM.
    pub experts_on_rpc: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            context: None,
            cache_k_bytes: 2.0,
            cache_v_bytes: 2.0,
            ubatch: 512,
            headroom_bytes: 256 * MIB,
            experts_on_rpc: true,
        }
    }
}

/// A llama.cpp configuration: the knobs that decide placement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `-ngl`: offloaded slots, counting the output layer (n_layer + 1 = everything).
    pub gpu_layers: u32,
    /// `--tensor-split`, one weight per device; empty: llama.cpp splits by device memory.
    pub tensor_split: Vec<f64>,
    /// Blocks whose routed experts stay in CPU RAM.
    pub cpu_expert_layers: BTreeSet<u32>,
}

/// One device's predicted memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceUse {
    pub name: String,
    pub kind: Option<DeviceKind>,
    pub host: String,
    /// Memory the device has (RAM for the CPU entry).
    pub capacity_bytes: u64,
    /// Blocks placed here (first..=last), if any.
    pub layers: Option<(u32, u32)>,
    pub holds_output: bool,
    /// Weights other than routed experts.
    pub weights_bytes: u64,
    pub expert_bytes: u64,
    pub kv_bytes: u64,
    pub compute_bytes: u64,
}

impl DeviceUse {
    pub fn model_bytes(&self) -> u64 {
        self.weights_bytes.saturating_add(self.expert_bytes)
    }
    pub fn total_bytes(&self) -> u64 {
        saturating_sum([
            self.weights_bytes,
            self.expert_bytes,
            self.kv_bytes,
            self.compute_bytes,
        ])
    }
    pub fn fits(&self, headroom: u64) -> bool {
        self.total_bytes().saturating_add(headroom) <= self.capacity_bytes
    }
}

/// A placement: the configuration, what each device will hold, the flags, and the warnings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub config: Config,
    pub context: u64,
    /// The devices in llama.cpp's order, then the CPU (the llama-server host's RAM).
    pub devices: Vec<DeviceUse>,
    /// llama-server arguments that realise the plan.
    pub flags: Vec<String>,
    pub warnings: Vec<String>,
    /// Every device within its memory (headroom included).
    pub fits: bool,
}

impl Plan {
    pub fn cpu(&self) -> Option<&DeviceUse> {
        self.devices.last()
    }
}

/// GiB with one decimal, or MiB below 1 GiB (small models would all read "0.0 GiB").
fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The most blocks a model llama.cpp loads may have (`LLAMA_MAX_LAYERS`). A header that claims
/// more describes no model llama.cpp can run; capping the count there bounds the per-block tables
/// a hostile header could otherwise make us allocate (4 billion blocks: 64 GB).
pub const MAX_LAYERS: u32 = 512;

/// A claimed block count, capped at [`MAX_LAYERS`].
fn layer_count(claimed: u64) -> u32 {
    claimed.min(MAX_LAYERS as u64) as u32
}

/// Byte counts add up without wrapping: a header's sizes are claims, and an absurd one must read
/// as "does not fit", never wrap around to a small number (or panic in a debug build).
fn saturating_sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0, u64::saturating_add)
}

fn context_of(model: &ModelBytes, options: &PlanOptions) -> u64 {
    let c = options
        .context
        .filter(|c| *c > 0)
        .unwrap_or(model.context_length);
    // llama.cpp pads the KV cache to 256 cells.
    c.div_ceil(256).saturating_mul(256)
}

fn kv_layer_bytes(model: &ModelBytes, options: &PlanOptions, context: u64) -> u64 {
    // kv_per_token_layer is K+V at 2 bytes each: scale each half by its cache type.
    let f16 = model.kv_per_token_layer as f64 * context as f64;
    (f16 * (options.cache_k_bytes + options.cache_v_bytes) / 4.0) as u64
}

/// Compute buffer estimate per device: about eight activations of width n_embd per token of a
/// micro-batch. A SIMPLE MODEL calibrated against the `compute buffer size` llama-server logs on
/// CPU and RPC devices (the placement test states the margin); GPU backends with flash attention
/// off need more, which the per-device headroom covers.
fn compute_bytes(model: &ModelBytes, options: &PlanOptions, _holds_output: bool) -> u64 {
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

/// Plans `model` on `target`: every layer's non-expert weights and KV on the devices, routed
/// experts where they fit, the rest in CPU RAM.
pub fn plan(model: &ModelBytes, target: &Target, options: &PlanOptions) -> Plan {
    let context = context_of(model, options);
    let kv = kv_layer_bytes(model, options, context);
    let n = target.devices.len();
    let n_layer = model.n_layer;
    let mut warnings = Vec::new();
    if n == 0 {
        let config = Config {
            gpu_layers: 0,
            tensor_split: vec![],
            cpu_expert_layers: BTreeSet::new(),
        };
        return finish(model, target, options, config, context, warnings);
    }
    // Usable memory per device: capacity less headroom and its compute buffer.
    let usable: Vec<u64> = target
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.memory_bytes
                .saturating_sub(options.headroom_bytes)
                .saturating_sub(compute_bytes(model, options, i == n - 1))
        })
        .collect();
    let total_usable = saturating_sum(usable.iter().copied());
    let slot_need = |il: u32| -> u64 {
        if il == n_layer {
            model.output
        } else {
            model.layer[il as usize].saturating_add(kv)
        }
    };
    // 1. How many slots (counted from the output backwards) can be offloaded at all.
    let mut gpu_layers = 0u32;
    let mut need = 0u64;
    for il in (0..=n_layer).rev() {
        if need.saturating_add(slot_need(il)) > total_usable {
            break;
        }
        need = need.saturating_add(slot_need(il));
        gpu_layers += 1;
    }
    if gpu_layers == 0 {
        warnings.push(format!(
            "not even the output layer ({}) fits the devices' {} usable memory: everything stays on the CPU",
            gib(model.output),
            gib(total_usable)
        ));
    } else if gpu_layers < n_layer + 1 {
        warnings.push(format!(
            "the non-expert weights and KV cache of {} of {} layers do not fit the devices ({} usable): those layers run on the CPU",
            n_layer + 1 - gpu_layers,
            n_layer + 1,
            gib(total_usable)
        ));
    }
    let first = n_layer + 1 - gpu_layers;
    // 2. Split the offloaded slots over the devices, contiguous and in order, in proportion to
    //    usable memory (so each has room for its share of experts), then repair overflows.
    let mut counts = proportional(gpu_layers, &usable);
    repair(&mut counts, &usable, first, &slot_need);
    // 3. Experts: per device, keep the experts of its last layers while they fit; the first
    //    ones of its range go to the CPU (so a single device gives `--n-cpu-moe N`).
    let mut cpu_expert_layers = BTreeSet::new();
    let mut at = first;
    for (d, count) in counts.iter().enumerate() {
        let range: Vec<u32> = (at..at + count).filter(|il| *il < n_layer).collect();
        at += count;
        let base = saturating_sum((at - count..at).map(&slot_need));
        let mut room = usable[d].saturating_sub(base);
        let rpc = target.devices[d].kind == DeviceKind::Rpc;
        for il in range.iter().rev() {
            let e = model.experts[*il as usize];
            if e == 0 {
                continue;
            }
            if (!rpc || options.experts_on_rpc) && e <= room {
                room -= e;
            } else {
                cpu_expert_layers.insert(*il);
            }
        }
    }
    let config = Config {
        gpu_layers,
        tensor_split: counts.iter().map(|c| *c as f64).collect(),
        cpu_expert_layers,
    };
    finish(model, target, options, config, context, warnings)
}

fn finish(
    model: &ModelBytes,
    target: &Target,
    options: &PlanOptions,
    config: Config,
    context: u64,
    mut warnings: Vec<String>,
) -> Plan {
    let devices = evaluate(model, target, options, &config);
    let mut fits = true;
    for d in &devices {
        let headroom = if d.kind.is_some() {
            options.headroom_bytes
        } else {
            0
        };
        if !d.fits(headroom) {
            fits = false;
            warnings.push(over_message(d, headroom));
        }
    }
    let flags = flags_for(model, &config, target.devices.len(), context);
    Plan {
        config,
        context,
        devices,
        flags,
        warnings,
        fits,
    }
}

fn over_message(d: &DeviceUse, headroom: u64) -> String {
    let what = match d.kind {
        Some(DeviceKind::Rpc) => "RPC worker",
        Some(DeviceKind::Gpu) => "GPU",
        None => "system RAM of",
    };
    let spill = match d.kind {
        Some(DeviceKind::Rpc) => ": an rpc-server cannot spill into system RAM, the load fails",
        Some(DeviceKind::Gpu) => ": the load fails (out of device memory)",
        None => ": the model would swap",
    };
    format!(
        "{what} {} on {} would need {} (weights {}, experts {}, KV {}, compute {}{}) but has {}{spill}",
        d.name,
        d.host,
        gib(d.total_bytes()),
        gib(d.weights_bytes),
        gib(d.expert_bytes),
        gib(d.kv_bytes),
        gib(d.compute_bytes),
        if headroom > 0 {
            format!(", + {} headroom", gib(headroom))
        } else {
            String::new()
        },
        gib(d.capacity_bytes)
    )
}

/// Checks a configuration as given (a `--tensor-split` from a config, or llama.cpp's default split
/// by device memory): the devices over their memory, with the numbers.
pub fn check(model: &ModelBytes, target: &Target, options: &PlanOptions, config: &Config) -> Plan {
    let context = context_of(model, options);
    finish(model, target, options, config.clone(), context, Vec::new())
}

/// Largest-remainder split of `total` slots in proportion to `weights`.
fn proportional(total: u32, weights: &[u64]) -> Vec<u32> {
    let sum: u128 = weights.iter().map(|w| *w as u128).sum();
    if sum == 0 {
        let mut v = vec![0; weights.len()];
        if let Some(last) = v.last_mut() {
            *last = total;
        }
        return v;
    }
    let mut counts: Vec<u32> = weights
        .iter()
        .map(|w| (total as u128 * *w as u128 / sum) as u32)
        .collect();
    let mut rest: Vec<(u128, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| ((total as u128 * *w as u128) % sum, i))
        .collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let assigned: u32 = counts.iter().sum();
    for (_, i) in rest.iter().take((total - assigned) as usize) {
        counts[*i] += 1;
    }
    counts
}

/// Moves slots from devices whose non-expert share overflows to neighbours with room.
fn repair(counts: &mut [u32], usable: &[u64], first: u32, slot_need: &dyn Fn(u32) -> u64) {
    let n = counts.len();
    for _ in 0..(counts.iter().sum::<u32>() as usize * n + 1) {
        let starts: Vec<u32> = counts
            .iter()
            .scan(first, |at, c| {
                let s = *at;
                *at += c;
                Some(s)
            })
            .collect();
        let need =
            |d: usize| -> u64 { saturating_sum((starts[d]..starts[d] + counts[d]).map(slot_need)) };
        let Some(over) = (0..n).find(|d| need(*d) > usable[*d]) else {
            return;
        };
        // Prefer the neighbour with more free room.
        let room = |d: usize| usable[d].saturating_sub(need(d));
        let left = over.checked_sub(1);
        let right = (over + 1 < n).then_some(over + 1);
        let to = match (left, right) {
            (Some(l), Some(r)) => {
                if room(l) >= room(r) {
                    l
                } else {
                    r
                }
            }
            (Some(l), None) => l,
            (None, Some(r)) => r,
            (None, None) => return,
        };
        if counts[over] == 0 {
            return;
        }
        counts[over] -= 1;
        counts[to] += 1;
    }
}

#[cfg(test)]
mod tests;
