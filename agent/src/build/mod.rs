//! `tightwad build` on the agent: build llama.cpp from a source, smoke-test it, switch the
//! supervised processes to it, keep the previous build for `--rollback`.
//!
//! Layout under `<state>/builds/`:
//! - `incoming/` — uploaded source tarballs (named by their sha256, so a re-sent tarball is
//!   recognised and not uploaded again; partial uploads resume like model copies);
//! - `.work-*` — an unpacked tree and its `build-tightwad` folder while it compiles (removed after);
//! - `<folder>/bin/` + `<folder>/build.json` — a finished build, named
//!   `b<build>-<commit>-<backend>-<source>`, renamed into place only when complete;
//! - `current.json` — which build is current and which was before (see [`record`]).
//!
//! Nothing supervised runs a new build before its smoke test passed; a failed build or smoke
//! test leaves the current build serving. Only one build runs at a time per agent.

pub mod backend;
pub mod compile;
mod folders;
pub mod record;
pub mod smoke;
pub mod source;
mod switch;

use crate::config::AgentConfig;
use crate::models::ModelFolders;
use crate::supervisor::Supervisor;
use record::{Record, Slot};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tightwad_protocol::messages::{
    BuildBackend, BuildIdentity, BuildOutcome, BuildProgress, BuildStage, LlamaBuild, ProcessKind,
};
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("another build is already running on this host; wait for it to finish")]
    Busy,
    #[error("source: {0}")]
    Source(String),
    #[error("receiving the source tarball: {0}")]
    Upload(#[from] crate::transfer::TransferError),
    #[error("cmake configure failed: {0}")]
    Configure(String),
    #[error("compile failed: {0}")]
    Compile(String),
    #[error("the new build's llama-server does not report its version: {0}")]
    Version(String),
    #[error("smoke test failed: {0}")]
    SmokeTest(String),
    #[error("switching to the new build failed: {0}")]
    Switch(String),
    #[error("nothing to roll back to: this host has no previous build")]
    NoPrevious,
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A source ready to build: an uploaded tarball (checked against its sha256) or a git ref.
pub enum PreparedSource {
    Tarball { path: PathBuf, sha256: String },
    Git { url: String, git_ref: String },
}

/// What a build needs of the agent.
pub struct BuildContext<'a> {
    pub config: &'a AgentConfig,
    pub supervisor: &'a Supervisor,
    pub models: &'a ModelFolders,
}

/// Progress reports, forwarded to the coordinator's stream by the service.
pub type Progress = UnboundedSender<BuildProgress>;

fn report(
    progress: &Progress,
    stage: BuildStage,
    done: u64,
    total: u64,
    message: impl Into<String>,
) {
    let _ = progress.send(BuildProgress {
        stage,
        done,
        total,
        message: message.into(),
    });
}

/// Where uploaded tarballs go.
pub fn incoming_dir(state_dir: &Path) -> PathBuf {
    record::builds_dir(state_dir).join("incoming")
}

/// Makes the recorded current build the one the supervisor runs (agent start-up).
pub fn restore(config: &AgentConfig) {
    let record = record::load(&config.state_dir);
    if let Some(bin) = record::bin_dir(&config.state_dir, &record.current) {
        if bin.is_dir() {
            tracing::info!(build = %bin.display(), "serving the build `tightwad build` made current");
            config.active_build.set(Some(bin));
        } else {
            tracing::warn!(build = %bin.display(), "the recorded current build is gone: using the configured binaries");
        }
    }
}

/// The backend of a binary inside one of our build folders (`<folder>/bin/<exe>`).
pub fn backend_of_binary(binary: &Path) -> Option<BuildBackend> {
    let folder = binary.parent()?.parent()?;
    let bytes = std::fs::read(folder.join("build.json")).ok()?;
    serde_json::from_slice::<record::BuildInfo>(&bytes)
        .ok()
        .map(|info| info.backend)
}

/// The identity of a slot, for reports.
async fn identity_of(config: &AgentConfig, slot: &Slot) -> Option<BuildIdentity> {
    match slot {
        Slot::Build(folder) => record::info(&config.state_dir, folder).map(|info| BuildIdentity {
            build: LlamaBuild {
                backend: Some(info.backend),
                ..info.build
            },
            folder: Some(folder.clone()),
        }),
        Slot::Configured => {
            let binary = config.configured_binary(ProcessKind::LlamaServer)?;
            let build = crate::versions::llama_build(&binary).await.ok()?;
            Some(BuildIdentity {
                build,
                folder: None,
            })
        }
    }
}

