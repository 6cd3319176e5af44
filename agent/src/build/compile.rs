//! cmake configure and build of llama-server, rpc-server and llama-quantize, with ccache when it
//! is installed. The build folder is `build-tightwad` inside the llama.cpp tree and ccache's
//! base directory is that tree, exactly as in `scripts/setup`: ccache then sees the same
//! relative paths whatever folder the tree was unpacked in, so a rebuild of a source already
//! compiled anywhere on the host (setup, another agent, a previous build) is mostly cache hits.

use super::BuildError;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

pub const BUILD_FOLDER: &str = "build-tightwad";
pub const TARGETS: [&str; 3] = ["llama-server", "ggml-rpc-server", "llama-quantize"];
/// Lines of output kept for the error message of a failed step.
const TAIL: usize = 25;

/// PATH for the build: the configured extra folders first.
pub fn path_env(extra: &[PathBuf]) -> OsString {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The first `name` on `path`.
pub fn which(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

pub struct Compile<'a> {
    pub root: &'a Path,
    pub flags: &'a [String],
    pub jobs: u32,
    pub path: OsString,
    pub ccache_dir: &'a Path,
    pub timeout: Duration,
}

/// Progress of the compile: ninja's `[done/total]`, and the line.
pub type OnStep<'a> = &'a mut (dyn FnMut(u64, u64, &str) + Send);

impl Compile<'_> {
    /// Whether ccache is used, and why not.
    pub fn ccache(&self) -> Option<PathBuf> {
        which("ccache", &self.path)
    }

    fn command(&self, cmake: &Path) -> Command {
        let mut command = Command::new(cmake);
        command
            .env("PATH", &self.path)
            .env("CCACHE_DIR", self.ccache_dir)
            .env("CCACHE_BASEDIR", self.root)
            .env("CCACHE_NOHASHDIR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Configures and builds; returns the folder holding the three executables.
    pub async fn run(
        &self,
        on_configure: &mut (dyn FnMut(&str) + Send),
        on_step: OnStep<'_>,
    ) -> Result<PathBuf, BuildError> {
        let cmake = which("cmake", &self.path).ok_or_else(|| {
            BuildError::Configure(
                "cmake is not installed (or not on PATH; see [build] extra_path in agent.toml)"
                    .into(),
            )
        })?;
        let build = self.root.join(BUILD_FOLDER);
        let _ = tokio::fs::remove_dir_all(&build).await;
        let mut configure = self.command(&cmake);
        configure.arg("-S").arg(self.root).arg("-B").arg(&build);
        if which("ninja", &self.path).is_some() {
            configure.args(["-G", "Ninja"]);
        }
        for flag in self.flags {
            configure.arg(format!("-D{flag}"));
        }
        if self.ccache().is_some() {
            configure.args([
                "-DCMAKE_C_COMPILER_LAUNCHER=ccache",
                "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache",
            ]);
        }
        run_streaming(configure, self.timeout, &mut |line| on_configure(line))
            .await
            .map_err(BuildError::Configure)?;
        let mut compile = self.command(&cmake);
        compile
            .arg("--build")
            .arg(&build)
            .args(["-j", &self.jobs.max(1).to_string(), "--target"])
            .args(TARGETS);
        run_streaming(compile, self.timeout, &mut |line| {
            if let Some((done, total)) = ninja_step(line) {
                on_step(done, total, line);
            }
        })
        .await
        .map_err(BuildError::Compile)?;
        Ok(build.join("bin"))
    }
}

/// `[12/215] Building CXX object ...` → (12, 215); make's `[ 45%]` → (45, 100).
pub fn ninja_step(line: &str) -> Option<(u64, u64)> {
    let inner = line
        .trim_start()
        .strip_prefix('[')?
        .split_once(']')?
        .0
        .trim();
    if let Some((done, total)) = inner.split_once('/') {
        return Some((done.trim().parse().ok()?, total.trim().parse().ok()?));
    }
    let percent = inner.strip_suffix('%')?.trim().parse().ok()?;
    Some((percent, 100))
}

/// Runs a command, handing every output line to `on_line`; on failure the error carries the
/// last lines of output.
async fn run_streaming(
    mut command: Command,
    timeout: Duration,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), String> {
    let program = format!("{:?}", command.as_std().get_program());
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL);
    let collect = async {
        while let Some(line) = rx.recv().await {
            on_line(&line);
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("{program}: {e}")),
        Err(_) => {
            return Err(format!(
                "{program} did not finish within {}s ([build] timeout_s)",
                timeout.as_secs()
            ))
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed ({status}); last output:\n{}",
            tail.iter().cloned().collect::<Vec<_>>().join("\n")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ninja_and_make_progress() {
        assert_eq!(
            ninja_step("[12/215] Building CXX object ggml/src/x.o"),
            Some((12, 215))
        );
        assert_eq!(ninja_step("[ 45%] Built target ggml"), Some((45, 100)));
        assert_eq!(ninja_step("-- Configuring done"), None);
        assert_eq!(ninja_step("[garbage"), None);
    }
}
