//! ggml tensor types: block sizes and names, so a tensor's bytes follow from its shape and type
//! exactly as llama.cpp allocates them (gguf-py's `GGML_QUANT_SIZES`).

/// (elements per block, bytes per block) of ggml type `id`, `None` for types this table lacks.
pub fn block(id: u32) -> Option<(u64, u64)> {
    const QK_K: u64 = 256;
    Some(match id {
        0 => (1, 4),
        1 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        9 => (32, 36),
        10 => (QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
        11 => (QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
        12 => (QK_K, 2 + 2 + QK_K / 2 + 12),
        13 => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
        14 => (QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
        15 => (QK_K, 4 + QK_K + QK_K / 8),
        16 => (QK_K, 2 + QK_K / 4),
        17 => (QK_K, 2 + QK_K / 4 + QK_K / 32),
        18 => (QK_K, 2 + QK_K / 4 + QK_K / 8),
        19 => (QK_K, 2 + QK_K / 8 + QK_K / 16),
        20 => (32, 18),
        21 => (QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
        22 => (QK_K, 2 + QK_K / 4 + QK_K / 16),
        23 => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
        24 => (1, 1),
        25 => (1, 2),
        26 => (1, 4),
        27 => (1, 8),
        28 => (1, 8),
        29 => (QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
        30 => (1, 2),
        34 => (QK_K, 2 + 4 * 13),
        35 => (QK_K, 2 + 64),
        39 => (32, 17),
        40 => (64, 36),
        41 => (128, 18),
        42 => (64, 18),
        _ => return None,
    })
}

/// ggml's name for type `id` (`Q4_K`, `MXFP4`, ...).
pub fn type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        40 => "NVFP4",
        41 => "Q1_0",
        42 => "Q2_0",
        other => return format!("type {other}"),
    };
    name.to_string()
}

/// Bytes of a tensor of type `id` and shape `dims` (ggml order: `dims[0]` is the row). `None`
/// for an unknown type or a row that is not a whole number of blocks.
pub fn tensor_bytes(id: u32, dims: &[u64]) -> Option<u64> {
    let (block, size) = block(id)?;
    let row = *dims.first().unwrap_or(&1);
    if row % block != 0 {
        return None;
    }
    let rows = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |a, d| a.checked_mul(*d))?;
    (row / block).checked_mul(size)?.checked_mul(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        assert_eq!(tensor_bytes(0, &[256, 32000]), Some(256 * 32000 * 4));
        assert_eq!(tensor_bytes(8, &[4096, 4096]), Some(4096 / 32 * 34 * 4096));
        assert_eq!(
            tensor_bytes(12, &[4096, 11008]),
            Some(4096 / 256 * 144 * 11008)
        );
        // MXFP4 experts of GPT-OSS 120B: 2880 x 2880 x 128.
        assert_eq!(
            tensor_bytes(39, &[2880, 2880, 128]),
            Some(2880 / 32 * 17 * 2880 * 128)
        );
        assert_eq!(tensor_bytes(12, &[100, 3]), None, "partial block");
        assert_eq!(tensor_bytes(99, &[32]), None);
    }
}
