//! What a parsed GGUF header describes: the tensor table ([`TensorInfo`]), the header in full
//! ([`GgufModel`]) with the questions asked of it, and llama.cpp's file type names.

use std::collections::BTreeMap;

use tightwad_protocol::messages::GgufSummary;

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
