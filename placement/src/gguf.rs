//! A small, careful GGUF header reader: metadata and tensor shapes only, never weights.
//!
//! Every length in a GGUF header is claimed by the file itself, so every one is checked against
//! both a fixed limit and the bytes actually left in the file before anything is allocated: a
//! malicious or truncated header yields an error, not an out-of-memory kill. Big arrays (token
//! lists, merges) are streamed: the token list is hashed on the fly into the vocabulary
//! fingerprint and never kept.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;
use tightwad_protocol::messages::GgufSummary;

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_KEY_BYTES: u64 = 64 * 1024;
const MAX_STRING_BYTES: u64 = 16 * 1024 * 1024;
const MAX_KV_COUNT: u64 = 1 << 20;
const MAX_TENSOR_COUNT: u64 = 1 << 22;
const MAX_ARRAY_LEN: u64 = 1 << 28;
const MAX_DIMS: u32 = 8;
/// Strings kept from metadata (only for the few keys reported).
const KEPT_STRING_BYTES: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (starts with \"{}\")", .0.escape_ascii())]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("truncated header: {0}")]
    Truncated(String),
    #[error("header claims {what} of {claimed}, over the limit of {limit}")]
    OverLimit {
        what: &'static str,
        claimed: u64,
        limit: u64,
    },
    #[error("unknown metadata value type {0}")]
    UnknownType(u32),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header of the GGUF file at `path`.
pub fn read_summary(path: &Path) -> Result<GgufSummary, GgufError> {
    Ok(read_model(path)?.summary)
}

/// Reads the header of the GGUF file at `path` with every tensor's name, shape, type and size:
/// what the placement planner and `tightwad inspect` work from.
pub fn read_model(path: &Path) -> Result<GgufModel, GgufError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    read_model_header(BufReader::with_capacity(256 * 1024, file), len)
}

/// One tensor of a GGUF file, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset in the data section.
    pub offset: u64,
    /// Bytes of data: from ggml's block sizes where the type is known, else the gap to the next
    /// tensor. This is what llama.cpp allocates for the tensor on its device.
    pub bytes: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, d| a.saturating_mul(*d))
    }
    /// The block (layer) index of `blk.N.*` tensors.
    pub fn layer(&self) -> Option<u32> {
        let rest = self.name.strip_prefix("blk.")?;
        rest.split('.').next()?.parse().ok()
    }
}

/// A GGUF header in full: the summary the peer protocol carries, the numeric metadata, and the
/// tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufModel {
    pub summary: GgufSummary,
    /// Every integer metadata value (`qwen2moe.expert_feed_forward_length`, ...).
    pub numbers: BTreeMap<String, u64>,
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts and how long the file is: a file shorter than its tensors
    /// is a truncated download.
    pub data_offset: u64,
    pub file_len: u64,
}

impl GgufModel {
    /// A metadata number under the model's architecture prefix (`{arch}.{suffix}`).
    pub fn arch_number(&self, suffix: &str) -> Option<u64> {
        let arch = self.summary.architecture.as_deref()?;
        self.numbers.get(&format!("{arch}.{suffix}")).copied()
    }
    /// Bytes the tensor table says the data section holds.
    pub fn tensor_table_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0, |sum, t| sum.saturating_add(t.bytes))
    }
    /// Bytes missing at the end of the file (0 for a complete file).
    pub fn missing_bytes(&self) -> u64 {
        let end = self
            .tensors
            .iter()
            .map(|t| t.offset.saturating_add(t.bytes))
            .max()
            .unwrap_or(0);
        self.data_offset
            .saturating_add(end)
            .saturating_sub(self.file_len)
    }
}

struct Cursor<R> {
    reader: R,
    remaining: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        if self.remaining < N as u64 {
            return Err(GgufError::Truncated(format!(
                "{N} more bytes needed, {} left",
                self.remaining
            )));
        }
        let mut buf = [0u8; N];
        self.reader.read_exact(&mut buf)?;
        self.remaining -= N as u64;
        Ok(buf)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// Checks a claimed length against a limit and against what is left in the file.
    fn claim(&self, what: &'static str, claimed: u64, limit: u64) -> Result<(), GgufError> {
        if claimed > limit {
            return Err(GgufError::OverLimit {
                what,
                claimed,
                limit,
            });
        }
        if claimed > self.remaining {
            return Err(GgufError::Truncated(format!(
                "{what} of {claimed} bytes, {} left",
                self.remaining
            )));
        }
        Ok(())
    }

