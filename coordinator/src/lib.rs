//! Tightwad's coordinator: everything `tightwad` does for the fleet of hosts, as a library the
//! `tightwad` binary is a thin command line over. It talks to the hosts' agents over the peer
//! protocol and may use the serving library (`tightwad-serve`: its config, its llama-server
//! client, its controller's cost model); the serving library never uses it.
//!
//! Walk it bottom-up (each module imports only those above it):
//! - [`progress`]: progress bars, plain lines or silence for long commands;
//! - [`cluster`]: the hosts of `tightwad.toml`, a session with their agents, the layout of
//!   processes, pools and native pairings, and the command lines the coordinator adds to them;
//! - [`doctor`]: checking a cluster before anything starts;
//! - [`inspect`], [`tune`], [`init`]: a GGUF file and its placement, RAM advice, a first config;
//! - [`fleet`]: the commands that act on the hosts (status, agent, models, up, swap, build, logs);
//! - [`discover`]: agents announcing themselves on the LAN, marked against what is pinned;
//! - [`service`]: systemd units and launchd plists for the proxy and the agent;
//! - [`hosts_view`]: the fleet's status as the proxy's dashboard shows it;
//! - [`chat`], [`bench`]: `tightwad chat`, direct-to-target against through-the-proxy measurements.

pub mod progress;

pub mod cluster;

pub mod doctor;

pub mod init;
pub mod inspect;
pub mod tune;

pub mod discover;
pub mod fleet;
pub mod hosts_view;
pub mod service;

pub mod bench;
pub mod chat;
