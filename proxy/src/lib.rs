//! Tightwad's coordinator: an OpenAI-compatible proxy that makes a slow target model faster with a
//! draft model on another machine, without changing a single output token.
//!
//! Walk it in this order:
//! - [`api`]: the HTTP front (OpenAI routes, limits, SSE) that turns requests into engine calls;
//! - [`engine`]: draft→verify rounds for one target/draft [`engine::Pairing`], and the exact
//!   acceptance rule ([`engine::verify`]) and output assembly ([`engine::output`]);
//! - [`backend`]: the clients for the inference servers (llama.cpp's `llama-server` today);
//! - [`metrics`]: counters behind `/metrics` and `/v1/tightwad/stats`;
//! - [`config`] and [`server`]: how a proxy is described and started;
//! - [`fleet`]: the commands that control the hosts' agents over the peer protocol;
//! - [`doctor`] and [`init`]: checking a cluster before anything starts, writing a first config;
//! - [`inspect`]: a GGUF file's contents and its placement plan (`tightwad inspect`);
//! - [`tune`]: RAM, swap and page-cache advice for a model on a host (`tightwad tune`);
//! - [`bench`]: direct-to-target against through-the-proxy measurements (`tightwad bench`);
//! - [`chat`], [`logring`], [`progress`]: `tightwad chat`, the proxy's log for `tightwad logs
//!   proxy`, progress bars for long commands.

pub mod api;
pub mod backend;
pub mod bench;
pub mod chat;
pub mod config;
pub mod doctor;
pub mod engine;
pub mod fleet;
pub mod init;
pub mod inspect;
pub mod logring;
pub mod metrics;
pub mod progress;
pub mod server;
pub mod tune;
