//! The one harness for every end-to-end and multi-host test: real `llama-server` processes built by
//! `scripts/setup`, a real proxy on a real port, real agents in their own network namespaces, real
//! HTTP clients.
//!
//! - [`test_env`]: where the binaries and models are (`eval "$(scripts/setup)"`), free ports, the
//!   workspace's own binaries (`tightwad`, `tightwad-agent`).
//! - [`netns`]: network namespaces on a bridge, with links a test can cut ([`netns::Lab`]).
//! - [`server_process`]: a test server's log file and its wait for `/health`.
//! - [`llama_server`]: `llama-server` and `ggml-rpc-server`, on loopback or in a namespace.
//! - [`proxy`]: the proxy in the test's process ([`proxy::RunningProxy`]); [`proxy_process`]: the
//!   `tightwad proxy` binary as a child process, in a folder and environment of its own.
//! - [`http`]: JSON posts and streamed (SSE) responses.
//! - [`exactness`]: token-by-token comparison with the target alone, the prompt set.
//! - [`sampled`]: sampled answers compared as two samples (the target judges every token).
//! - [`slow_target`]: a SIMULATED slow target (a relay that makes each forward pass cost more).
//! - [`footprint`]: descriptors and tasks the proxy holds before and after a fault.
//! - [`agents`]: `tightwad-agent` processes (the binary) in namespaces, the coordinator's config,
//!   join tokens; [`cluster`]: a set of enrolled agents with a layout, for the fleet tests, said
//!   host by host with [`cluster::ClusterPlan`].
//! - [`vllm`]: a real vLLM server; [`vllm_sim`]: a scripted stand-in for fault tests.
//! - [`browser`]: headless Chromium over the DevTools protocol (the dashboard at phone width).
//!
//! A missing variable fails the test with a message saying so: a test that cannot run must not
//! pass. The loopback tests' everyday names are re-exported here.

pub mod agents;
pub mod browser;
pub mod cgroup;
pub mod cluster;
pub mod exactness;
pub mod footprint;
pub mod http;
pub mod llama_server;
pub mod netns;
pub mod patched;
pub mod proxy;
pub mod proxy_process;
pub mod sampled;
pub mod server_process;
pub mod slow_target;
pub mod test_env;
pub mod vllm;
pub mod vllm_sim;

pub use exactness::{assert_ties_are_rare, compare, prompts, Agreement, Reference, TIE_MARGIN};
pub use http::{
    completion_tokens, get_json, merge, post_json, proxy_token_ids, stream_token_ids, OpenStream,
};
pub use llama_server::{LlamaServer, RpcServer, ServerOptions};
pub use proxy::{greedy_through_proxy_matches_target, RunningProxy, Smollm2Pairing};
pub use test_env::{env, free_port, stock_env, TestEnv};
