//! Every message of the peer protocol. Typed enums and structs only: no stringly-typed commands.
//!
//! Encoding is postcard (see [`crate::frame`]); enum variants are encoded by index, so new
//! variants go at the end and a changed shape bumps [`crate::PROTOCOL_VERSION`].

//!
//! By subject: the exchange itself here (hello, requests, replies, errors, uploads); `status` what
//! an agent reports of its host; `transfer` model copies and pulls; `build` `tightwad build`. All
//! are re-exported here, so every message is `messages::Name`.

mod build;
mod status;
#[cfg(test)]
mod tests;
mod transfer;

pub use build::*;
pub use status::*;
pub use transfer::*;

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
    /// Follow the build (or rollback) running on this host from where it is, or hear how the last
    /// one ended: `BuildProgress` frames, then `BuildDone` or the build's error (protocol v5). A
    /// coordinator whose link dropped while a host built reconnects with this: the agent builds on
    /// without it.
    FollowBuild,
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
            Request::FollowBuild => "follow_build",
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
