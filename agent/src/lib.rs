//! `tightwad-agent`: one per host. Supervises llama.cpp / vLLM processes, reports the host's
//! inventory, and moves model files, all under remote control of the coordinator through the
//! QUIC peer protocol (`tightwad-protocol`).

pub mod build;
pub mod cgroup;
pub mod config;
pub mod discovery;
pub mod dryrun;
pub mod flags;
pub mod gguf;
pub mod gpu;
pub mod inventory;
pub mod logbuf;
pub mod memory;
pub mod models;
pub mod peer_policy;
pub mod pull;
pub mod readiness;
pub mod reclaim;
pub mod service;
pub mod supervisor;
pub mod transfer;
pub mod versions;
