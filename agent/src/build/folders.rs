//! The finished builds under `<state>/builds/`: installing one, removing the ones no longer
//! needed. Blocking filesystem work: the build runs these on tokio's blocking pool.

use super::record::{self, BuildInfo, Record, Slot};
use super::{compile, io_err, BuildError};
use std::path::Path;

/// Copies the executables of `bin` and their `build.json` into `<builds>/<folder>`: staged in a
/// hidden folder and renamed into place only when complete, so a folder named like a build is
/// always a whole one.
pub(super) fn install(
    builds: &Path,
    folder: &str,
    bin: &Path,
    info: &BuildInfo,
) -> Result<(), BuildError> {
    let staging = builds.join(format!(".{folder}.tmp"));
    let _ = std::fs::remove_dir_all(&staging);
    let staging_bin = staging.join("bin");
    std::fs::create_dir_all(&staging_bin).map_err(io_err(&staging_bin))?;
    for exe in compile::TARGETS {
        let from = bin.join(exe);
        std::fs::copy(&from, staging_bin.join(exe)).map_err(io_err(&from))?;
    }
    let _ = std::os::unix::fs::symlink("ggml-rpc-server", staging_bin.join("rpc-server"));
    let json = serde_json::to_vec_pretty(info).map_err(|e| BuildError::Source(e.to_string()))?;
    std::fs::write(staging.join("build.json"), json).map_err(io_err(&staging))?;
    let dest = builds.join(folder);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest).map_err(io_err(&dest))
}

/// Removes builds that are neither current nor previous (and stale work folders).
pub(super) fn prune(state: &Path, record: &Record) {
    let keep: Vec<String> = [Some(&record.current), record.previous.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|slot| match slot {
            Slot::Build(folder) => Some(folder.clone()),
            Slot::Configured => None,
        })
        .collect();
    let Ok(entries) = std::fs::read_dir(record::builds_dir(state)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_build = entry.path().join("build.json").is_file();
        if is_build && !keep.contains(&name) {
            tracing::info!(build = %name, "removing an old build");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
