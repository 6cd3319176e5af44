//! What an agent reports about its host: its processes and their states, the inventory (host,
//! GPUs, llama.cpp builds, binaries, model folders and files with their GGUF summaries), dry-run
//! checks, measured memory and devices.

use serde::{Deserialize, Serialize};

use super::BuildBackend;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node_name: String,
    pub software_version: String,
    pub protocol_version: u32,
    pub uptime_secs: u64,
    pub processes: Vec<ProcessStatus>,
    pub inventory: Inventory,
}

/// What a supervised process is (`kind` in agent.toml's `[[process]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    LlamaServer,
    RpcServer,
    Vllm,
}

impl std::fmt::Display for ProcessKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProcessKind::LlamaServer => "llama-server",
            ProcessKind::RpcServer => "rpc-server",
            ProcessKind::Vllm => "vllm",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Stopped,
    Starting,
    Ready,
    /// Crashed; waiting out the back-off before the next start.
    BackingOff,
    /// Gave up (readiness timeout, refused flags, binary missing).
    Failed,
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub name: String,
    pub kind: ProcessKind,
    pub state: ProcessState,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    Supervisor,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub host: HostInfo,
    pub gpus: Vec<Gpu>,
    /// Why no GPU was found, or which probe failed (no nvidia-smi, ...).
    pub gpu_notes: Vec<String>,
    pub binaries: Vec<BinaryInfo>,
    pub vllm_version: Option<String>,
    pub model_folders: Vec<ModelFolder>,
    pub models: Vec<ModelFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub os: String,
    pub cpu_brand: String,
    pub cpu_cores: u32,
    pub ram_total_bytes: u64,
    pub ram_available_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuVendor {
    Nvidia,
    Amd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub vendor: GpuVendor,
    pub index: u32,
    pub name: String,
    pub memory_total_mib: u64,
    pub memory_used_mib: Option<u64>,
    pub driver: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlamaBuild {
    /// `8111` of `version: 8111 (abc1234)`, `1` of `version: 0.5.0-dev (build 1, commit ...)`.
    pub build_number: Option<u64>,
    /// `0.5.0-dev` for builds that carry a semantic version.
    pub version: Option<String>,
    pub commit: Option<String>,
    /// The GPU backend it was built for, where known (builds made by `tightwad build`).
    pub backend: Option<BuildBackend>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryInfo {
    pub kind: ProcessKind,
    pub path: String,
    pub build: Option<LlamaBuild>,
    /// rpc-server wire protocol, e.g. `7.0.0`.
    pub rpc_protocol: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFolder {
    pub path: String,
    pub exists: bool,
    pub disk_total_bytes: Option<u64>,
    pub disk_available_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    pub file_name: String,
    pub path: String,
    pub folder: String,
    pub size_bytes: u64,
    pub gguf: Option<GgufSummary>,
    /// Why the header could not be read.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GgufSummary {
    pub gguf_version: u32,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub parameter_count: u64,
    pub tensor_count: u64,
    pub file_type: Option<String>,
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub block_count: Option<u64>,
    pub expert_count: Option<u64>,
    pub expert_used_count: Option<u64>,
    pub tokenizer_model: Option<String>,
    pub vocab_size: Option<u64>,
    /// sha256 over the tokenizer model name and the token list: equal fingerprints mean a draft
    /// and a target tokenize identically.
    pub vocab_fingerprint: Option<String>,
    pub split_count: Option<u64>,
    /// Bytes of tensor data (the weights a server loads), from the tensors' offsets.
    pub tensor_bytes: u64,
    /// Bytes of Mixture-of-Experts expert tensors (`*_exps`), part of `tensor_bytes`.
    pub expert_tensor_bytes: u64,
    /// Attention heads and key/value heads (for the KV cache estimate).
    pub head_count: Option<u64>,
    pub head_count_kv: Option<u64>,
    /// Per-head key and value widths, where the model states them.
    pub key_length: Option<u64>,
    pub value_length: Option<u64>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
}

impl GgufSummary {
    /// Bytes of KV cache for `context` tokens at F16 (llama.cpp's default cache type):
    /// 2 (K and V) × layers × context × kv heads × head width × 2 bytes.
    pub fn kv_cache_bytes(&self, context: u64) -> Option<u64> {
        let layers = self.block_count?;
        let heads = self.head_count.filter(|h| *h > 0)?;
        let kv_heads = self.head_count_kv.unwrap_or(heads);
        let head_width = self.embedding_length? / heads;
        let k = self.key_length.unwrap_or(head_width);
        let v = self.value_length.unwrap_or(head_width);
        // The numbers come from a file's header (or a peer): `None` where they overflow.
        layers
            .checked_mul(context)?
            .checked_mul(kv_heads)?
            .checked_mul(k.checked_add(v)?)?
            .checked_mul(2)
    }
}

/// The dry run of one process's start: what would happen, without starting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCheck {
    pub name: String,
    pub kind: ProcessKind,
    pub args: Vec<String>,
    pub binary: Option<BinaryInfo>,
    /// Why the arguments would be refused (unknown or removed flag), quoting the binary's help.
    pub flag_error: Option<String>,
    /// The model files the arguments name (`-m`, `-md`, ...).
    pub models: Vec<ModelArg>,
    pub state: ProcessState,
}

/// A model file named by a process's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelArg {
    /// The flag that names it (`-m`, `--model-draft`, ...).
    pub flag: String,
    pub path: String,
    pub exists: bool,
    pub size_bytes: u64,
    pub gguf: Option<GgufSummary>,
    /// Why the header could not be read.
    pub error: Option<String>,
    /// Files of the same name in the agent's model folders (where it really is).
    pub found_elsewhere: Vec<String>,
}

/// Bytes on one device (`CPU`, `CUDA0`, `RPC[10.0.0.3:50052]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBytes {
    pub device: String,
    pub bytes: u64,
}

/// A process's memory, predicted and measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub name: String,
    /// The placement planner's prediction for the process's model and flags (weights, KV and
    /// compute per device); empty when it has no GGUF model.
    pub predicted: Vec<DeviceBytes>,
    /// What llama-server logged allocating (model, KV, compute, output buffers) per device;
    /// empty when its log does not show them (this llama.cpp prints them at `-lv 4`).
    pub measured: Vec<DeviceBytes>,
    pub rss_bytes: Option<u64>,
    /// The file-backed part of the RSS (an mmap'd model).
    pub rss_file_bytes: Option<u64>,
    /// Why the prediction is missing or approximate.
    pub notes: Vec<String>,
}

/// A device as `llama-server --list-devices` prints it (`RPC0: 10.0.0.3:50052 (11264 MiB, 11000 MiB free)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    pub description: String,
    pub memory_total_mib: Option<u64>,
    pub memory_free_mib: Option<u64>,
}
