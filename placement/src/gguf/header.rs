//! Header parsing: magic and version, the metadata (numbers and the few strings reported kept, the
//! token list hashed into the vocabulary fingerprint, everything else skipped), the tensor table,
//! and the tensor data sizes, with every claimed count checked against its limit.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use tightwad_protocol::messages::GgufSummary;

use super::cursor::{read_scalar, scalar_size, Cursor, Value};
use super::{file_type_name, GgufError, GgufModel, TensorInfo};

const MAGIC: &[u8; 4] = b"GGUF";
const MAX_KEY_BYTES: u64 = 64 * 1024;
const MAX_STRING_BYTES: u64 = 16 * 1024 * 1024;
const MAX_KV_COUNT: u64 = 1 << 20;
const MAX_TENSOR_COUNT: u64 = 1 << 22;
const MAX_ARRAY_LEN: u64 = 1 << 28;
const MAX_DIMS: u32 = 8;
/// Strings kept from metadata (only for the few keys reported).
const KEPT_STRING_BYTES: u64 = 4096;

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
