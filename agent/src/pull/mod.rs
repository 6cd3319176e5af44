//! Multi-source model pull: the receiving agent fetches a model in pieces from every agent that
//! has it, in parallel, checks each piece against a manifest of piece hashes, and can resume.
//!
//! Why pull and not push: the receiver knows which pieces it is missing and which sources still
//! answer, so it alone can hand a dead source's pieces to the others. The coordinator introduces
//! the receiver to every source (`IntroducePeer`: the source pins the receiver's certificate, so
//! only it may read pieces there) and gives the receiver the sources' addresses and fingerprints
//! (`PullModel`), so the receiver talks only to the hosts the coordinator named.
//!
//! 1. Every source is asked for the file's manifest (`ModelManifest`): size, whole-file sha256,
//!    piece size and each piece's sha256. Sources whose manifest differs from the first one are
//!    left out (another file under the same name).
//! 2. Progress lives beside the partial file `.NAME.part`: `.NAME.pull.json` holds the manifest
//!    and which pieces are done, rewritten atomically (temp + rename) after each piece, so a pull
//!    cut off (receiver killed, every source gone) resumes with the pieces it has.
//! 3. Each source gets [`PER_SOURCE`] workers; a worker takes the next missing piece, reads it
//!    (`ReadPiece`, 1 MiB frames), checks its sha256 and writes it at its offset. A failed read
//!    puts the piece back for the others; a source that fails twice, or sends a corrupt piece, is
//!    dropped. The pull fails only when pieces are left and no source is.
//! 4. When every piece is there, the whole file's sha256 is checked and the file renamed into
//!    place; a mismatch discards the partial file.

mod source;

pub use source::{serve_piece, ManifestCache};

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tightwad_protocol::client::{Client, ClientEndpoint};
use tightwad_protocol::messages::*;
use tightwad_protocol::server::RequestStream;
use tightwad_protocol::trust::ServerExpectation;

use crate::models::destination;
use crate::transfer::{
    already_there, blocking, check_free_space, io_err, open_part, TransferError,
};

pub const DEFAULT_PIECE_BYTES: u32 = 8 << 20;
pub const MAX_PIECE_BYTES: u32 = 16 << 20;
const MIN_PIECE_BYTES: u32 = 1 << 20;
/// Pieces in flight from one source at once.
const PER_SOURCE: usize = 2;
/// Failed reads after which a source is no longer asked.
const STRIKES: u32 = 2;
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

fn check_piece_bytes(piece_bytes: u32) -> Result<u32, TransferError> {
    if (MIN_PIECE_BYTES..=MAX_PIECE_BYTES).contains(&piece_bytes) {
        Ok(piece_bytes)
    } else {
        Err(TransferError::Refused(format!(
            "piece size {piece_bytes} is outside {MIN_PIECE_BYTES}..={MAX_PIECE_BYTES} bytes"
        )))
    }
}

/// What `.NAME.pull.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct PullState {
    size: u64,
    sha256: String,
    piece_bytes: u32,
    pieces: Vec<String>,
    done: Vec<bool>,
}

impl PullState {
    fn matches(&self, m: &PieceManifest) -> bool {
        self.size == m.size
            && self.sha256 == m.sha256
            && self.piece_bytes == m.piece_bytes
            && self.pieces.len() == m.pieces.len()
            && self.done.len() == m.pieces.len()
            && self
                .pieces
                .iter()
                .zip(&m.pieces)
                .all(|(a, b)| *a == hex::encode(b))
    }

    fn save(&self, path: &Path) -> Result<(), TransferError> {
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec(self).map_err(|e| TransferError::Refused(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }
}

/// Shared by the workers of one pull.
struct Shared {
    queue: Mutex<VecDeque<usize>>,
    state: Mutex<PullState>,
    state_path: PathBuf,
    part: PathBuf,
    file: std::fs::File,
    manifest: PieceManifest,
    done_bytes: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn piece_range(&self, i: usize) -> (u64, u32) {
        let start = i as u64 * u64::from(self.manifest.piece_bytes);
        let len = (self.manifest.size - start).min(u64::from(self.manifest.piece_bytes));
        (start, len as u32)
    }

    fn take(&self) -> Option<usize> {
        self.queue.lock().ok()?.pop_front()
    }

    fn give_back(&self, i: usize) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(i);
        }
    }

