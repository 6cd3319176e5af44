//! Model transfers between agents: chunked, resumable, sha256-checked, atomically renamed.
//!
//! The sender (asked by the coordinator with `SendModel`) connects to the receiver with its own
//! identity (the coordinator introduced it there with `IntroducePeer`) and offers the file (name,
//! size, sha256). The receiver keeps a partial file `.NAME.part` next to a small `.NAME.part.json`
//! saying which file it belongs to; it answers with how much it already has and the sha256 of
//! that prefix. The sender checks the prefix against its own file (a corrupt partial file restarts
//! at zero), then streams 1 MiB chunks, each with its own sha256 so a corrupt chunk is refused
//! before it is written. When all bytes are there the receiver checks the whole file's sha256 and
//! only then renames it into place. A transfer cut off (link down, agent restarted) resumes where
//! the partial file ends.

use crate::models::{destination, ModelFolders};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tightwad_protocol::client::{ClientEndpoint, FramedStream};
use tightwad_protocol::files::{finish_part_file, sha256_hex, sha256_prefix, FinishError};
use tightwad_protocol::messages::*;
use tightwad_protocol::server::RequestStream;
use tightwad_protocol::trust::ServerExpectation;
use tightwad_protocol::upload;

pub const CHUNK_BYTES: u32 = upload::CHUNK_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Path(#[from] crate::models::ModelPathError),
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] tightwad_protocol::ProtocolError),
    #[error("{0}")]
    Refused(String),
}

impl From<FinishError> for TransferError {
    fn from(e: FinishError) -> Self {
        match e {
            FinishError::Mismatch(m) => TransferError::Refused(m.to_string()),
            FinishError::Io(e) => TransferError::Protocol(e),
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TransferError> + Send + 'static,
) -> Result<T, TransferError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TransferError::Refused(format!("worker task failed: {e}")))?
}

/// Whether `target` already holds the file whose sha256 is `sha256` (`false` when there is no
/// file); refused when it holds other contents.
pub(crate) async fn already_there(target: &Path, sha256: &str) -> Result<bool, TransferError> {
    if !target.exists() {
        return Ok(false);
    }
    let check = target.to_path_buf();
    let existing = blocking(move || Ok(sha256_hex(&check, None)?)).await?;
    if existing != sha256 {
        return Err(TransferError::Refused(format!(
            "{} already exists here with other contents; remove it first",
            target.display()
        )));
    }
    Ok(true)
}

/// Opens (creates) the part file of a transfer for writing, cut or grown to `len` bytes.
pub(crate) fn open_part(part: &Path, len: u64) -> Result<std::fs::File, TransferError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(io_err(part))?;
    file.set_len(len).map_err(io_err(part))?;
    Ok(file)
}

/// Refuses a transfer that needs more than the free space of `folder` (unknown space passes).
pub(crate) fn check_free_space(folder: &Path, missing: u64) -> Result<(), TransferError> {
    if let Ok(stats) = nix::sys::statvfs::statvfs(folder) {
        let available = stats
            .blocks_available()
            .saturating_mul(stats.fragment_size());
        if missing > available {
            return Err(TransferError::Refused(format!(
                "not enough space in {}: {missing} bytes needed, {available} available",
                folder.display()
            )));
        }
    }
    Ok(())
}

/// Sender side: pushes `file_name` to `to`, reporting progress on `report` (the coordinator's
/// stream). The upload itself is `tightwad_protocol::upload::push`, shared with the
/// coordinator's source tarballs.
#[tracing::instrument(skip(models, client, report), fields(to = %to.name))]
pub async fn send(
    models: &ModelFolders,
    client: &ClientEndpoint,
    file_name: &str,
    to: &PeerAddress,
    max_bytes_per_second: Option<u64>,
    report: &mut RequestStream,
) -> Result<TransferSummary, TransferError> {
    let started = Instant::now();
    let path = models.locate(file_name)?;
    let offer = upload::offer_for(&path, file_name).await?;
    let peer = client
        .connect(&to.address, ServerExpectation::Pinned(to.fingerprint))
        .await?;
    let mut stream = peer.open(&Request::ReceiveModel(offer.clone())).await?;
    let (progress_tx, mut progress_rx) = tokio::sync::watch::channel(None);
    let resumed_from = {
        let push = upload::push(&mut stream, &path, &offer, max_bytes_per_second, |p| {
            let _ = progress_tx.send(Some(p));
        });
        tokio::pin!(push);
        let mut first = true;
        loop {
            tokio::select! {
                result = &mut push => break result.map_err(|e| peer.explain(e))?,
                Ok(()) = progress_rx.changed() => {
                    let progress = *progress_rx.borrow_and_update();
                    // The first report is the resume point, before any chunk: not progress yet.
                    if let Some(p) = progress.filter(|_| !std::mem::take(&mut first)) {
                        report
                            .reply(&Reply::Progress(TransferProgress {
                                file_name: file_name.to_string(),
                                bytes_done: p.done,
                                bytes_total: p.total,
                                resumed_from: p.resumed_from,
                            }))
                            .await?;
                    }
                }
            }
        }
    };
    if resumed_from > 0 {
        tracing::info!(resumed_from, size = offer.size, "resumed transfer");
    }
    stream.finish().map_err(|e| peer.explain(e))?;
    let summary = match stream.next_reply().await.map_err(|e| peer.explain(e))? {
        Some(Reply::TransferDone(summary)) => summary,
        Some(other) => {
            return Err(TransferError::Refused(format!(
                "unexpected reply {}",
                other.kind()
            )))
        }
        None => {
            return Err(TransferError::Refused(
                "receiver closed the stream before confirming".into(),
            ))
        }
    };
    peer.close(tightwad_protocol::client::close_code::DONE, "transfer done");
    Ok(TransferSummary {
        resumed_from,
        seconds: started.elapsed().as_secs_f64(),
        ..summary
    })
}

