//! The llama.cpp source of a build: a tarball (uploaded by the coordinator, unpacked here) or a
//! git clone, and where the llama.cpp tree is inside it (the top, or `vendor/llama.cpp` in the
//! llama-cpp-python source distribution that `scripts/setup` uses).

use super::BuildError;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// Unpacks a `.tar.gz` into `dest` (which must not exist), dropping a single top-level folder.
/// Entries that would land outside `dest` (absolute paths, `..`) are refused by `tar`'s
/// `unpack_in`; links are unpacked as links inside the tree only.
pub fn unpack_tarball(tarball: &Path, dest: &Path) -> Result<(), BuildError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| BuildError::Io {
            path: path.clone(),
            source,
        }
    };
    let staging = dest.with_extension("unpacking");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let file = std::fs::File::open(tarball).map_err(io(tarball))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive.set_preserve_mtime(true);
    let entries = archive.entries().map_err(|e| {
        BuildError::Source(format!(
            "{} is not a readable .tar.gz: {e}",
            tarball.display()
        ))
    })?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| BuildError::Source(format!("{} is corrupt: {e}", tarball.display())))?;
        let unpacked = entry
            .unpack_in(&staging)
            .map_err(|e| BuildError::Source(format!("unpacking {}: {e}", tarball.display())))?;
        if !unpacked {
            return Err(BuildError::Source(format!(
                "{} has an entry outside its tree ({}): refused",
                tarball.display(),
                entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
    }
    // One folder at the top (`llama.cpp-b8111/`, `llama_cpp_python-0.3.36/`): use it as the root.
    let top: Vec<PathBuf> = std::fs::read_dir(&staging)
        .map_err(io(&staging))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let root = match top.as_slice() {
        [only] if only.is_dir() => only.clone(),
        _ => staging.clone(),
    };
    std::fs::rename(&root, dest).map_err(io(dest))?;
    let _ = std::fs::remove_dir_all(&staging);
    Ok(())
}

/// The llama.cpp tree inside an unpacked source.
pub fn llama_root(source: &Path) -> Result<PathBuf, BuildError> {
    for candidate in [
        source.to_path_buf(),
        source.join("vendor").join("llama.cpp"),
    ] {
        if candidate.join("CMakeLists.txt").is_file() && candidate.join("ggml").is_dir() {
            return Ok(candidate);
        }
    }
    Err(BuildError::Source(format!(
        "no llama.cpp tree in the source (looked for CMakeLists.txt and ggml/ at the top and in vendor/llama.cpp of {})",
        source.display()
    )))
}

/// A git URL or ref that cannot be mistaken for an option of git.
fn safe_git_word(word: &str) -> bool {
    !word.is_empty()
        && !word.starts_with('-')
        && !word.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Fetches `git_ref` (branch, tag such as `b8111`, or commit) of `url` into `dest` (shallow).
/// Returns the commit checked out.
pub async fn git_checkout(
    url: &str,
    git_ref: &str,
    dest: &Path,
    path_env: &std::ffi::OsStr,
) -> Result<String, BuildError> {
    if !safe_git_word(url) || !safe_git_word(git_ref) {
        return Err(BuildError::Source(format!(
            "refused git URL {url:?} / ref {git_ref:?}: empty, starting with '-', or with spaces"
        )));
    }
    let _ = tokio::fs::remove_dir_all(dest).await;
    std::fs::create_dir_all(dest).map_err(|source| BuildError::Io {
        path: dest.display().to_string(),
        source,
    })?;
    let steps: [&[&str]; 3] = [
        &["init", "-q"],
        &["fetch", "-q", "--depth", "1", "--", url, git_ref],
        &["checkout", "-q", "FETCH_HEAD"],
    ];
    for args in steps {
        let out = Command::new("git")
            .args(args)
            .current_dir(dest)
            .env("PATH", path_env)
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| BuildError::Source(format!("cannot run git: {e} (install git)")))?;
        if !out.status.success() {
            return Err(BuildError::Source(format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dest)
        .env("PATH", path_env)
        .output()
        .await
        .map_err(|e| BuildError::Source(format!("cannot run git: {e}")))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Apply `patches` to the llama.cpp tree at `root`, in order, with `patch -p1` (a patch that does
/// not apply fails the build with patch's own words: the source is another llama.cpp version than
/// the patch was made for).
pub async fn apply_patches(
    root: &Path,
    patches: &[tightwad_protocol::messages::SourcePatch],
    path_env: &std::ffi::OsStr,
) -> Result<(), BuildError> {
    for p in patches {
        let mut child = Command::new("patch")
            .args(["-p1", "--forward", "--batch", "--no-backup-if-mismatch"])
            .current_dir(root)
            .env("PATH", path_env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                BuildError::Source(format!(
                    "cannot run `patch` to apply {} ({e}): install it (apt-get install patch), or build with `tightwad build --stock`",
                    p.name
                ))
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(p.diff.as_bytes())
                .await
                .map_err(|e| BuildError::Source(format!("feeding {} to patch: {e}", p.name)))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| BuildError::Source(format!("patch for {}: {e}", p.name)))?;
        if !out.status.success() {
            return Err(BuildError::Source(format!(
                "{} does not apply to this llama.cpp source (made for another version?): {}{}\n(hint: `tightwad build --stock` builds without Tightwad's patches; one-pass verification then falls back to the multi-prompt form)",
                p.name,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// A short key of the patches, for the build's folder and cache key (empty without patches).
pub fn patches_key(patches: &[tightwad_protocol::messages::SourcePatch]) -> String {
    use sha2::{Digest, Sha256};
    if patches.is_empty() {
        return String::new();
    }
    let mut h = Sha256::new();
    for p in patches {
        h.update(p.name.as_bytes());
        h.update([0]);
        h.update(p.diff.as_bytes());
        h.update([0]);
    }
    format!("-p{}", &hex::encode(h.finalize())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("src.tar.gz");
        let file = std::fs::File::create(&path).expect("create");
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        for (name, text) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, text.as_bytes())
                .expect("append");
        }
        builder
            .into_inner()
            .expect("finish")
            .finish()
            .expect("gzip");
        path
    }

    #[test]
    fn unpacks_dropping_the_top_folder_and_finds_a_vendored_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = tarball(
            dir.path(),
            &[
                ("pkg-1.0/setup.py", "x"),
                ("pkg-1.0/vendor/llama.cpp/CMakeLists.txt", "project(llama)"),
                ("pkg-1.0/vendor/llama.cpp/ggml/CMakeLists.txt", ""),
            ],
        );
        let dest = dir.path().join("source");
        unpack_tarball(&t, &dest).expect("unpack");
        assert!(dest.join("setup.py").is_file());
        assert_eq!(
            llama_root(&dest).expect("root"),
            dest.join("vendor").join("llama.cpp")
        );
    }

    #[test]
    fn a_tree_without_llama_cpp_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = tarball(dir.path(), &[("x/readme", "hi")]);
        let dest = dir.path().join("source");
        unpack_tarball(&t, &dest).expect("unpack");
        let err = llama_root(&dest).expect_err("no tree").to_string();
        assert!(err.contains("no llama.cpp tree"), "{err}");
        let garbage = dir.path().join("garbage.tar.gz");
        std::fs::write(&garbage, b"not a tarball").expect("write");
        assert!(unpack_tarball(&garbage, &dir.path().join("g")).is_err());
    }

    #[test]
    fn git_words_that_look_like_options_are_refused() {
        assert!(safe_git_word("https://github.com/ggml-org/llama.cpp"));
        assert!(safe_git_word("b8111"));
        assert!(!safe_git_word("--upload-pack=evil"));
        assert!(!safe_git_word("a b"));
        assert!(!safe_git_word(""));
    }
}
