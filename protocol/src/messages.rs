//! Every message of the peer protocol. Typed enums and structs only: no stringly-typed commands.
//!
//! Encoding is postcard (see [`crate::frame`]); enum variants are encoded by index, so new
//! variants go at the end and a changed shape bumps [`crate::PROTOCOL_VERSION`].

use crate::Fingerprint;
use serde::{Deserialize, Serialize};

/// Which side of the protocol a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Coordinator,
    Agent,
}

/// Optional features a node offers; a peer only uses what both sides list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Supervisor,
    Inventory,
    Logs,
    Models,
    ModelTransfer,
    /// `tightwad build`: builds llama.cpp from a source and switches to it (protocol v3).
    Build,
}

/// First message on every connection, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub min_protocol_version: u32,
    pub software_version: String,
    pub role: NodeRole,
    pub node_name: String,
    pub capabilities: Vec<Capability>,
}

impl Hello {
    /// This build's Hello.
    pub fn ours(role: NodeRole, node_name: &str, capabilities: Vec<Capability>) -> Self {
        Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            min_protocol_version: crate::MIN_PROTOCOL_VERSION,
            software_version: crate::SOFTWARE_VERSION.to_string(),
            role,
            node_name: node_name.to_string(),
            capabilities,
        }
    }

    /// The version both speak, or the error both sides report.
    pub fn negotiate(&self, theirs: &Hello) -> Result<u32, crate::ProtocolError> {
        let common = self.protocol_version.min(theirs.protocol_version);
        if common >= self.min_protocol_version && common >= theirs.min_protocol_version {
            Ok(common)
        } else {
            Err(crate::ProtocolError::IncompatibleVersion {
                ours: self.protocol_version,
                ours_min: self.min_protocol_version,
                theirs: theirs.protocol_version,
                theirs_min: theirs.min_protocol_version,
                their_software: theirs.software_version.clone(),
            })
        }
    }
}

/// The agent's answer to a Hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub hello: Hello,
    pub negotiated_version: u32,
    /// Present while the agent holds an unconfirmed join token from this coordinator.
    pub join_proof: Option<Vec<u8>>,
}

/// A request: the first frame on a bidirectional stream. One request per stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Hello(Hello),
    /// The coordinator pinned us: the agent may forget its join secret.
    ConfirmEnrollment,
    Status,
    Inventory,
    StartProcess {
        name: String,
        /// Replaces the configured arguments for this start (validated like them).
        args: Option<Vec<String>>,
    },
    StopProcess {
        name: String,
    },
    RestartProcess {
        name: String,
    },
    /// Replies with `LogLines` frames: the last `tail` lines, then new ones while `follow`.
    Logs {
        name: String,
        tail: u32,
        follow: bool,
    },
    ListModels,
    FindModel {
        file_name: String,
    },
    /// The coordinator vouches for another agent, which may then push model files here.
    IntroducePeer {
        name: String,
        fingerprint: Fingerprint,
    },
    /// Push a model file to another agent; replies with `Progress` frames then `TransferDone`.
    SendModel {
        file_name: String,
        to: PeerAddress,
        /// Optional rate limit, so a copy does not starve the LAN (and makes tests deterministic).
        max_bytes_per_second: Option<u64>,
    },
    /// Agent to agent: receive a model file. Followed by `UploadFrame`s from the sender.
    ReceiveModel(UploadOffer),
    /// A dry run of `StartProcess`: checks the arguments against the binary's `--help` and looks
    /// at the model files they name, without starting anything (`tightwad doctor`).
    CheckProcess {
        name: String,
        /// Arguments to check instead of the configured ones.
        args: Option<Vec<String>>,
    },
    /// The devices llama-server sees with these RPC servers attached
    /// (`llama-server --rpc HOST:PORT --list-devices`): names for `--spec-draft-device`.
    ListDevices {
        rpc_servers: Vec<String>,
    },
    /// Coordinator → receiving agent: fetch `file_name` in pieces from all `sources` at once
    /// (each checked against its piece hash), resuming what an earlier pull left. Replies with
    /// `Progress` frames, then `PullDone`. The sources must have pinned the receiver
    /// (`IntroducePeer`); the receiver checks each source's fingerprint.
    PullModel {
        file_name: String,
        sources: Vec<PeerAddress>,
        /// Piece size (default 8 MiB; 1–16 MiB).
        piece_bytes: Option<u32>,
        /// Optional rate limit per source.
        max_bytes_per_second: Option<u64>,
    },
    /// Agent → agent (pinned peers only): the piece manifest of a model file.
    ModelManifest {
        file_name: String,
        piece_bytes: u32,
    },
    /// Agent → agent (pinned peers only): `len` bytes at `offset`, as `Piece` replies.
    ReadPiece {
        file_name: String,
        offset: u64,
        len: u32,
    },
    /// A running process's memory: predicted from its model and flags (the placement planner)
    /// next to what it reported allocating and its RSS (`tightwad status`).
    ProcessMemory {
        name: String,
    },
    /// Build llama.cpp from a source, smoke-test it and switch the supervised processes to it
    /// (`tightwad build`). A `Tarball` source is uploaded on the same stream exactly like a model
    /// (`UploadResume` reply, then `UploadFrame`s); then `BuildProgress` frames, then `BuildDone`.
    Build(BuildRequest),
    /// Switch back to the build that was current before the current one (`tightwad build --rollback`).
    RollbackBuild,
}

