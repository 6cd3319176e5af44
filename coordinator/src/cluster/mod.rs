//! The cluster as the coordinator knows it: the hosts of `tightwad.toml` and a session with their
//! agents ([`Fleet`]), the layout of processes, pools and native pairings ([`layout`]), the
//! command lines the coordinator adds to them ([`launch`]) and the devices an inventory offers
//! ([`devices`]). Everything else in the coordinator builds on this module; it imports none of them.

pub mod config;
pub mod devices;
pub mod launch;
pub mod layout;
pub mod session;

pub use config::{FleetConfig, HostEntry};
pub use session::Fleet;
