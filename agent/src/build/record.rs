//! Which build is current and which came before it (`<state>/builds/current.json`), written
//! atomically, so an agent restarted after a switch serves the same build.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tightwad_protocol::messages::{BuildBackend, LlamaBuild};

/// A build the supervisor can run: one of `tightwad build`'s folders, or the binaries the agent
/// config names (before the first build, and what a rollback of the first build returns to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Configured,
    Build(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub current: Slot,
    pub previous: Option<Slot>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            current: Slot::Configured,
            previous: None,
        }
    }
}

/// What `<state>/builds/<folder>/build.json` says about a finished build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub build: LlamaBuild,
    pub backend: BuildBackend,
    /// sha256 of the tarball, or the git commit: the same source is never built twice.
    pub source_key: String,
    /// Where it came from, for people (`tarball NAME` / `git URL@REF`).
    pub source: String,
    pub cmake_flags: Vec<String>,
}

pub fn builds_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("builds")
}

fn record_path(state_dir: &Path) -> PathBuf {
    builds_dir(state_dir).join("current.json")
}

pub fn load(state_dir: &Path) -> Record {
    std::fs::read(record_path(state_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

pub fn save(state_dir: &Path, record: &Record) -> std::io::Result<()> {
    let path = record_path(state_dir);
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)
}

pub fn info(state_dir: &Path, folder: &str) -> Option<BuildInfo> {
    let bytes = std::fs::read(builds_dir(state_dir).join(folder).join("build.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The bin folder of a slot (`None` for the configured binaries).
pub fn bin_dir(state_dir: &Path, slot: &Slot) -> Option<PathBuf> {
    match slot {
        Slot::Configured => None,
        Slot::Build(folder) => Some(builds_dir(state_dir).join(folder).join("bin")),
    }
}

/// The finished build of this source and backend, if there is one.
pub fn find(state_dir: &Path, source_key: &str, backend: BuildBackend) -> Option<String> {
    let entries = std::fs::read_dir(builds_dir(state_dir)).ok()?;
    entries.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            return None;
        }
        let info = info(state_dir, &name)?;
        (info.source_key == source_key && info.backend == backend).then_some(name)
    })
}
