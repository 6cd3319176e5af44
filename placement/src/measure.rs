//! What llama-server says it allocated: the `model buffer size`, `KV buffer size`, `compute
//! buffer size` and `output buffer size` lines it logs while loading, per backend buffer. These
//! are the measured side of "plan vs measured" (`tightwad status`, the placement test).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    Model,
    Kv,
    Compute,
    Output,
}

/// One logged buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Buffer {
    /// The backend buffer's name as logged (`CPU_Mapped`, `RPC0[127.0.0.1:50052]`, `CUDA0`).
    pub buffer: String,
    pub kind: BufferKind,
    pub bytes: u64,
}

impl Buffer {
    /// The device the buffer lives on: host buffers (`CPU_Mapped`, `CPU_REPACK`, `CUDA_Host`)
    /// are the CPU's RAM; `RPC0[h:p]` is the RPC device `h:p`.
    pub fn device(&self) -> String {
        device_of(&self.buffer)
    }
}

/// The device a backend buffer name belongs to.
pub fn device_of(buffer: &str) -> String {
    if buffer.starts_with("CPU") || buffer.ends_with("_Host") {
        "CPU".into()
    } else if let (Some(open), true) = (buffer.find('['), buffer.ends_with(']')) {
        format!("RPC[{}]", &buffer[open + 1..buffer.len() - 1])
    } else {
        buffer.to_string()
    }
}

/// Parses one log line, if it reports a buffer.
pub fn parse_line(line: &str) -> Option<Buffer> {
    let (kind, marker) = [
        (BufferKind::Model, " model buffer size"),
        (BufferKind::Kv, " KV buffer size"),
        (BufferKind::Compute, " compute buffer size"),
        (BufferKind::Output, " output buffer size"),
    ]
    .into_iter()
    .find(|(_, m)| line.contains(m))?;
    let at = line.find(marker)?;
    // "load_tensors:   CPU_Mapped model buffer size =    12.34 MiB"
    let before = line[..at].trim_end();
    let buffer = before.split_whitespace().last()?.to_string();
    let after = line[at + marker.len()..].trim_start();
    let value = after.strip_prefix('=')?.trim_start();
    let number: f64 = value.split_whitespace().next()?.parse().ok()?;
    let unit = value.split_whitespace().nth(1).unwrap_or("MiB");
    let scale = match unit {
        "GiB" => (1u64 << 30) as f64,
        "KiB" => 1024.0,
        "B" => 1.0,
        _ => (1u64 << 20) as f64,
    };
    if buffer.is_empty() {
        return None;
    }
    Some(Buffer {
        buffer,
        kind,
        bytes: (number * scale) as u64,
    })
}

/// Every buffer a log reports. A server that reloads (a restart in the same log) reports its
/// buffers again; only the last load's are kept.
pub fn parse_log<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Buffer> {
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut model_seen_since_context = false;
    for line in lines {
        if let Some(b) = parse_line(line) {
            if b.kind == BufferKind::Model && !model_seen_since_context && !buffers.is_empty() {
                buffers.clear();
            }
            model_seen_since_context = b.kind == BufferKind::Model;
            buffers.push(b);
        }
    }
    buffers
}

/// Bytes per device (`CPU`, `RPC[h:p]`, `CUDA0`), all buffer kinds together.
pub fn per_device(buffers: &[Buffer]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for b in buffers {
        *out.entry(b.device()).or_insert(0) += b.bytes;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama_server_buffer_lines() {
        let log = [
            "load_tensors: offloaded 5/5 layers to GPU",
            "load_tensors: RPC0[127.0.0.1:50052] model buffer size =     9.50 MiB",
            "load_tensors:   CPU_Mapped model buffer size =    13.01 MiB",
            "llama_kv_cache: RPC0[127.0.0.1:50052] KV buffer size =     4.00 MiB",
            "llama_context:        CPU  output buffer size =     0.12 MiB",
            "llama_context:        CPU compute buffer size =     5.01 MiB",
            "srv  load_model: loading model",
        ];
        let buffers = parse_log(log);
        assert_eq!(buffers.len(), 5);
        assert_eq!(buffers[0].buffer, "RPC0[127.0.0.1:50052]");
        assert_eq!(buffers[0].device(), "RPC[127.0.0.1:50052]");
        assert_eq!(buffers[0].bytes, (9.5 * 1048576.0) as u64);
        assert_eq!(buffers[1].device(), "CPU");
        assert_eq!(buffers[2].kind, BufferKind::Kv);
        assert_eq!(buffers[3].kind, BufferKind::Output);
        let devices = per_device(&buffers);
        assert_eq!(devices.len(), 2);
        // A second load in the same log replaces the first.
        let twice: Vec<&str> = log.iter().chain(log.iter()).copied().collect();
        assert_eq!(parse_log(twice).len(), 5);
    }
}
