//! Model files: listing, locating by file name across the configured folders (the field report's
//! `~/models` vs `~/.tightwad/models`), and the path rules every model operation goes through.
//!
//! Only files inside a configured model folder are ever read or written: file names are plain
//! names (no separators, no `..`, no leading dot, which is reserved for partial transfers), and
//! symbolic links are followed only when they stay inside their folder.

use crate::gguf;
use std::path::{Path, PathBuf};
use tightwad_protocol::messages::{ModelFile, ModelFolder};

/// How deep below a model folder files are looked for (`folder/org/model/x.gguf`).
const MAX_DEPTH: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ModelPathError {
    #[error("{0:?} is not a plain file name (no '/', '..' or leading '.')")]
    BadName(String),
    #[error("no model folder is configured")]
    NoFolder,
    #[error("{name:?} not found in the model folders {folders}")]
    NotFound { name: String, folders: String },
    #[error("{0} points outside its model folder")]
    Escapes(String),
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Accepts only plain file names.
pub fn validate_file_name(name: &str) -> Result<(), ModelPathError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name != ".."
        && Path::new(name).file_name().is_some_and(|f| f == name);
    if ok {
        Ok(())
    } else {
        Err(ModelPathError::BadName(name.to_string()))
    }
}

#[derive(Debug, Clone)]
pub struct ModelFolders {
    folders: Vec<PathBuf>,
}

impl ModelFolders {
    pub fn new(folders: Vec<PathBuf>) -> Self {
        ModelFolders { folders }
    }

    pub fn describe(&self) -> String {
        self.folders
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn folders(&self) -> Vec<ModelFolder> {
        let disks = sysinfo::Disks::new_with_refreshed_list();
        self.folders
            .iter()
            .map(|folder| {
                let canonical = folder.canonicalize().ok();
                let disk = canonical.as_ref().and_then(|c| {
                    disks
                        .list()
                        .iter()
                        .filter(|d| c.starts_with(d.mount_point()))
                        .max_by_key(|d| d.mount_point().as_os_str().len())
                });
                ModelFolder {
                    path: folder.display().to_string(),
                    exists: canonical.is_some(),
                    disk_total_bytes: disk.map(|d| d.total_space()),
                    disk_available_bytes: disk.map(|d| d.available_space()),
                }
            })
            .collect()
    }

    /// Every `.gguf` file in every folder, with its header summary.
    pub fn list(&self) -> Vec<ModelFile> {
        let mut files = Vec::new();
        for folder in &self.folders {
            let Ok(root) = folder.canonicalize() else {
                continue;
            };
            walk(&root, &root, 0, &mut |path| {
                if path.extension().is_some_and(|e| e == "gguf") {
                    files.push(describe(folder, path));
                }
            });
        }
        files
    }

    /// Files named `file_name` in any folder (several when copies exist in several folders).
    pub fn find(&self, file_name: &str) -> Result<Vec<ModelFile>, ModelPathError> {
        validate_file_name(file_name)?;
        let mut found = Vec::new();
        for folder in &self.folders {
            let Ok(root) = folder.canonicalize() else {
                continue;
            };
            walk(&root, &root, 0, &mut |path| {
                if path.file_name().is_some_and(|n| n == file_name) {
                    found.push(describe(folder, path));
                }
            });
        }
        Ok(found)
    }

    /// The path of the first file named `file_name`.
    pub fn locate(&self, file_name: &str) -> Result<PathBuf, ModelPathError> {
        self.find(file_name)?
            .into_iter()
            .next()
            .map(|m| PathBuf::from(m.path))
            .ok_or_else(|| ModelPathError::NotFound {
                name: file_name.to_string(),
                folders: self.describe(),
            })
    }
}

/// Where a received file named `file_name` goes in `folder` (created if missing); refuses a
/// destination that is a symbolic link.
pub fn destination(folder: &Path, file_name: &str) -> Result<(PathBuf, PathBuf), ModelPathError> {
    validate_file_name(file_name)?;
    std::fs::create_dir_all(folder).map_err(|source| ModelPathError::Io {
        path: folder.display().to_string(),
        source,
    })?;
    let root = folder.canonicalize().map_err(|source| ModelPathError::Io {
        path: folder.display().to_string(),
        source,
    })?;
    let target = root.join(file_name);
    let part = root.join(format!(".{file_name}.part"));
    for path in [&target, &part] {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(ModelPathError::Escapes(path.display().to_string()));
        }
    }
    Ok((target, part))
}

fn walk(root: &Path, dir: &Path, depth: usize, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let resolved = if meta.file_type().is_symlink() {
            match path.canonicalize() {
                Ok(target) if target.starts_with(root) => target,
                _ => {
                    tracing::debug!(path = %path.display(), "skipping a link that leaves its model folder");
                    continue;
                }
            }
        } else {
            path.clone()
        };
        if resolved.is_dir() {
            if depth < MAX_DEPTH && !meta.file_type().is_symlink() {
                walk(root, &path, depth + 1, visit);
            }
        } else if resolved.is_file() {
            visit(&path);
        }
    }
}

fn describe(folder: &Path, path: &Path) -> ModelFile {
    let size_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let (gguf, error) = if path.extension().is_some_and(|e| e == "gguf") {
        match gguf::read_summary(path) {
            Ok(summary) => (Some(summary), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    ModelFile {
        file_name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.display().to_string(),
        folder: folder.display().to_string(),
        size_bytes,
        gguf,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in [
            "",
            "..",
            ".",
            "../x.gguf",
            "a/b.gguf",
            ".hidden.part",
            "x\0y",
        ] {
            assert!(validate_file_name(bad).is_err(), "{bad:?}");
        }
        validate_file_name("model-Q4_K_M.gguf").expect("plain name");
    }

    #[test]
    fn finds_across_folders_and_ignores_escaping_links() {
        let a = tempfile::tempdir().expect("a");
        let b = tempfile::tempdir().expect("b");
        let outside = tempfile::tempdir().expect("outside");
        std::fs::write(outside.path().join("secret.gguf"), b"x").expect("write");
        std::fs::create_dir(b.path().join("sub")).expect("sub");
        let bytes = tightwad_placement::synth::tiny_gguf(&["a"], None);
        std::fs::write(b.path().join("sub").join("m.gguf"), &bytes).expect("write");
        std::os::unix::fs::symlink(
            outside.path().join("secret.gguf"),
            a.path().join("secret.gguf"),
        )
        .expect("link");
        let folders = ModelFolders::new(vec![
            a.path().to_path_buf(),
            b.path().to_path_buf(),
            PathBuf::from("/nonexistent"),
        ]);
        let found = folders.find("m.gguf").expect("find");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0]
                .gguf
                .as_ref()
                .and_then(|g| g.architecture.as_deref()),
            Some("llama")
        );
        assert!(folders.find("secret.gguf").expect("find").is_empty());
        assert_eq!(folders.list().len(), 1);
        assert!(matches!(
            folders.locate("nope.gguf"),
            Err(ModelPathError::NotFound { .. })
        ));
    }
}