impl Request {
    /// A short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello(_) => "hello",
            Request::ConfirmEnrollment => "confirm_enrollment",
            Request::Status => "status",
            Request::Inventory => "inventory",
            Request::StartProcess { .. } => "start_process",
            Request::StopProcess { .. } => "stop_process",
            Request::RestartProcess { .. } => "restart_process",
            Request::Logs { .. } => "logs",
            Request::ListModels => "list_models",
            Request::FindModel { .. } => "find_model",
            Request::IntroducePeer { .. } => "introduce_peer",
            Request::SendModel { .. } => "send_model",
            Request::ReceiveModel(_) => "receive_model",
            Request::CheckProcess { .. } => "check_process",
            Request::ListDevices { .. } => "list_devices",
            Request::PullModel { .. } => "pull_model",
            Request::ModelManifest { .. } => "model_manifest",
            Request::ReadPiece { .. } => "read_piece",
            Request::ProcessMemory { .. } => "process_memory",
            Request::Build(_) => "build",
            Request::RollbackBuild => "rollback_build",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    pub name: String,
    pub address: String,
    pub fingerprint: Fingerprint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadOffer {
    pub file_name: String,
    pub size: u64,
    /// sha256 of the whole file, hex.
    pub sha256: String,
    pub chunk_size: u32,
}

/// Frames the sender writes after `ReceiveModel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadFrame {
    Chunk {
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// sha256 of `data`: a corrupt chunk is caught before it is written.
        sha256: [u8; 32],
    },
    /// All chunks sent; the receiver verifies the whole file and renames it into place.
    Finish,
}

/// A reply frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Hello(HelloReply),
    Ok,
    Status(Box<AgentStatus>),
    Inventory(Box<Inventory>),
    Process(ProcessStatus),
    LogLines(Vec<LogLine>),
    Models(Vec<ModelFile>),
    /// The receiver already has `offset` bytes whose sha256 is `prefix_sha256` (hex).
    UploadResume {
        offset: u64,
        prefix_sha256: String,
    },
    Progress(TransferProgress),
    TransferDone(TransferSummary),
    Error(RemoteError),
    ProcessCheck(Box<ProcessCheck>),
    Devices(Vec<Device>),
    Manifest(Box<PieceManifest>),
    /// Bytes of a `ReadPiece`, at most 1 MiB per frame.
    Piece {
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    PullDone(Box<PullSummary>),
    ProcessMemory(Box<ProcessMemory>),
    BuildProgress(BuildProgress),
    BuildDone(Box<BuildOutcome>),
}