    fn remaining(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.done.iter().filter(|d| !**d).count())
            .unwrap_or(usize::MAX)
    }
}

/// Read one piece from `peer` and check it.
async fn fetch_piece(
    peer: &Client,
    shared: &Shared,
    i: usize,
    rate: Option<u64>,
    paced: &mut (Instant, u64),
) -> Result<Vec<u8>, String> {
    let (offset, len) = shared.piece_range(i);
    let mut stream = peer
        .open(&Request::ReadPiece {
            file_name: shared.manifest.file_name.clone(),
            offset,
            len,
        })
        .await
        .map_err(|e| peer.explain(e).to_string())?;
    let mut data = Vec::with_capacity(len as usize);
    while data.len() < len as usize {
        match stream
            .next_reply()
            .await
            .map_err(|e| peer.explain(e).to_string())?
        {
            Some(Reply::Piece {
                offset: at,
                data: d,
            }) if at == offset + data.len() as u64 => {
                data.extend_from_slice(&d);
                paced.1 += d.len() as u64;
                if let Some(rate) = rate.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64(paced.1 as f64 / rate as f64);
                    let elapsed = paced.0.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
            }
            Some(Reply::Error(e)) => return Err(e.message),
            Some(other) => return Err(format!("unexpected reply {}", other.kind())),
            None => return Err("the source ended the piece early".into()),
        }
    }
    if data.len() != len as usize {
        return Err(format!("piece {i}: {} bytes, expected {len}", data.len()));
    }
    let digest: [u8; 32] = Sha256::digest(&data).into();
    if digest != shared.manifest.pieces[i] {
        return Err(format!("piece {i} failed its sha256 check"));
    }
    Ok(data)
}

