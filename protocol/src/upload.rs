//! The sending half of a file upload (`UploadOffer`, then `UploadFrame`s): used by an agent
//! pushing a model to another agent and by the coordinator sending a llama.cpp source tarball
//! to an agent (`tightwad build`). The receiving half lives in the agent (`transfer::receive`);
//! one framing, one resume rule, for both.
//!
//! The receiver answers the offer with how much of the file it already has and the sha256 of
//! that prefix; the sender resumes there only when its own prefix hashes the same (otherwise it
//! starts over at zero), then sends 1 MiB chunks, each with its own sha256, then `Finish`.

use crate::client::FramedStream;
use crate::files::sha256_hex;
use crate::messages::{Reply, UploadFrame, UploadOffer};
use crate::ProtocolError;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CHUNK_BYTES: u32 = 1024 * 1024;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProtocolError> + Send + 'static,
) -> Result<T, ProtocolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProtocolError::Malformed(format!("worker task failed: {e}")))?
}

/// The offer for `path` under the name `file_name` (hashes the whole file).
pub async fn offer_for(path: &Path, file_name: &str) -> Result<UploadOffer, ProtocolError> {
    let size = std::fs::metadata(path)
        .map_err(|e| ProtocolError::io(path, e))?
        .len();
    let owned = path.to_path_buf();
    let sha256 = blocking(move || sha256_hex(&owned, None)).await?;
    Ok(UploadOffer {
        file_name: file_name.to_string(),
        size,
        sha256,
        chunk_size: CHUNK_BYTES,
    })
}

/// Progress of an upload: bytes sent so far (resumed bytes included), total, resumed from.
#[derive(Debug, Clone, Copy)]
pub struct UploadProgress {
    pub done: u64,
    pub total: u64,
    pub resumed_from: u64,
}

/// Sends `path` on `upload`, whose request (carrying `offer`) is already sent: reads the
/// receiver's `UploadResume`, checks its prefix, streams the rest and `Finish`. Returns the
/// offset it resumed from. `on_progress` is called about twice a second.
pub async fn push(
    upload: &mut FramedStream,
    path: &Path,
    offer: &UploadOffer,
    max_bytes_per_second: Option<u64>,
    mut on_progress: impl FnMut(UploadProgress),
) -> Result<u64, ProtocolError> {
    let size = offer.size;
    let mut offset = match upload.next_reply().await? {
        Some(Reply::UploadResume {
            offset,
            prefix_sha256,
        }) if offset <= size => {
            let prefix_path: PathBuf = path.to_path_buf();
            let ours = blocking(move || sha256_hex(&prefix_path, Some(offset))).await?;
            if ours == prefix_sha256 {
                offset
            } else {
                tracing::warn!(
                    offset,
                    "receiver's partial file differs from ours: starting over"
                );
                0
            }
        }
        Some(other) => {
            return Err(ProtocolError::UnexpectedReply {
                expected: "upload_resume",
                got: other.kind().into(),
            })
        }
        None => return Err(ProtocolError::UnexpectedEnd),
    };
    let resumed_from = offset;
    if resumed_from > 0 {
        tracing::info!(resumed_from, size, "resuming upload");
    }
    let mut file = std::fs::File::open(path).map_err(|e| ProtocolError::io(path, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| ProtocolError::io(path, e))?;
    let mut last_progress = Instant::now();
    let rate_started = Instant::now();
    let mut sent_this_run: u64 = 0;
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    on_progress(UploadProgress {
        done: offset,
        total: size,
        resumed_from,
    });
    while offset < size {
        let want = ((size - offset) as usize).min(buf.len());
        file.read_exact(&mut buf[..want])
            .map_err(|e| ProtocolError::io(path, e))?;
        let data = buf[..want].to_vec();
        let digest: [u8; 32] = Sha256::digest(&data).into();
        upload
            .send(&UploadFrame::Chunk {
                offset,
                data,
                sha256: digest,
            })
            .await?;
        offset += want as u64;
        sent_this_run += want as u64;
        if let Some(rate) = max_bytes_per_second.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(sent_this_run as f64 / rate as f64);
            let elapsed = rate_started.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            on_progress(UploadProgress {
                done: offset,
                total: size,
                resumed_from,
            });
        }
    }
    upload.send(&UploadFrame::Finish).await?;
    on_progress(UploadProgress {
        done: size,
        total: size,
        resumed_from,
    });
    Ok(resumed_from)
}
