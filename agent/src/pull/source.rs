//! A source's side of a pull: the manifest of a model file (its pieces' hashes and the whole
//! file's, computed once per file version and cached: every puller asks) and the pieces read for
//! a pulling peer.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tightwad_protocol::messages::*;
use tightwad_protocol::server::RequestStream;

use super::{check_piece_bytes, MAX_PIECE_BYTES};
use crate::models::ModelFolders;
use crate::transfer::{blocking, io_err, TransferError, CHUNK_BYTES};

/// The manifest of a file: one pass computes the piece hashes and the whole file's.
pub fn manifest_of(
    path: &Path,
    file_name: &str,
    piece_bytes: u32,
) -> Result<PieceManifest, TransferError> {
    use std::io::Read;
    let piece_bytes = check_piece_bytes(piece_bytes)?;
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let mut whole = Sha256::new();
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; piece_bytes as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file.read(&mut buf[filled..]).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        whole.update(&buf[..filled]);
        pieces.push(Sha256::digest(&buf[..filled]).into());
        if filled < buf.len() {
            break;
        }
    }
    Ok(PieceManifest {
        file_name: file_name.to_string(),
        size,
        sha256: hex::encode(whole.finalize()),
        piece_bytes,
        pieces,
    })
}

/// Manifests already computed, by (path, size, modification time, piece size): hashing a large
/// model takes a while and every puller asks.
#[derive(Default)]
pub struct ManifestCache {
    entries: Mutex<Vec<(ManifestKey, Arc<PieceManifest>)>>,
}

/// What a cached manifest was computed from: path, size, modification time, piece size.
type ManifestKey = (PathBuf, u64, std::time::SystemTime, u32);

impl ManifestCache {
    /// Source side of `ModelManifest`.
    pub async fn get(
        &self,
        models: &ModelFolders,
        file_name: &str,
        piece_bytes: u32,
    ) -> Result<Arc<PieceManifest>, TransferError> {
        let path = models.locate(file_name)?;
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        let modified = meta.modified().map_err(io_err(&path))?;
        let key = (path.clone(), meta.len(), modified, piece_bytes);
        if let Ok(entries) = self.entries.lock() {
            if let Some((_, m)) = entries.iter().find(|(k, _)| *k == key) {
                return Ok(m.clone());
            }
        }
        let name = file_name.to_string();
        let p = path.clone();
        let manifest = Arc::new(blocking(move || manifest_of(&p, &name, piece_bytes)).await?);
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|(k, _)| k.0 != path);
            entries.push((key, manifest.clone()));
        }
        Ok(manifest)
    }
}

/// Source side of `ReadPiece`: the bytes, in 1 MiB `Piece` frames.
pub async fn serve_piece(
    models: &ModelFolders,
    file_name: &str,
    offset: u64,
    len: u32,
    stream: &mut RequestStream,
) -> Result<(), TransferError> {
    if len > MAX_PIECE_BYTES {
        return Err(TransferError::Refused(format!(
            "a piece is at most {MAX_PIECE_BYTES} bytes, {len} asked"
        )));
    }
    let path = models.locate(file_name)?;
    let file = std::fs::File::open(&path).map_err(io_err(&path))?;
    let size = file.metadata().map_err(io_err(&path))?.len();
    let end = offset.saturating_add(u64::from(len));
    if end > size {
        return Err(TransferError::Refused(format!(
            "bytes {offset}..{end} are past the end of {file_name} ({size} bytes)"
        )));
    }
    let mut at = offset;
    while at < end {
        let want = ((end - at) as usize).min(CHUNK_BYTES as usize);
        let mut data = vec![0u8; want];
        file.read_exact_at(&mut data, at).map_err(io_err(&path))?;
        stream.reply(&Reply::Piece { offset: at, data }).await?;
        at += want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::MIN_PIECE_BYTES;

    #[test]
    fn a_manifest_covers_the_file_in_pieces_and_hashes_the_whole() {
        let dir = std::env::temp_dir().join(format!("tightwad-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.gguf");
        let data: Vec<u8> = (0..(2 * MIN_PIECE_BYTES + 5))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");
        let m = manifest_of(&path, "m.gguf", MIN_PIECE_BYTES).expect("manifest");
        assert_eq!(m.size, data.len() as u64);
        assert_eq!(m.pieces.len(), 3);
        assert_eq!(m.sha256, hex::encode(Sha256::digest(&data)));
        let last: [u8; 32] = Sha256::digest(&data[2 * MIN_PIECE_BYTES as usize..]).into();
        assert_eq!(m.pieces[2], last);
        assert!(manifest_of(&path, "m.gguf", 17).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
