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
//!
//! This file holds the types a plan is made of (devices, target, options, configuration, per-device
//! use); `rules` is llama.cpp's placement of a configuration and its flags, `planner` chooses and
//! checks configurations, `bytes` weighs a model's tensors by role, `args` reads a configuration
//! back from llama-server arguments.

mod args;
mod bytes;
mod planner;
mod rules;

pub use args::{
    cache_element_bytes, config_from_args, flag_value, options_from_args, rpc_endpoints,
};
pub use bytes::{role_of, ModelBytes, TensorRole};
pub use planner::{check, plan};
pub use rules::{evaluate, flags_for, slot_devices};

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

#[cfg(test)]
mod tests;
