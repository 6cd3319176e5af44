//! `tightwad-placement`: the one home of GGUF reading and model placement, shared by the agent
//! (inventory, dry runs, page-cache reclaim) and the coordinator (`doctor`, `init`, `inspect`,
//! `tune`). It depends only on the protocol crate's data types, so neither side depends on the
//! other.
//!
//! - [`gguf`]: a bounded GGUF header reader (metadata, tensor table, vocabulary fingerprint).
//! - [`ggml`]: tensor type block sizes, so tensor bytes are exact.
//! - [`plan`]: the placement planner and llama.cpp's placement rules.
//! - [`measure`]: what llama-server reports it allocated, parsed from its log.
//! - [`pagecache`]: resident pages of a file and their release (Linux).
//! - [`synth`]: synthetic GGUF headers for tests.

pub mod ggml;
pub mod gguf;
pub mod measure;
pub mod pagecache;
pub mod plan;
pub mod synth;
