//! Small filesystem helpers for state files: written atomically (temp file + fsync + rename) so a
//! crash never leaves half a key or half a trust list behind.

use crate::ProtocolError;
use std::io::Write;
use std::path::Path;

/// Writes `contents` to `path` atomically; `mode` sets Unix permissions on the new file
/// (0600 for private keys) before any byte is written.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), ProtocolError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ProtocolError::io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| ProtocolError::io(&tmp, e))?;
        file.write_all(contents)
            .and_then(|_| file.sync_all())
            .map_err(|e| ProtocolError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| ProtocolError::io(path, e))?;
    Ok(())
}

/// Reads a file, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ProtocolError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ProtocolError::io(path, e)),
    }
}
