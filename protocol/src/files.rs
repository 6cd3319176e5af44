//! Received files: how a file that arrived in pieces (a model pushed by another agent, pulled from
//! several, a source tarball from the coordinator) is hashed and, once complete, finished: synced
//! to disk, its sha256 checked, then renamed into place or discarded, and its resume state dropped.
//! One copy of that rule for every receiver, so none can rename a file it did not verify.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::ProtocolError;

/// A sha256 hasher fed the first `len` bytes of a file (all of it when `len` is `None`): a receiver
/// resuming a partial file continues hashing from there.
pub fn sha256_prefix(path: &Path, len: Option<u64>) -> Result<Sha256, ProtocolError> {
    let file = std::fs::File::open(path).map_err(|e| ProtocolError::io(path, e))?;
    let mut reader: Box<dyn Read> = match len {
        Some(n) => Box::new(file.take(n)),
        None => Box::new(file),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| ProtocolError::io(path, e))?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buf[..n]);
    }
}

/// sha256 (hex) of the first `len` bytes of a file (all of it when `len` is `None`).
pub fn sha256_hex(path: &Path, len: Option<u64>) -> Result<String, ProtocolError> {
    Ok(hex::encode(sha256_prefix(path, len)?.finalize()))
}

/// A complete part file that did not verify: it has been deleted, with its state file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sha256 of the received file is {actual}, expected {expected}: discarded")]
pub struct ChecksumMismatch {
    pub actual: String,
    pub expected: String,
}

/// Why [`finish_part_file`] did not put the file in place.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error(transparent)]
    Mismatch(#[from] ChecksumMismatch),
    #[error(transparent)]
    Io(#[from] ProtocolError),
}

/// The received file `part` is complete: sync it to disk, check its sha256 against `expected`
/// (hashing the file, unless the receiver hashed the bytes as they arrived and passes that digest
/// as `streamed_sha256`), then rename it to `target`, or delete it when the digest differs. Either
/// way the resume state file `state_file` is removed, so a discarded file starts over next time.
/// Returns the verified digest (hex). Blocking: call it from a blocking task.
pub fn finish_part_file(
    part: &Path,
    target: &Path,
    state_file: &Path,
    expected: &str,
    streamed_sha256: Option<String>,
) -> Result<String, FinishError> {
    std::fs::File::open(part)
        .and_then(|f| f.sync_all())
        .map_err(|e| ProtocolError::io(part, e))?;
    let actual = match streamed_sha256 {
        Some(digest) => digest,
        None => sha256_hex(part, None)?,
    };
    if actual != expected {
        let _ = std::fs::remove_file(part);
        let _ = std::fs::remove_file(state_file);
        return Err(ChecksumMismatch {
            actual,
            expected: expected.to_string(),
        }
        .into());
    }
    std::fs::rename(part, target).map_err(|e| ProtocolError::io(target, e))?;
    let _ = std::fs::remove_file(state_file);
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::path::PathBuf,
        std::path::PathBuf,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let part = dir.path().join("model.gguf.part");
        let target = dir.path().join("model.gguf");
        let state = dir.path().join("model.gguf.part.json");
        std::fs::write(&part, b"the whole file").expect("part");
        std::fs::write(&state, b"{}").expect("state");
        (dir, part, target, state)
    }

    #[test]
    fn a_file_that_verifies_is_renamed_and_its_state_dropped() {
        let (_dir, part, target, state) = folder();
        let expected = hex::encode(Sha256::digest(b"the whole file"));
        let digest = finish_part_file(&part, &target, &state, &expected, None).expect("verified");
        assert_eq!(digest, expected);
        assert_eq!(std::fs::read(&target).expect("target"), b"the whole file");
        assert!(!part.exists() && !state.exists());
        assert_eq!(
            sha256_hex(&target, Some(3)).expect("prefix"),
            hex::encode(Sha256::digest(b"the"))
        );
    }

    #[test]
    fn a_file_that_does_not_verify_is_discarded_with_its_state() {
        let (_dir, part, target, state) = folder();
        let err = finish_part_file(&part, &target, &state, "00ff", None).expect_err("mismatch");
        match err {
            FinishError::Mismatch(m) => {
                assert_eq!(m.expected, "00ff");
                assert_eq!(m.actual, hex::encode(Sha256::digest(b"the whole file")));
            }
            other => panic!("not a mismatch: {other}"),
        }
        assert!(!part.exists() && !state.exists() && !target.exists());
    }

    #[test]
    fn a_streamed_digest_is_trusted_instead_of_rehashing() {
        let (_dir, part, target, state) = folder();
        let digest = finish_part_file(&part, &target, &state, "abc", Some("abc".into()))
            .expect("the streamed digest matches");
        assert_eq!(digest, "abc");
        assert!(target.exists() && !part.exists() && !state.exists());
    }

    #[test]
    fn a_missing_part_file_is_an_io_error_and_nothing_moves() {
        let (_dir, part, target, state) = folder();
        std::fs::remove_file(&part).expect("rm");
        let err = finish_part_file(&part, &target, &state, "abc", None).expect_err("no file");
        assert!(matches!(err, FinishError::Io(_)), "{err}");
        assert!(state.exists() && !target.exists());
    }
}