/// What a partial file belongs to, so a resume never mixes two different files.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct PartMeta {
    size: u64,
    sha256: String,
}

fn meta_path(part: &Path) -> PathBuf {
    let mut name = part.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Receiver side: answers `ReceiveModel(offer)` on `stream`.
#[tracing::instrument(skip(folder, stream), fields(file = %offer.file_name))]
pub async fn receive(
    folder: &Path,
    offer: UploadOffer,
    stream: &mut RequestStream,
) -> Result<TransferSummary, TransferError> {
    let started = Instant::now();
    let (target, part) = destination(folder, &offer.file_name)?;
    let meta = PartMeta {
        size: offer.size,
        sha256: offer.sha256.clone(),
    };
    let meta_file = meta_path(&part);
    already_there(&target, &offer.sha256).await?;
    let same_file = std::fs::read(&meta_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<PartMeta>(&b).ok())
        .is_some_and(|m| m == meta);
    let have = if same_file {
        std::fs::metadata(&part)
            .map(|m| m.len())
            .unwrap_or(0)
            .min(offer.size)
    } else {
        0
    };
    let (mut hasher, mut expected) = if target.exists() {
        // Already complete: the sender sees a full prefix and sends only Finish.
        (sha256_prefix(&target, None)?, offer.size)
    } else {
        if !same_file {
            let _ = std::fs::remove_file(&part);
            let json =
                serde_json::to_vec(&meta).map_err(|e| TransferError::Refused(e.to_string()))?;
            std::fs::write(&meta_file, json).map_err(io_err(&meta_file))?;
        }
        open_part(&part, have)?;
        (sha256_prefix(&part, Some(have))?, have)
    };
    let missing = offer.size.saturating_sub(expected);
    check_free_space(folder, missing)?;
    stream
        .reply(&Reply::UploadResume {
            offset: expected,
            prefix_sha256: hex::encode(hasher.clone().finalize()),
        })
        .await?;
    let mut out: Option<std::fs::File> = None;
    loop {
        let frame = stream.stream.recv::<UploadFrame>().await?;
        match frame {
            Some(UploadFrame::Chunk {
                offset,
                data,
                sha256,
            }) => {
                let actual: [u8; 32] = Sha256::digest(&data).into();
                if actual != sha256 {
                    return Err(TransferError::Refused(format!(
                        "chunk at offset {offset} is corrupt (sha256 mismatch); kept the {expected} bytes before it for a resume"
                    )));
                }
                if offset == 0 && expected != 0 {
                    // The sender found our partial file wrong and starts over.
                    expected = 0;
                    hasher = Sha256::new();
                    out = None;
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&part)
                        .and_then(|f| f.set_len(0))
                        .map_err(io_err(&part))?;
                }
                if offset != expected || expected + data.len() as u64 > offer.size {
                    return Err(TransferError::Refused(format!(
                        "chunk at offset {offset} (+{}) does not continue the file at {expected} of {}",
                        data.len(),
                        offer.size
                    )));
                }
                if out.is_none() {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&part)
                        .map_err(io_err(&part))?;
                    f.seek(SeekFrom::Start(expected)).map_err(io_err(&part))?;
                    out = Some(f);
                }
                if let Some(f) = out.as_mut() {
                    f.write_all(&data).map_err(io_err(&part))?;
                }
                hasher.update(&data);
                expected += data.len() as u64;
            }
            Some(UploadFrame::Finish) => break,
            None => {
                return Err(TransferError::Refused(
                    "sender ended the stream without finishing".into(),
                ))
            }
        }
    }
    if expected != offer.size {
        return Err(TransferError::Refused(format!(
            "incomplete: {expected} of {} bytes",
            offer.size
        )));
    }
    let mut digest = hex::encode(hasher.finalize());
    if !target.exists() {
        drop(out.take());
        let expected = offer.sha256.clone();
        let target = target.clone();
        digest = blocking(move || {
            Ok(finish_part_file(
                &part,
                &target,
                &meta_file,
                &expected,
                Some(digest),
            )?)
        })
        .await?;
    }
    Ok(TransferSummary {
        file_name: offer.file_name,
        path: target.display().to_string(),
        bytes: offer.size,
        resumed_from: have,
        sha256: digest,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads `Progress` frames until the final result of a `SendModel` (used by the CLI).
pub async fn follow_send(
    stream: &mut FramedStream,
    mut on_progress: impl FnMut(&TransferProgress),
) -> Result<TransferSummary, tightwad_protocol::ProtocolError> {
    loop {
        match stream.next_reply().await? {
            Some(Reply::Progress(p)) => on_progress(&p),
            Some(Reply::TransferDone(summary)) => return Ok(summary),
            Some(other) => {
                return Err(tightwad_protocol::ProtocolError::UnexpectedReply {
                    expected: "progress",
                    got: other.kind().into(),
                })
            }
            None => return Err(tightwad_protocol::ProtocolError::UnexpectedEnd),
        }
    }
}
