//! The QUIC peer protocol between the coordinator (`tightwad`) and the agents (`tightwad-agent`),
//! and between agents (model transfers).
//!
//! * Transport: QUIC (quinn) with TLS 1.3 (rustls, ring provider installed explicitly).
//! * Identity: every node has its own key pair and self-signed certificate ([`identity`]).
//! * Trust: peers are pinned by the sha256 fingerprint of their DER certificate, both ways
//!   ([`trust`]); new agents are enrolled with a join token ([`token`]).
//! * Messages: typed serde enums ([`messages`]) in length-prefixed frames with a size limit
//!   ([`frame`]); one request per bidirectional stream; long results stream several frames.
//! * APIs: [`client::Client`] for the coordinator (and for an agent pushing a model to another),
//!   [`server::Server`] for the agent.

pub mod client;
pub mod crypto;
pub mod discovery;
pub mod error;
pub mod files;
pub mod fingerprint;
pub mod frame;
pub mod fsutil;
pub mod identity;
pub mod messages;
pub mod server;
pub mod tls;
pub mod token;
pub mod trust;
pub mod upload;

pub use error::ProtocolError;
pub use fingerprint::Fingerprint;

/// Bumped whenever a message changes shape; peers with another major version refuse each other.
/// v2: dry runs for `tightwad doctor` (`CheckProcess`, `ListDevices`), tensor bytes, KV shape
/// and special tokens in `GgufSummary`.
/// v3: `tightwad build` (`Build`, `RollbackBuild`), the backend in `LlamaBuild`.
/// v4: `BuildRequest::patches` (the bundled llama.cpp patches travel with a build).
/// v5: `FollowBuild` (a coordinator that lost its link to a building host follows it again).
pub const PROTOCOL_VERSION: u32 = 5;

/// The oldest peer protocol version this build still speaks (v4 changed `BuildRequest`'s shape;
/// v5 only added a request, which a coordinator sends where both speak v5).
pub const MIN_PROTOCOL_VERSION: u32 = 4;

/// The first protocol version with `Request::FollowBuild`.
pub const FOLLOW_BUILD_VERSION: u32 = 5;

/// The software version reported in `Hello`.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Default UDP port an agent listens on.
pub const DEFAULT_AGENT_PORT: u16 = 7420;
