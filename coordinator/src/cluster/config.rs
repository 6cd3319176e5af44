//! The coordinator's fleet config: which agents exist and where the coordinator keeps its own
//! identity, pinned agents and pending join tokens.
//!
//! ```toml
//! state_dir = "~/.tightwad/coordinator"   # optional
//!
//! [[hosts]]
//! name = "gpu-box"
//! address = "10.0.0.2:7420"               # port defaults to 7420
//! ```
//! Unknown keys are ignored so the same file can carry the proxy's own settings.

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub address: String,
    /// `tightwad build`: this host's GPU backend (cpu, cuda, hip, metal, vulkan) instead of the
    /// one its agent detects.
    #[serde(default)]
    pub build_backend: Option<tightwad_protocol::messages::BuildBackend>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct FleetConfig {
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

/// "no config file …": which file was looked for and how to name or write one.
pub fn missing_config(path: &Path) -> String {
    let shown = if path.is_relative() {
        match std::env::current_dir() {
            Ok(dir) => format!("{} ({})", path.display(), dir.join(path).display()),
            Err(_) => path.display().to_string(),
        }
    } else {
        path.display().to_string()
    };
    format!(
        "no config file: looked for {shown}; pass -c FILE (or set TIGHTWAD_CONFIG), or write one with `tightwad init`"
    )
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

impl FleetConfig {
    /// Reads `path`; a missing file is an empty fleet (so `tightwad token` works before any
    /// host is configured).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str::<FleetConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FleetConfig::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut names = std::collections::HashSet::new();
        for host in &config.hosts {
            anyhow::ensure!(
                names.insert(host.name.clone()),
                "host {:?} appears twice in {}",
                host.name,
                path.display()
            );
        }
        config.state_dir = config.state_dir.map(|d| match d.strip_prefix("~") {
            Ok(rest) => home().join(rest),
            Err(_) => d,
        });
        Ok(config)
    }

    /// Reads `path`, which must exist: the commands that talk to the fleet. A missing file is an
    /// error naming the file looked for, returned before anything (keys, state dir) is created.
    pub fn load_existing(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            anyhow::bail!("{}", missing_config(path));
        }
        Self::load(path)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| home().join(".tightwad").join("coordinator"))
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&HostEntry> {
        self.hosts.iter().find(|h| h.name == name).with_context(|| {
            let known: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            format!(
                "no host named {name:?} in the config (known: {})",
                known.join(", ")
            )
        })
    }
}