    fn string_len(&mut self, limit: u64) -> Result<u64, GgufError> {
        let len = self.u64()?;
        self.claim("a string", len, limit)?;
        Ok(len)
    }

    fn string(&mut self, limit: u64) -> Result<Vec<u8>, GgufError> {
        let len = self.string_len(limit)?;
        let mut buf = vec![0u8; len as usize];
        self.reader.read_exact(&mut buf)?;
        self.remaining -= len;
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        self.claim("skipped data", n, u64::MAX)?;
        let copied = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink())?;
        if copied != n {
            return Err(GgufError::Truncated("file ended early".into()));
        }
        self.remaining -= n;
        Ok(())
    }
}

/// Size of a fixed-width value type, `None` for strings and arrays.
fn scalar_size(value_type: u32) -> Result<Option<u64>, GgufError> {
    Ok(match value_type {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        other => return Err(GgufError::UnknownType(other)),
    })
}

enum Value {
    Number(u64),
    Other,
}

fn read_scalar<R: Read>(c: &mut Cursor<R>, value_type: u32) -> Result<Value, GgufError> {
    Ok(match value_type {
        0 | 7 => Value::Number(c.bytes::<1>()?[0] as u64),
        1 => Value::Number(i8::from_le_bytes(c.bytes()?).max(0) as u64),
        2 => Value::Number(u16::from_le_bytes(c.bytes()?) as u64),
        3 => Value::Number(i16::from_le_bytes(c.bytes()?).max(0) as u64),
        4 => Value::Number(c.u32()? as u64),
        5 => Value::Number(i32::from_le_bytes(c.bytes()?).max(0) as u64),
        6 => {
            c.bytes::<4>()?;
            Value::Other
        }
        10 => Value::Number(c.u64()?),
        11 => Value::Number(i64::from_le_bytes(c.bytes()?).max(0) as u64),
        12 => {
            c.bytes::<8>()?;
            Value::Other
        }
        other => return Err(GgufError::UnknownType(other)),
    })
}

/// Parses a GGUF header from `reader`, a file of `file_len` bytes.
pub fn read_header<R: Read>(reader: R, file_len: u64) -> Result<GgufSummary, GgufError> {
    Ok(read_model_header(reader, file_len)?.summary)
}

