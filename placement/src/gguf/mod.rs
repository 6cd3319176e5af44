//! A small, careful GGUF header reader: metadata and tensor shapes only, never weights.
//!
//! Every length in a GGUF header is claimed by the file itself, so every one is checked against
//! both a fixed limit and the bytes actually left in the file before anything is allocated: a
//! malicious or truncated header yields an error, not an out-of-memory kill. Big arrays (token
//! lists, merges) are streamed: the token list is hashed on the fly into the vocabulary
//! fingerprint and never kept.
//!
//! This file holds the error type and the entry points that read a file; `header` parses a header
//! from any reader, `cursor` is the bounded reader it reads with, `model` holds what a header
//! describes (tensor table, metadata) and the file type names.

mod cursor;
mod header;
mod model;

pub use header::{read_header, read_model_header};
pub use model::{file_type_name, GgufModel, TensorInfo};

use std::io::BufReader;
use std::path::Path;
use tightwad_protocol::messages::GgufSummary;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (starts with \"{}\")", .0.escape_ascii())]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("truncated header: {0}")]
    Truncated(String),
    #[error("header claims {what} of {claimed}, over the limit of {limit}")]
    OverLimit {
        what: &'static str,
        claimed: u64,
        limit: u64,
    },
    #[error("unknown metadata value type {0}")]
    UnknownType(u32),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header of the GGUF file at `path`.
pub fn read_summary(path: &Path) -> Result<GgufSummary, GgufError> {
    Ok(read_model(path)?.summary)
}

/// Reads the header of the GGUF file at `path` with every tensor's name, shape, type and size:
/// what the placement planner and `tightwad inspect` work from.
pub fn read_model(path: &Path) -> Result<GgufModel, GgufError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    read_model_header(BufReader::with_capacity(256 * 1024, file), len)
}

#[cfg(test)]
mod tests;
