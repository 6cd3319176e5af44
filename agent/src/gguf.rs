//! The GGUF header reader lives in `tightwad-placement` (shared with the coordinator's doctor,
//! init and inspect); this re-export keeps the agent's `crate::gguf` paths.

pub use tightwad_placement::gguf::*;