/// Parses a GGUF header, tensor table included, from `reader`, a file of `file_len` bytes.
pub fn read_model_header<R: Read>(reader: R, file_len: u64) -> Result<GgufModel, GgufError> {
    let mut c = Cursor {
        reader,
        remaining: file_len,
    };
    let magic = c.bytes::<4>()?;
    if &magic != MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensor_count = c.u64()?;
    if tensor_count > MAX_TENSOR_COUNT {
        return Err(GgufError::OverLimit {
            what: "tensors",
            claimed: tensor_count,
            limit: MAX_TENSOR_COUNT,
        });
    }
    let kv_count = c.u64()?;
    if kv_count > MAX_KV_COUNT {
        return Err(GgufError::OverLimit {
            what: "metadata entries",
            claimed: kv_count,
            limit: MAX_KV_COUNT,
        });
    }

    let mut numbers: HashMap<String, u64> = HashMap::new();
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut token_hasher: Option<(Sha256, u64)> = None;

    for _ in 0..kv_count {
        let key_bytes = c.string(MAX_KEY_BYTES)?;
        let key = String::from_utf8_lossy(&key_bytes).into_owned();
        let value_type = c.u32()?;
        match value_type {
            8 => {
                let len = c.string_len(MAX_STRING_BYTES)?;
                let keep = len <= KEPT_STRING_BYTES
                    && matches!(
                        key.as_str(),
                        "general.architecture" | "general.name" | "tokenizer.ggml.model"
                    );
                if keep {
                    let mut buf = vec![0u8; len as usize];
                    c.reader.read_exact(&mut buf)?;
                    c.remaining -= len;
                    texts.insert(key, String::from_utf8_lossy(&buf).into_owned());
                } else {
                    c.skip(len)?;
                }
            }
            9 => {
                let item_type = c.u32()?;
                let count = c.u64()?;
                if count > MAX_ARRAY_LEN {
                    return Err(GgufError::OverLimit {
                        what: "array elements",
                        claimed: count,
                        limit: MAX_ARRAY_LEN,
                    });
                }
                match scalar_size(item_type)? {
                    Some(size) => {
                        let total = count.checked_mul(size).ok_or(GgufError::OverLimit {
                            what: "array bytes",
                            claimed: u64::MAX,
                            limit: c.remaining,
                        })?;
                        c.skip(total)?;
                    }
                    None if item_type == 8 => {
                        let hash_tokens = key == "tokenizer.ggml.tokens";
                        let mut hasher = Sha256::new();
                        let mut buf = Vec::new();
                        for _ in 0..count {
                            let len = c.string_len(MAX_STRING_BYTES)?;
                            if hash_tokens {
                                buf.resize(len as usize, 0);
                                c.reader.read_exact(&mut buf)?;
                                c.remaining -= len;
                                hasher.update(len.to_le_bytes());
                                hasher.update(&buf);
                            } else {
                                c.skip(len)?;
                            }
                        }
                        if hash_tokens {
                            token_hasher = Some((hasher, count));
                        }
                    }
                    None => {
                        // Arrays of arrays do not occur in llama.cpp models; refuse rather than recurse.
                        return Err(GgufError::UnknownType(item_type));
                    }
                }
            }
            _ => {
                if let Value::Number(n) = read_scalar(&mut c, value_type)? {
                    numbers.insert(key, n);
                }
            }
        }
    }

    let mut parameter_count: u64 = 0;
    // (offset in the data section, is an expert tensor) of every tensor, for the weight sizes.
    let mut offsets: Vec<(u64, bool)> = Vec::new();
    let mut tensors: Vec<TensorInfo> = Vec::new();
    for _ in 0..tensor_count {
        let name = c.string(MAX_KEY_BYTES)?;
        let is_expert = name.windows(5).any(|w| w == b"_exps");
        let mut dim_list = Vec::new();
        let dims = c.u32()?;
        if dims > MAX_DIMS {
            return Err(GgufError::OverLimit {
                what: "tensor dimensions",
                claimed: dims as u64,
                limit: MAX_DIMS as u64,
            });
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            let d = c.u64()?;
            dim_list.push(d);
            elements = elements.saturating_mul(d);
        }
        let tensor_type = c.u32()?;
        let offset = c.u64()?;
        parameter_count = parameter_count.saturating_add(elements);
        offsets.push((offset, is_expert));
        tensors.push(TensorInfo {
            name: String::from_utf8_lossy(&name).into_owned(),
            bytes: crate::ggml::tensor_bytes(tensor_type, &dim_list).unwrap_or(0),
            dims: dim_list,
            ggml_type: tensor_type,
            offset,
        });
    }
    let header_len = file_len - c.remaining;
    let alignment = numbers.get("general.alignment").copied().unwrap_or(32);
    let (tensor_bytes, expert_tensor_bytes) =
        tensor_sizes(file_len, header_len, alignment, &mut offsets);
    let data_offset = header_len
        .div_ceil(alignment.clamp(1, 1 << 20))
        .saturating_mul(alignment.clamp(1, 1 << 20));
    // Tensors of a type this reader does not know: the gap to the next tensor's offset.
    let mut by_offset: Vec<u64> = tensors.iter().map(|t| t.offset).collect();
    by_offset.sort_unstable();
    let data_len = file_len.saturating_sub(data_offset);
    for t in tensors
        .iter_mut()
        .filter(|t| t.bytes == 0 && t.elements() > 0)
    {
        let next = by_offset
            .iter()
            .find(|o| **o > t.offset)
            .copied()
            .unwrap_or(data_len);
        t.bytes = next.saturating_sub(t.offset);
    }

    let architecture = texts.get("general.architecture").cloned();
    let arch_number = |suffix: &str| {
        architecture
            .as_ref()
            .and_then(|a| numbers.get(&format!("{a}.{suffix}")).copied())
    };
    let tokenizer_model = texts.get("tokenizer.ggml.model").cloned();
    let (vocab_fingerprint, vocab_size) = match token_hasher {
        Some((tokens, count)) => {
            let mut outer = Sha256::new();
            let model = tokenizer_model.clone().unwrap_or_default();
            outer.update((model.len() as u64).to_le_bytes());
            outer.update(model.as_bytes());
            outer.update(tokens.finalize());
            (Some(hex::encode(outer.finalize())), Some(count))
        }
        None => (None, None),
    };
    let summary = GgufSummary {
        gguf_version: version,
        architecture: architecture.clone(),
        name: texts.get("general.name").cloned(),
        parameter_count,
        tensor_count,
        file_type: numbers.get("general.file_type").map(|t| file_type_name(*t)),
        context_length: arch_number("context_length"),
        embedding_length: arch_number("embedding_length"),
        block_count: arch_number("block_count"),
        expert_count: arch_number("expert_count"),
        expert_used_count: arch_number("expert_used_count"),
        tokenizer_model,
        vocab_size,
        vocab_fingerprint,
        split_count: numbers.get("split.count").copied(),
        tensor_bytes,
        expert_tensor_bytes,
        head_count: arch_number("attention.head_count"),
        head_count_kv: arch_number("attention.head_count_kv"),
        key_length: arch_number("attention.key_length"),
        value_length: arch_number("attention.value_length"),
        bos_token_id: numbers.get("tokenizer.ggml.bos_token_id").copied(),
        eos_token_id: numbers.get("tokenizer.ggml.eos_token_id").copied(),
    };
    Ok(GgufModel {
        summary,
        numbers: numbers.into_iter().collect(),
        tensors,
        data_offset,
        file_len,
    })
}