impl Reply {
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Hello(_) => "hello",
            Reply::Ok => "ok",
            Reply::Status(_) => "status",
            Reply::Inventory(_) => "inventory",
            Reply::Process(_) => "process",
            Reply::LogLines(_) => "log_lines",
            Reply::Models(_) => "models",
            Reply::UploadResume { .. } => "upload_resume",
            Reply::Progress(_) => "progress",
            Reply::TransferDone(_) => "transfer_done",
            Reply::Error(_) => "error",
            Reply::ProcessCheck(_) => "process_check",
            Reply::Devices(_) => "devices",
            Reply::Manifest(_) => "manifest",
            Reply::Piece { .. } => "piece",
            Reply::PullDone(_) => "pull_done",
            Reply::ProcessMemory(_) => "process_memory",
            Reply::BuildProgress(_) => "build_progress",
            Reply::BuildDone(_) => "build_done",
        }
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error(RemoteError {
            kind,
            message: message.into(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Forbidden,
    IncompatibleVersion,
    EnrollmentRefused,
    FlagRejected,
    ProcessFailed,
    Transfer,
    FrameTooLarge,
    Malformed,
    Internal,
    /// `tightwad build`: the source, compile, smoke test or switch failed.
    Build,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    pub file_name: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub resumed_from: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferSummary {
    pub file_name: String,
    /// Where the file now lives on the receiver.
    pub path: String,
    pub bytes: u64,
    pub resumed_from: u64,
    pub sha256: String,
    pub seconds: f64,
}

/// A model file cut into pieces, each with its sha256, plus the whole file's: a receiver checks
/// every piece from any source before writing it, and the whole file before renaming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceManifest {
    pub file_name: String,
    pub size: u64,
    /// sha256 of the whole file, hex.
    pub sha256: String,
    pub piece_bytes: u32,
    /// sha256 of each piece, in order (the last one may be shorter).
    pub pieces: Vec<[u8; 32]>,
}

/// One source's share of a pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullSource {
    pub name: String,
    pub pieces: u32,
    pub bytes: u64,
    /// Why this source stopped serving before the end, if it did.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullSummary {
    pub transfer: TransferSummary,
    pub pieces: u32,
    /// Pieces already present from an earlier, interrupted pull.
    pub pieces_resumed: u32,
    pub sources: Vec<PullSource>,
}

/// The compute backend a llama.cpp build targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildBackend {
    Cpu,
    Cuda,
    /// AMD ROCm/HIP.
    Hip,
    Metal,
    Vulkan,
}

impl BuildBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildBackend::Cpu => "cpu",
            BuildBackend::Cuda => "cuda",
            BuildBackend::Hip => "hip",
            BuildBackend::Metal => "metal",
            BuildBackend::Vulkan => "vulkan",
        }
    }
}

impl std::fmt::Display for BuildBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BuildBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(BuildBackend::Cpu),
            "cuda" => Ok(BuildBackend::Cuda),
            "hip" | "rocm" => Ok(BuildBackend::Hip),
            "metal" => Ok(BuildBackend::Metal),
            "vulkan" => Ok(BuildBackend::Vulkan),
            other => Err(format!(
                "unknown build backend {other:?} (cpu, cuda, hip, metal, vulkan)"
            )),
        }
    }
}

/// Where an agent gets the llama.cpp source for `Request::Build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildSource {
    /// A `.tar.gz` the coordinator uploads on the request's stream (hosts without internet).
    /// Either a llama.cpp tree or one that vendors it (the llama-cpp-python sdist).
    Tarball(UploadOffer),
    /// `git clone` on the agent itself (the host needs network access).
    Git { url: String, git_ref: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub source: BuildSource,
    /// The coordinator's per-host override; the agent detects the backend from its GPUs otherwise.
    pub backend: Option<BuildBackend>,
    /// Parallel compile jobs (default: the agent's setting, else its CPU count).
    pub jobs: Option<u32>,
    /// Patches applied to the llama.cpp tree (`patch -p1`, in order) before it compiles:
    /// Tightwad's bundled ones (`patches/llama.cpp/`) unless `tightwad build --stock`.
    pub patches: Vec<SourcePatch>,
}

/// One unified diff against the llama.cpp tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePatch {
    /// The patch file's name (`0001-server-client-draft-tokens.patch`), for logs and errors.
    pub name: String,
    pub diff: String,
}

/// The build a host runs: version, commit and backend (`build.backend`), what `tightwad doctor`
/// compares across hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildIdentity {
    pub build: LlamaBuild,
    /// The build's folder on the agent (`<state>/builds/<folder>`); `None` for the binaries
    /// `[binaries]` in agent.toml names (before the first `tightwad build`).
    pub folder: Option<String>,
}

