//! RAM reclaim after a load: once llama-server is ready, the model file's pages in the page
//! cache are a second copy of weights that now live in the server's own buffers (GPU memory,
//! or host buffers with `--no-mmap` / `-lm none`). On a host where the model is large relative
//! to RAM, that copy pushes other memory into swap; the agent asks the kernel to drop it
//! (`posix_fadvise(POSIX_FADV_DONTNEED)`) and logs the file's resident bytes and the server's
//! RSS before and after.
//!
//! Pages the server still maps (llama.cpp's default mmap loading of CPU-resident weights) are
//! not dropped by the kernel: reclaim then changes little, and the log line says so. Linux only.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tightwad_placement::pagecache;

/// `page_cache_reclaim` in agent.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimMode {
    /// Reclaim when the model file is at least a quarter of the host's RAM.
    #[default]
    Auto,
    On,
    Off,
}

/// What one reclaim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    pub model: PathBuf,
    pub file_bytes: u64,
    pub resident_before: u64,
    pub resident_after: u64,
    /// (VmRSS, RssFile) of the server before and after.
    pub rss_before: (u64, u64),
    pub rss_after: (u64, u64),
}

impl Reclaimed {
    pub fn describe(&self) -> String {
        let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64);
        let mut line = format!(
            "page-cache reclaim of {}: {} of {} cached before, {} after; server RSS {} (file-backed {}) before, {} (file-backed {}) after",
            self.model.display(),
            mib(self.resident_before),
            mib(self.file_bytes),
            mib(self.resident_after),
            mib(self.rss_before.0),
            mib(self.rss_before.1),
            mib(self.rss_after.0),
            mib(self.rss_after.1),
        );
        if self.resident_after > self.file_bytes / 2 && self.rss_after.1 > self.file_bytes / 4 {
            line += " (the server maps the file, so its pages stay: start it with --no-mmap / `-lm none` for reclaim to free them)";
        }
        line
    }
}

/// The model file a llama-server's arguments name (`-m`, `--model`).
pub fn model_path(args: &[String]) -> Option<PathBuf> {
    let mut iter = args.iter();
    while let Some(a) = iter.next() {
        if a == "-m" || a == "--model" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--model=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Whether `mode` calls for a reclaim of a `file_bytes` model on a host with `ram_bytes`.
pub fn wanted(mode: ReclaimMode, file_bytes: u64, ram_bytes: u64) -> bool {
    match mode {
        ReclaimMode::Off => false,
        ReclaimMode::On => true,
        ReclaimMode::Auto => ram_bytes > 0 && file_bytes.saturating_mul(4) >= ram_bytes,
    }
}

/// Drops `model`'s cached pages, measuring around it; `pid` is the server's.
pub fn reclaim(model: &Path, pid: Option<u32>) -> std::io::Result<Reclaimed> {
    let rss = || {
        pid.and_then(|p| pagecache::process_rss(p).ok())
            .unwrap_or((0, 0))
    };
    let rss_before = rss();
    let (resident_before, file_bytes) = pagecache::resident_bytes(model)?;
    pagecache::drop_cache(model)?;
    let (resident_after, _) = pagecache::resident_bytes(model)?;
    Ok(Reclaimed {
        model: model.to_path_buf(),
        file_bytes,
        resident_before,
        resident_after,
        rss_before,
        rss_after: rss(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_reclaims_large_models_only() {
        assert!(wanted(ReclaimMode::Auto, 30 << 30, 64 << 30));
        assert!(!wanted(ReclaimMode::Auto, 1 << 30, 64 << 30));
        assert!(wanted(ReclaimMode::On, 1, 64 << 30));
        assert!(!wanted(ReclaimMode::Off, 60 << 30, 64 << 30));
        let args: Vec<String> = ["-c", "256", "--model", "/m/x.gguf"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(model_path(&args), Some(PathBuf::from("/m/x.gguf")));
    }
}