/// Bytes of all tensor data and of the expert tensors among it. Each tensor's size is the gap to
/// the next tensor's offset (the last one runs to the end of the file), so no table of ggml type
/// sizes is needed and a header that lies about offsets cannot make the sum exceed the file.
fn tensor_sizes(
    file_len: u64,
    header_len: u64,
    alignment: u64,
    offsets: &mut [(u64, bool)],
) -> (u64, u64) {
    let alignment = alignment.clamp(1, 1 << 20);
    let data_start = header_len.div_ceil(alignment).saturating_mul(alignment);
    let data_len = file_len.saturating_sub(data_start);
    offsets.sort_unstable();
    let mut experts = 0u64;
    for (i, (offset, is_expert)) in offsets.iter().enumerate() {
        let end = offsets
            .get(i + 1)
            .map(|(next, _)| *next)
            .unwrap_or(data_len)
            .min(data_len);
        if *is_expert {
            experts = experts.saturating_add(end.saturating_sub(*offset));
        }
    }
    (data_len, experts.min(data_len))
}

/// llama.cpp's `llama_ftype` names.
pub fn file_type_name(file_type: u64) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        other => return format!("type {other}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::synth::tiny_gguf;

    #[test]
    fn reads_a_small_header() {
        let bytes = tiny_gguf(&["<s>", "a", "b"], None);
        let summary = read_header(&bytes[..], bytes.len() as u64).expect("parse");
        assert_eq!(summary.architecture.as_deref(), Some("llama"));
        assert_eq!(summary.context_length, Some(2048));
        assert_eq!(summary.file_type.as_deref(), Some("Q8_0"));
        assert_eq!(summary.vocab_size, Some(3));
        assert_eq!(summary.parameter_count, 256 * 32000);
        let other = tiny_gguf(&["<s>", "a", "c"], None);
        let other = read_header(&other[..], other.len() as u64).expect("parse");
        assert_ne!(summary.vocab_fingerprint, other.vocab_fingerprint);
    }

    #[test]
    fn every_single_byte_corruption_is_an_error_or_a_summary_never_a_panic() {
        let original = tiny_gguf(&["<s>", "hello", "world"], None);
        for position in 0..original.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bytes = original.clone();
                bytes[position] = value;
                let _ = read_header(&bytes[..], bytes.len() as u64);
            }
        }
    }

    #[test]
    fn lying_lengths_are_errors_not_allocations() {
        let bytes = tiny_gguf(&["a"], Some(u64::MAX / 2));
        assert!(matches!(
            read_header(&bytes[..], bytes.len() as u64),
            Err(GgufError::OverLimit { .. })
        ));
        let bytes = tiny_gguf(&["a"], Some(1 << 27));
        assert!(read_header(&bytes[..], bytes.len() as u64).is_err());
        // A key claiming 60 kB in a 100-byte file.
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&1u64.to_le_bytes());
        bytes.extend_from_slice(&(60_000u64).to_le_bytes());
        bytes.resize(100, 0);
        assert!(matches!(
            read_header(&bytes[..], 100),
            Err(GgufError::Truncated(_))
        ));
        for cut in [3, 10, 30, 60] {
            let full = tiny_gguf(&["a", "b"], None);
            assert!(
                read_header(&full[..cut], cut as u64).is_err(),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            read_header(&b"GGML\0\0\0\0"[..], 8),
            Err(GgufError::BadMagic(_))
        ));
    }
}
