//! GPUs from the vendors' command-line tools (`nvidia-smi`, `rocm-smi`). A host without them has
//! no GPU as far as llama.cpp is concerned; that is reported as a note, not an error.

use crate::flags::run_capture;
use std::path::Path;
use std::time::Duration;
use tightwad_protocol::messages::{Gpu, GpuVendor};

/// Parses `nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version
/// --format=csv,noheader,nounits`.
pub fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() < 4 {
                return None;
            }
            Some(Gpu {
                vendor: GpuVendor::Nvidia,
                index: fields[0].parse().ok()?,
                name: fields[1].to_string(),
                memory_total_mib: fields[2].parse().ok()?,
                memory_used_mib: fields[3].parse().ok(),
                driver: fields.get(4).map(|d| d.to_string()),
            })
        })
        .collect()
}

/// Parses `rocm-smi --showproductname --showmeminfo vram --json` output.
pub fn parse_rocm_smi(text: &str) -> Vec<Gpu> {
    let Some(start) = text.find('{') else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text[start..]) else {
        return Vec::new();
    };
    let Some(cards) = json.as_object() else {
        return Vec::new();
    };
    let mut gpus: Vec<Gpu> = cards
        .iter()
        .filter_map(|(card, fields)| {
            let index = card.trim_start_matches("card").parse().ok()?;
            let field = |name: &str| {
                fields
                    .get(name)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            let total: u64 = field("VRAM Total Memory (B)")?.parse().ok()?;
            let used: Option<u64> =
                field("VRAM Total Used Memory (B)").and_then(|u| u.parse().ok());
            Some(Gpu {
                vendor: GpuVendor::Amd,
                index,
                name: field("Card Series")
                    .or_else(|| field("Card series"))
                    .unwrap_or_else(|| card.clone()),
                memory_total_mib: total / (1024 * 1024),
                memory_used_mib: used.map(|u| u / (1024 * 1024)),
                driver: None,
            })
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    gpus
}

/// All GPUs found, plus notes on probes that were not possible.
pub async fn probe() -> (Vec<Gpu>, Vec<String>) {
    let mut gpus = Vec::new();
    let mut notes = Vec::new();
    match run_capture(
        Path::new("nvidia-smi"),
        &[
            "--query-gpu=index,name,memory.total,memory.used,driver_version",
            "--format=csv,noheader,nounits",
        ],
        Duration::from_secs(15),
    )
    .await
    {
        Ok(text) => gpus.extend(parse_nvidia_smi(&text)),
        Err(e) => notes.push(format!("nvidia-smi: {e}")),
    }
    match run_capture(
        Path::new("rocm-smi"),
        &["--showproductname", "--showmeminfo", "vram", "--json"],
        Duration::from_secs(15),
    )
    .await
    {
        Ok(text) => gpus.extend(parse_rocm_smi(&text)),
        Err(e) => notes.push(format!("rocm-smi: {e}")),
    }
    if gpus.is_empty() {
        notes.push("no GPU found: llama.cpp will run on the CPU".into());
    }
    (gpus, notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_csv() {
        let gpus = parse_nvidia_smi("0, NVIDIA GeForce RTX 4070 Ti SUPER, 16376, 512, 550.54\n1, NVIDIA GeForce RTX 3060, 12288, 0, 550.54\n");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].memory_total_mib, 12288);
        assert_eq!(gpus[0].name, "NVIDIA GeForce RTX 4070 Ti SUPER");
    }

    #[test]
    fn rocm_json() {
        let gpus = parse_rocm_smi(
            r#"{"card0": {"Card Series": "Radeon RX 7900 XTX", "VRAM Total Memory (B)": "25753026560", "VRAM Total Used Memory (B)": "1048576"}}"#,
        );
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].memory_total_mib, 24560);
        assert!(parse_rocm_smi("garbage").is_empty());
    }
}
