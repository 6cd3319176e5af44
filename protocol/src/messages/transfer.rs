//! Moving model files between hosts: one stream's progress and summary, and pulls of pieces from
//! several sources.

use serde::{Deserialize, Serialize};

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
