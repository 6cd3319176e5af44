//! Tightwad's serving library: an OpenAI-compatible proxy that makes a slow target model faster
//! with a draft model on another machine, without changing a single output token. It knows
//! nothing of agents or the fleet (the coordinator crate does); the dashboard's host view comes in
//! through [`api::dashboard::HostsSource`].
//!
//! Walk it in this order:
//! - [`api`]: the HTTP front (OpenAI routes, limits, SSE) that turns requests into engine calls;
//! - [`engine`]: draft→verify rounds for one target/draft [`engine::Pairing`], and the exact
//!   acceptance rule ([`engine::verify`]) and output assembly ([`engine::output`]);
//! - [`backend`]: the clients for the inference servers (llama.cpp's `llama-server`, vLLM);
//! - [`metrics`]: counters behind `/metrics` and `/v1/tightwad/stats`;
//! - [`config`] and [`server`]: how a proxy is described (file, environment, flags) and started;
//! - [`reload`]: new pairing settings without a restart (SIGHUP, `tightwad reload`);
//! - [`logring`]: the proxy's own recent log, for `tightwad logs proxy`.

pub mod api;
pub mod backend;
pub mod config;
pub mod engine;
pub mod logring;
pub mod metrics;
pub mod reload;
pub mod server;
