//! The TOML configs, parsed and validated the way each program loads them from disk:
//! - the proxy's `tightwad.toml` (`ProxyConfig::load_with_env`: the file, then the `TIGHTWAD_*`
//!   variables over it, merged by figment; `validate`; then every pairing built as `tightwad serve` builds it);
//! - the same file as the coordinator reads it (`FleetConfig::load`: hosts, duplicate names;
//!   `Layout::load`: processes, pools, native pairings) and what it derives from it;
//! - the agent's `agent.toml` (`AgentConfig::load`: processes, their ports).
//!
//! Input: the file's text, then optionally a NUL byte and `NAME=VALUE` lines, the environment the
//! proxy's loader reads. Properties: no panic; every refusal is an error value; a proxy config
//! that validates builds its pairings.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tightwad_agent::config::{port_from_args, AgentConfig};
use tightwad_coordinator::cluster::layout::{host_ip, Layout, Role};
use tightwad_coordinator::cluster::FleetConfig;
use tightwad_serve::config::ProxyConfig;
use tightwad_serve::engine::Pairing;
use tightwad_serve::metrics::Metrics;

/// The loaders read files: one per fuzzing process, rewritten for each input.
fn config_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("tightwad-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // The loader reads the process's environment (figment's `Env`): the input's `TIGHTWAD_*`
    // variables are set for this input and removed after it (libFuzzer runs one input at a
    // time). Names and values the OS cannot hold are skipped.
    let vars: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(k, v)| k.starts_with("TIGHTWAD_") && !k.contains(['=', '\0']) && !v.contains('\0'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &vars {
        std::env::set_var(k, v);
    }
    let path = config_file();
    std::fs::write(path, text).expect("the fuzz config file is writable");

    // The proxy (`tightwad serve -c FILE`).
    let proxy = ProxyConfig::load_with_env(path);
    for (k, _) in &vars {
        std::env::remove_var(k);
    }
    if let Ok(config) = proxy {
        if config.validate().is_ok() {
            assert!(!config.pairings.is_empty(), "a valid config has a pairing");
            let metrics = Metrics::new();
            for (i, entry) in config.pairings.iter().enumerate() {
                let pairing = entry.to_pairing_config(i);
                let pm = metrics.pairing(&pairing.name);
                // A bad URL is refused here (an error), never a panic.
                let _ = Pairing::new(pairing, pm);
            }
        }
    }

    // The coordinator (`tightwad doctor/up/status -c FILE`).
    if let Ok(fleet) = FleetConfig::load(path) {
        let _ = fleet.state_dir();
        for host in &fleet.hosts {
            let found = fleet.host(&host.name).expect("a listed host is found");
            assert_eq!(found.name, host.name);
            let _ = host_ip(&host.address);
        }
        let _ = fleet.host("no such host");
    }
    if let Ok(layout) = Layout::load(path) {
        for (i, p) in layout.pairings.iter().enumerate() {
            let name = p.display_name(i);
            let _ = layout.process_for(&name, Role::Target);
            let _ = layout.process_for(&name, Role::Draft);
        }
        for entry in &layout.processes {
            let _ = layout.pairing_of(entry);
            let _ = entry.reference().to_string();
        }
    }

    // The agent (`tightwad-agent --config FILE`).
    if let Ok(agent) = AgentConfig::load(Some(path)) {
        for process in &agent.processes {
            let _ = port_from_args(&process.args);
        }
        let _ = agent.receive_dir();
    }
});