impl std::fmt::Display for BuildIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.build;
        if let Some(v) = &b.version {
            write!(f, "{v} ")?;
        }
        match b.build_number {
            Some(n) => write!(f, "b{n}")?,
            None => f.write_str("b?")?,
        }
        if let Some(c) = &b.commit {
            write!(f, "-{c}")?;
        }
        if let Some(backend) = b.backend {
            write!(f, " ({backend})")?;
        }
        if self.folder.is_none() {
            f.write_str(" [configured binaries]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStage {
    Upload,
    Unpack,
    Configure,
    Compile,
    SmokeTest,
    Switch,
}

/// One step of a build: `done`/`total` are bytes (upload) or compile steps (ninja's `[n/m]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildProgress {
    pub stage: BuildStage,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// A build that passed its smoke test and is now current (or was current before a rollback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildOutcome {
    pub identity: BuildIdentity,
    /// The build current before this one (kept for `--rollback`).
    pub previous: Option<BuildIdentity>,
    /// Supervised processes restarted onto this build.
    pub switched: Vec<String>,
    /// What the smoke test did (model, tokens generated).
    pub smoke_test: String,
    /// The same source was already built here: nothing was compiled.
    pub reused: bool,
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32, min: u32) -> Hello {
        Hello {
            protocol_version: version,
            min_protocol_version: min,
            software_version: "x".into(),
            role: NodeRole::Agent,
            node_name: "n".into(),
            capabilities: vec![],
        }
    }

    /// The shape numbers come from a GGUF header (or a peer's summary of one): a product that
    /// overflows is "unknown", not a panic (debug) or a small wrapped number (release).
    #[test]
    fn kv_cache_bytes_of_absurd_shapes_is_unknown() {
        let summary = GgufSummary {
            block_count: Some(u64::MAX / 2),
            head_count: Some(1),
            embedding_length: Some(u64::MAX),
            ..GgufSummary::default()
        };
        assert_eq!(summary.kv_cache_bytes(4096), None);
        let small = GgufSummary {
            block_count: Some(2),
            head_count: Some(4),
            embedding_length: Some(256),
            ..GgufSummary::default()
        };
        assert_eq!(small.kv_cache_bytes(10), Some(2 * 10 * 4 * 128 * 2));
    }

    #[test]
    fn negotiation_picks_common_version_or_refuses() {
        assert_eq!(hello(3, 1).negotiate(&hello(2, 2)).expect("compatible"), 2);
        assert!(hello(1, 1).negotiate(&hello(3, 2)).is_err());
        assert!(hello(3, 2).negotiate(&hello(1, 1)).is_err());
    }

    #[test]
    fn every_reply_round_trips() {
        let replies = vec![
            Reply::Ok,
            Reply::error(ErrorKind::NotFound, "nope"),
            Reply::Status(Box::new(AgentStatus {
                node_name: "a".into(),
                software_version: "0".into(),
                protocol_version: 1,
                uptime_secs: 3,
                processes: vec![],
                inventory: Inventory::default(),
            })),
            Reply::UploadResume {
                offset: 7,
                prefix_sha256: "ab".into(),
            },
            Reply::Manifest(Box::new(PieceManifest {
                file_name: "m.gguf".into(),
                size: 9,
                sha256: "cd".into(),
                piece_bytes: 4,
                pieces: vec![[1; 32], [2; 32], [3; 32]],
            })),
            Reply::Piece {
                offset: 4,
                data: vec![0, 1, 2, 3],
            },
            Reply::ProcessMemory(Box::new(ProcessMemory {
                name: "target".into(),
                predicted: vec![DeviceBytes {
                    device: "CPU".into(),
                    bytes: 3,
                }],
                measured: vec![],
                rss_bytes: Some(9),
                rss_file_bytes: None,
                notes: vec!["n".into()],
            })),
        ];
        for reply in replies {
            let frame = crate::frame::encode(&reply).expect("encode");
            let back: Reply = crate::frame::decode(&frame[4..]).expect("decode");
            assert_eq!(back, reply);
        }
    }
}
