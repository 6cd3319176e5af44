//! A SIMULATION of llama-server for benchmarks and tests (see [`server`]): a deterministic
//! byte-level [`tokenizer`], a hash-based [`model`] whose draft agrees with the target at a set
//! rate, and configurable speeds.

pub mod model;
pub mod server;
pub mod tokenizer;

pub use model::Speaker;
pub use server::{serve_forever, SimConfig, SimError, SimServer};
