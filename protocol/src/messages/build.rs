//! `tightwad build`: what to build (source, patches, backend) and what it reports while building
//! and when done.

use serde::{Deserialize, Serialize};

use super::{LlamaBuild, UploadOffer};

/// The compute backend a llama.cpp build targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildBackend {
    Cpu,
    Cuda,
    /// AMD ROCm/HIP.
    Hip,
    Metal,
    Vulkan,
}

impl BuildBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildBackend::Cpu => "cpu",
            BuildBackend::Cuda => "cuda",
            BuildBackend::Hip => "hip",
            BuildBackend::Metal => "metal",
            BuildBackend::Vulkan => "vulkan",
        }
    }
}

impl std::fmt::Display for BuildBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BuildBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(BuildBackend::Cpu),
            "cuda" => Ok(BuildBackend::Cuda),
            "hip" | "rocm" => Ok(BuildBackend::Hip),
            "metal" => Ok(BuildBackend::Metal),
            "vulkan" => Ok(BuildBackend::Vulkan),
            other => Err(format!(
                "unknown build backend {other:?} (cpu, cuda, hip, metal, vulkan)"
            )),
        }
    }
}

/// Where an agent gets the llama.cpp source for `Request::Build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildSource {
    /// A `.tar.gz` the coordinator uploads on the request's stream (hosts without internet).
    /// Either a llama.cpp tree or one that vendors it (the llama-cpp-python sdist).
    Tarball(UploadOffer),
    /// `git clone` on the agent itself (the host needs network access).
    Git { url: String, git_ref: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    pub source: BuildSource,
    /// The coordinator's per-host override; the agent detects the backend from its GPUs otherwise.
    pub backend: Option<BuildBackend>,
    /// Parallel compile jobs (default: the agent's setting, else its CPU count).
    pub jobs: Option<u32>,
    /// Patches applied to the llama.cpp tree (`patch -p1`, in order) before it compiles:
    /// Tightwad's bundled ones (`patches/llama.cpp/`) unless `tightwad build --stock`.
    pub patches: Vec<SourcePatch>,
}

/// One unified diff against the llama.cpp tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePatch {
    /// The patch file's name (`0001-server-client-draft-tokens.patch`), for logs and errors.
    pub name: String,
    pub diff: String,
}

/// The build a host runs: version, commit and backend (`build.backend`), what `tightwad doctor`
/// compares across hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildIdentity {
    pub build: LlamaBuild,
    /// The build's folder on the agent (`<state>/builds/<folder>`); `None` for the binaries
    /// `[binaries]` in agent.toml names (before the first `tightwad build`).
    pub folder: Option<String>,
}

impl std::fmt::Display for BuildIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.build;
        if let Some(v) = &b.version {
            write!(f, "{v} ")?;
        }
        match b.build_number {
            Some(n) => write!(f, "b{n}")?,
            None => f.write_str("b?")?,
        }
        if let Some(c) = &b.commit {
            write!(f, "-{c}")?;
        }
        if let Some(backend) = b.backend {
            write!(f, " ({backend})")?;
        }
        if self.folder.is_none() {
            f.write_str(" [configured binaries]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStage {
    Upload,
    Unpack,
    Configure,
    Compile,
    SmokeTest,
    Switch,
}

/// One step of a build: `done`/`total` are bytes (upload) or compile steps (ninja's `[n/m]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildProgress {
    pub stage: BuildStage,
    pub done: u64,
    pub total: u64,
    pub message: String,
}

/// A build that passed its smoke test and is now current (or was current before a rollback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildOutcome {
    pub identity: BuildIdentity,
    /// The build current before this one (kept for `--rollback`).
    pub previous: Option<BuildIdentity>,
    /// Supervised processes restarted onto this build.
    pub switched: Vec<String>,
    /// What the smoke test did (model, tokens generated).
    pub smoke_test: String,
    /// The same source was already built here: nothing was compiled.
    pub reused: bool,
    pub seconds: f64,
}
