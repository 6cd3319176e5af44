//! Tightwad's benchmarks: what makes "never slower, often much faster" measurable on a LAN that
//! is not there and on targets this machine cannot run.
//!
//! - [`relay`]: the LAN emulator, a TCP relay adding delay and a bandwidth cap (`lan-relay`);
//! - [`sim`]: a SIMULATION of llama-server with set speeds and acceptance (`sim-llama-server`);
//! - [`limit`]: the analytic throughput limit the measurements are compared with;
//! - [`llama`]: real llama-server processes for the real-hardware scenarios;
//! - [`suite`]: the scenarios of `bench-suite`; [`results`]: the result files they write;
//! - [`report`] and [`plot`]: `results/README.md` and its SVG plots.
//!
//! The per-request comparison itself (direct vs through the proxy) is `tightwad_coordinator::bench`, which the
//! proxy's own `tightwad bench` command uses too.

pub mod clock;
pub mod limit;
pub mod llama;
pub mod plot;
pub mod relay;
pub mod report;
pub mod results;
pub mod sim;
pub mod suite;

/// The per-request comparison (direct vs through the proxy), shared with `tightwad bench`.
pub use tightwad_coordinator::bench;