/// One worker: pieces from one source until none are left or the source is given up.
async fn worker(
    peer: Arc<Client>,
    shared: Arc<Shared>,
    rate: Option<u64>,
    report: Arc<Mutex<PullSource>>,
    strikes: Arc<std::sync::atomic::AtomicU32>,
) {
    use std::sync::atomic::Ordering;
    let mut paced = (Instant::now(), 0u64);
    while strikes.load(Ordering::Relaxed) < STRIKES {
        let Some(i) = shared.take() else {
            // Nothing queued: done, unless pieces in flight elsewhere may still come back.
            if shared.remaining() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match fetch_piece(&peer, &shared, i, rate, &mut paced).await {
            Ok(data) => {
                let (offset, len) = shared.piece_range(i);
                let write = shared.file.write_all_at(&data, offset);
                if let Err(e) = write {
                    shared.give_back(i);
                    if let Ok(mut r) = report.lock() {
                        r.error = Some(format!("writing {}: {e}", shared.part.display()));
                    }
                    strikes.store(STRIKES, Ordering::Relaxed);
                    break;
                }
                if let Ok(mut s) = shared.state.lock() {
                    s.done[i] = true;
                    if let Err(e) = s.save(&shared.state_path) {
                        tracing::warn!(error = %e, "could not record pull progress");
                    }
                }
                shared
                    .done_bytes
                    .fetch_add(u64::from(len), Ordering::Relaxed);
                if let Ok(mut r) = report.lock() {
                    r.pieces += 1;
                    r.bytes += u64::from(len);
                }
            }
            Err(e) => {
                shared.give_back(i);
                let n = strikes.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(source = %peer.address(), piece = i, error = %e, strikes = n, "piece read failed; another source will fetch it");
                if let Ok(mut r) = report.lock() {
                    r.error = Some(e);
                }
            }
        }
    }
}

/// Receiver side of `PullModel`.
#[tracing::instrument(skip(folder, client, sources, stream), fields(file = %file_name, sources = sources.len()))]
pub async fn pull(
    folder: &Path,
    client: &ClientEndpoint,
    file_name: &str,
    sources: &[PeerAddress],
    piece_bytes: Option<u32>,
    rate: Option<u64>,
    stream: &mut RequestStream,
) -> Result<PullSummary, TransferError> {
    let started = Instant::now();
    let piece_bytes = check_piece_bytes(piece_bytes.unwrap_or(DEFAULT_PIECE_BYTES))?;
    if sources.is_empty() {
        return Err(TransferError::Refused("no sources to pull from".into()));
    }
    let (target, part) = destination(folder, file_name)?;
    let state_path = {
        let mut name = part.as_os_str().to_owned();
        name.push(".pull.json");
        PathBuf::from(name)
    };
    // Connect to every source and ask for its manifest, all at once.
    let asks = sources.iter().map(|s| async move {
        let peer = client
            .connect(&s.address, ServerExpectation::Pinned(s.fingerprint))
            .await
            .map_err(|e| {
                format!("{e} (a source serves pieces only to agents the coordinator introduced to it: pull with `tightwad models copy`)")
            })?;
        let reply = peer
            .call(&Request::ModelManifest {
                file_name: file_name.to_string(),
                piece_bytes,
            })
            .await
            .map_err(|e| e.to_string())?;
        match reply {
            Reply::Manifest(m) => Ok((peer, *m)),
            Reply::Error(e) => Err(e.message),
            other => Err(format!("unexpected reply {}", other.kind())),
        }
    });
    let answers = futures::future::join_all(asks).await;
    let mut reports: Vec<Arc<Mutex<PullSource>>> = Vec::new();
    let mut peers = Vec::new();
    let mut manifest: Option<PieceManifest> = None;
    for (source, answer) in sources.iter().zip(answers) {
        let mut r = PullSource {
            name: source.name.clone(),
            pieces: 0,
            bytes: 0,
            error: None,
        };
        match answer {
            Ok((peer, m)) => match &manifest {
                Some(first) if *first != m => {
                    r.error = Some(format!(
                        "its {file_name} differs from the first source's (sha256 {} vs {})",
                        m.sha256, first.sha256
                    ));
                }
                _ => {
                    manifest.get_or_insert(m);
                    peers.push((Arc::new(peer), reports.len()));
                }
            },
            Err(e) => r.error = Some(e),
        }
        if let Some(e) = &r.error {
            tracing::warn!(source = %source.name, error = %e, "source left out of the pull");
        }
        reports.push(Arc::new(Mutex::new(r)));
    }
    let Some(manifest) = manifest else {
        let why: Vec<String> = reports
            .iter()
            .filter_map(|r| {
                r.lock()
                    .ok()
                    .and_then(|r| r.error.clone().map(|e| format!("{}: {e}", r.name)))
            })
            .collect();
        return Err(TransferError::Refused(format!(
            "no source could serve {file_name}: {}",
            why.join("; ")
        )));
    };
    if manifest.pieces.len() as u64 != manifest.size.div_ceil(u64::from(manifest.piece_bytes)) {
        return Err(TransferError::Refused(
            "the sources' manifest does not cover the file: refused".into(),
        ));
    }
    if already_there(&target, &manifest.sha256).await? {
        return Ok(PullSummary {
            transfer: TransferSummary {
                file_name: file_name.to_string(),
                path: target.display().to_string(),
                bytes: manifest.size,
                resumed_from: manifest.size,
                sha256: manifest.sha256.clone(),
                seconds: started.elapsed().as_secs_f64(),
            },
            pieces: manifest.pieces.len() as u32,
            pieces_resumed: manifest.pieces.len() as u32,
            sources: Vec::new(),
        });
    }
    // Resume what an earlier pull of the same file left, else start afresh.
    let previous = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<PullState>(&b).ok())
        .filter(|s| s.matches(&manifest))
        .filter(|_| std::fs::metadata(&part).is_ok_and(|m| m.len() == manifest.size));
    let state = match previous {
        Some(s) => s,
        None => {
            let _ = std::fs::remove_file(&part);
            PullState {
                size: manifest.size,
                sha256: manifest.sha256.clone(),
                piece_bytes: manifest.piece_bytes,
                pieces: manifest.pieces.iter().map(hex::encode).collect(),
                done: vec![false; manifest.pieces.len()],
            }
        }
    };
    let missing_bytes: u64 = state
        .done
        .iter()
        .enumerate()
        .filter(|(_, d)| !**d)
        .map(|(i, _)| {
            let start = i as u64 * u64::from(manifest.piece_bytes);
            (manifest.size - start).min(u64::from(manifest.piece_bytes))
        })
        .sum();
    check_free_space(folder, missing_bytes)?;
    state.save(&state_path)?;
    let file = open_part(&part, manifest.size)?;
    let pieces_resumed = state.done.iter().filter(|d| **d).count() as u32;
    let resumed_from = manifest.size - missing_bytes;
    if pieces_resumed > 0 {
        tracing::info!(pieces_resumed, "resuming pull");
    }
    let queue: VecDeque<usize> = state
        .done
        .iter()
        .enumerate()
        .filter(|(_, d)| !**d)
        .map(|(i, _)| i)
        .collect();
    let shared = Arc::new(Shared {
        queue: Mutex::new(queue),
        state: Mutex::new(state),
        state_path: state_path.clone(),
        part: part.clone(),
        file,
        manifest: manifest.clone(),
        done_bytes: std::sync::atomic::AtomicU64::new(resumed_from),
    });
    let mut workers = tokio::task::JoinSet::new();
    for (peer, r) in &peers {
        let strikes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        for _ in 0..PER_SOURCE {
            workers.spawn(worker(
                peer.clone(),
                shared.clone(),
                rate.map(|r| r / PER_SOURCE as u64),
                reports[*r].clone(),
                strikes.clone(),
            ));
        }
    }
    let mut last_progress = Instant::now();
    loop {
        tokio::select! {
            joined = workers.join_next() => {
                if joined.is_none() {
                    break;
                }
            }
            _ = tokio::time::sleep(PROGRESS_EVERY) => {}
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            stream
                .reply(&Reply::Progress(TransferProgress {
                    file_name: file_name.to_string(),
                    bytes_done: shared.done_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_total: manifest.size,
                    resumed_from,
                }))
                .await?;
        }
    }
    let sources_report: Vec<PullSource> = reports
        .iter()
        .filter_map(|r| r.lock().ok().map(|r| r.clone()))
        .collect();
    let left = shared.remaining();
    if left > 0 {
        let why: Vec<String> = sources_report
            .iter()
            .map(|s| format!("{}: {}", s.name, s.error.as_deref().unwrap_or("stopped")))
            .collect();
        return Err(TransferError::Refused(format!(
            "{left} of {} pieces missing and no source left ({}); run the pull again to resume",
            manifest.pieces.len(),
            why.join("; ")
        )));
    }
    drop(shared);
    let expected = manifest.sha256.clone();
    let (check, placed) = (part.clone(), target.clone());
    let digest = blocking(move || {
        Ok(tightwad_protocol::files::finish_part_file(
            &check,
            &placed,
            &state_path,
            &expected,
            None,
        )?)
    })
    .await?;
    for (peer, _) in &peers {
        peer.close(tightwad_protocol::client::close_code::DONE, "pull done");
    }
    tracing::info!(path = %target.display(), bytes = manifest.size, "pulled and verified");
    Ok(PullSummary {
        transfer: TransferSummary {
            file_name: file_name.to_string(),
            path: target.display().to_string(),
            bytes: manifest.size,
            resumed_from,
            sha256: digest,
            seconds: started.elapsed().as_secs_f64(),
        },
        pieces: manifest.pieces.len() as u32,
        pieces_resumed,
        sources: sources_report,
    })
}