fn folder_name(build: &LlamaBuild, backend: BuildBackend, source_key: &str) -> String {
    let number = build
        .build_number
        .map(|n| n.to_string())
        .unwrap_or_else(|| "0".into());
    let commit = build.commit.clone().unwrap_or_else(|| "unknown".into());
    let key: String = source_key.chars().take(8).collect();
    format!("b{number}-{commit}-{backend}-{key}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds `source` (unless this source and backend were built before), smoke-tests it and
/// switches to it.
#[tracing::instrument(skip_all)]
pub async fn build(
    ctx: &BuildContext<'_>,
    source: PreparedSource,
    patches: &[tightwad_protocol::messages::SourcePatch],
    backend: Option<BuildBackend>,
    jobs: Option<u32>,
    progress: &Progress,
) -> Result<BuildOutcome, BuildError> {
    let started = Instant::now();
    let state = &ctx.config.state_dir;
    let builds = record::builds_dir(state);
    std::fs::create_dir_all(&builds).map_err(io_err(&builds))?;
    let (gpus, _) = crate::gpu::probe().await;
    let host = backend::HostTraits::this_host(gpus);
    let (backend, why) = match backend {
        Some(b) => (b, "set in the coordinator's config".to_string()),
        None => backend::detect(&host),
    };
    let path_env = compile::path_env(&ctx.config.build.extra_path);
    let work = builds.join(format!(".work-{backend}"));
    remove_tree(&work).await;
    let tree = work.join("source");

    // The source, and its key: the same key and backend are never built twice.
    let (source_key, description) = match &source {
        PreparedSource::Tarball { path, sha256 } => (
            sha256.chars().take(16).collect::<String>(),
            format!(
                "tarball {}",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        ),
        PreparedSource::Git { url, git_ref } => {
            report(
                progress,
                BuildStage::Unpack,
                0,
                0,
                format!("git fetch {url} {git_ref}"),
            );
            let commit = source::git_checkout(url, git_ref, &tree, &path_env).await?;
            (
                format!("git-{}", commit.chars().take(12).collect::<String>()),
                format!("git {url}@{git_ref} ({commit})"),
            )
        }
    };
    // Patched and stock builds of one source are different builds.
    let source_key = format!("{source_key}{}", source::patches_key(patches));
    let reused = record::find(state, &source_key, backend);
    let folder = match reused.clone() {
        Some(folder) => {
            report(
                progress,
                BuildStage::Compile,
                1,
                1,
                format!("{folder} was built from this source before: reusing it"),
            );
            folder
        }
        None => {
            if let PreparedSource::Tarball { path, .. } = &source {
                report(
                    progress,
                    BuildStage::Unpack,
                    0,
                    0,
                    format!("unpacking {description}"),
                );
                let (tarball, dest) = (path.clone(), tree.clone());
                tokio::task::spawn_blocking(move || source::unpack_tarball(&tarball, &dest))
                    .await
                    .map_err(|e| BuildError::Source(format!("unpack task failed: {e}")))??;
            }
            let root = source::llama_root(&tree)?;
            if !patches.is_empty() {
                let names: Vec<&str> = patches.iter().map(|p| p.name.as_str()).collect();
                report(
                    progress,
                    BuildStage::Unpack,
                    0,
                    0,
                    format!("applying {}", names.join(", ")),
                );
                source::apply_patches(&root, patches, &path_env).await?;
            }
            let mut flags = backend::cmake_flags(backend, &host);
            flags.extend(ctx.config.build.cmake_flags.iter().cloned());
            let jobs = jobs.or(ctx.config.build.jobs).unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(2)
            });
            let compile = compile::Compile {
                root: &root,
                flags: &flags,
                jobs,
                path: path_env.clone(),
                ccache_dir: &ctx.config.build.ccache_dir,
                timeout: Duration::from_secs(ctx.config.build.timeout_s),
            };
            report(
                progress,
                BuildStage::Configure,
                0,
                0,
                format!(
                    "cmake for {backend} ({why}), {jobs} jobs, {}",
                    if compile.ccache().is_some() {
                        "ccache on"
                    } else {
                        "no ccache (install it to make rebuilds fast)"
                    }
                ),
            );
            let step_progress = progress.clone();
            let mut on_step = move |done: u64, total: u64, line: &str| {
                report(
                    &step_progress,
                    BuildStage::Compile,
                    done,
                    total,
                    line.to_string(),
                );
            };
            let bin = compile
                .run(&mut |_line| {}, &mut on_step)
                .await
                .map_err(|e| match e {
                    BuildError::Configure(m) => BuildError::Configure(format!(
                        "{m}\n(hint: {})",
                        backend::toolkit_hint(backend)
                    )),
                    other => other,
                })?;
            let version = crate::versions::llama_build(&bin.join("llama-server"))
                .await
                .map_err(BuildError::Version)?;
            let folder = folder_name(&version, backend, &source_key);
            let info = record::BuildInfo {
                build: version,
                backend,
                source_key: source_key.clone(),
                source: description.clone(),
                cmake_flags: flags,
            };
            let (into, name) = (builds.clone(), folder.clone());
            off_runtime(move || folders::install(&into, &name, &bin, &info)).await??;
            folder
        }
    };
    remove_tree(&work).await;

    let record = record::load(state);
    let current_identity = identity_of(ctx.config, &record.current).await;
    let keeps_serving = match &current_identity {
        Some(id) => format!("the current build ({id}) keeps serving"),
        None => "the current binaries keep serving".to_string(),
    };
    let dir = builds.join(&folder);
    let model = smoke::pick_model(ctx.config.build.smoke_model.as_deref(), ctx.models)?;
    report(
        progress,
        BuildStage::SmokeTest,
        0,
        1,
        format!("smoke test: {} generates a few tokens", model.display()),
    );
    let smoke_test = match smoke::run(&dir.join("bin").join("llama-server"), &model).await {
        Ok(text) => text,
        Err(e) => {
            // Never leave a build that failed its test where a later run could pick it up.
            if record.current != Slot::Build(folder.clone()) {
                remove_tree(&dir).await;
            }
            return Err(BuildError::SmokeTest(format!(
                "{}\n{keeps_serving}",
                e.to_string().trim_start_matches("smoke test failed: ")
            )));
        }
    };
    report(progress, BuildStage::SmokeTest, 1, 1, smoke_test.clone());

    let new_slot = Slot::Build(folder.clone());
    let (record, switched) = if record.current == new_slot {
        report(
            progress,
            BuildStage::Switch,
            1,
            1,
            "already the current build",
        );
        (record, Vec::new())
    } else {
        let next = Record {
            current: new_slot,
            previous: Some(record.current.clone()),
        };
        let switched = switch::switch_to(ctx, &record, &next, progress).await?;
        let (state, keep) = (state.clone(), next.clone());
        let _ = off_runtime(move || folders::prune(&state, &keep)).await;
        (next, switched)
    };
    let identity = identity_of(ctx.config, &record.current)
        .await
        .ok_or_else(|| BuildError::Version(format!("build.json of {folder} is unreadable")))?;
    let previous = match &record.previous {
        Some(slot) => identity_of(ctx.config, slot).await,
        None => None,
    };
    Ok(BuildOutcome {
        identity,
        previous,
        switched,
        smoke_test,
        reused: reused.is_some(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Switches back to the previous build (which passed its smoke test when it was built).
pub async fn rollback(
    ctx: &BuildContext<'_>,
    progress: &Progress,
) -> Result<BuildOutcome, BuildError> {
    let started = Instant::now();
    let state = &ctx.config.state_dir;
    let record = record::load(state);
    let previous = record.previous.clone().ok_or(BuildError::NoPrevious)?;
    if let Some(bin) = record::bin_dir(state, &previous) {
        if !bin.join("llama-server").is_file() {
            return Err(BuildError::Switch(format!(
                "the previous build's folder {} is gone",
                bin.display()
            )));
        }
    }
    let next = Record {
        current: previous,
        previous: Some(record.current.clone()),
    };
    let switched = switch::switch_to(ctx, &record, &next, progress).await?;
    let identity = identity_of(ctx.config, &next.current)
        .await
        .ok_or_else(|| BuildError::Version("cannot read the rolled-back build's version".into()))?;
    let previous = match &next.previous {
        Some(slot) => identity_of(ctx.config, slot).await,
        None => None,
    };
    Ok(BuildOutcome {
        identity,
        previous,
        switched,
        smoke_test: "rollback: this build passed its smoke test when it was built".into(),
        reused: true,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs filesystem work (a source tree removed, executables copied) on tokio's blocking pool. On
/// the agent's two async workers it stalled the QUIC connections beside it for as long as it took:
/// two agents removing their trees at once on a loaded CI machine went silent past the peer idle
/// timeout, and the coordinator lost both builds' results.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BuildError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BuildError::Source(format!("filesystem task failed: {e}")))
}

/// Removes a folder if it is there, off the async workers (see [`off_runtime`]).
async fn remove_tree(path: &Path) {
    let _ = tokio::fs::remove_dir_all(path).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_carry_version_commit_backend_and_source() {
        let build = LlamaBuild {
            build_number: Some(8111),
            version: None,
            commit: Some("abc1234".into()),
            backend: None,
        };
        assert_eq!(
            folder_name(&build, BuildBackend::Cuda, "0123456789abcdef"),
            "b8111-abc1234-cuda-01234567"
        );
        let odd = LlamaBuild {
            build_number: None,
            version: None,
            commit: Some("../x y".into()),
            backend: None,
        };
        assert_eq!(folder_name(&odd, BuildBackend::Cpu, "k"), "b0-.._x_y-cpu-k");
    }
}
