//! Writes GGUF headers (and optionally sparse data sections) for tests: synthetic models of any
//! shape, from a few kilobytes to GPT-OSS-120B-sized tensor tables, without real weights. Only
//! what the header reader needs is written; llama.cpp could not run these files.

use std::io::Write;
use std::path::Path;

/// A metadata value.
#[derive(Debug, Clone)]
pub enum Meta {
    U32(u32),
    U64(u64),
    Str(String),
    StrArray(Vec<String>),
}

/// A GGUF file under construction.
#[derive(Debug, Clone, Default)]
pub struct SynthGguf {
    pub meta: Vec<(String, Meta)>,
    /// (name, dims in ggml order, ggml type)
    pub tensors: Vec<(String, Vec<u64>, u32)>,
}

const ALIGNMENT: u64 = 32;

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl SynthGguf {
    pub fn new(architecture: &str) -> Self {
        let mut g = SynthGguf::default();
        g.meta.push((
            "general.architecture".into(),
            Meta::Str(architecture.into()),
        ));
        g
    }
    pub fn meta(mut self, key: &str, value: Meta) -> Self {
        self.meta.push((key.into(), value));
        self
    }
    /// `{arch}.{suffix}` = `value` (u32).
    pub fn arch_u32(self, suffix: &str, value: u32) -> Self {
        let arch = match self.meta.first() {
            Some((_, Meta::Str(a))) => a.clone(),
            _ => "llama".into(),
        };
        self.meta(&format!("{arch}.{suffix}"), Meta::U32(value))
    }
    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32) -> Self {
        self.tensors.push((name.into(), dims.to_vec(), ggml_type));
        self
    }

    /// Bytes of data the tensors need (each aligned to 32 bytes).
    pub fn data_bytes(&self) -> u64 {
        self.offsets().1
    }

    fn offsets(&self) -> (Vec<u64>, u64) {
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for (_, dims, ty) in &self.tensors {
            offsets.push(at);
            let bytes = crate::ggml::tensor_bytes(*ty, dims).unwrap_or(0);
            // Saturating: tests write headers with absurd sizes on purpose.
            at = at
                .saturating_add(bytes)
                .div_ceil(ALIGNMENT)
                .saturating_mul(ALIGNMENT);
        }
        (offsets, at)
    }

    /// The header: magic, counts, metadata, tensor table, padding to the data section.
    pub fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.meta.len() as u64).to_le_bytes());
        for (key, value) in &self.meta {
            string(&mut out, key);
            match value {
                Meta::U32(v) => {
                    out.extend_from_slice(&4u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::U64(v) => {
                    out.extend_from_slice(&10u32.to_le_bytes());
                    out.extend_from_slice(&v.to_le_bytes());
                }
                Meta::Str(s) => {
                    out.extend_from_slice(&8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Meta::StrArray(items) => {
                    out.extend_from_slice(&9u32.to_le_bytes());
                    out.extend_from_slice(&8u32.to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for item in items {
                        string(&mut out, item);
                    }
                }
            }
        }
        let (offsets, _) = self.offsets();
        for ((name, dims, ty), offset) in self.tensors.iter().zip(offsets) {
            string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let padded = (out.len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
        out.resize(padded as usize, 0);
        out
    }

    /// Length of the whole file: header plus data.
    pub fn file_len(&self) -> u64 {
        self.header().len() as u64 + self.data_bytes()
    }

    /// Writes the file with a sparse (all-zero, unallocated) data section: a 60 GB model takes
    /// a few kilobytes of disk.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("gguf.part");
        let mut file = std::fs::File::create(&tmp)?;
        let header = self.header();
        file.write_all(&header)?;
        file.set_len(header.len() as u64 + self.data_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(tmp, path)
    }
}

/// A tiny llama GGUF header with the given token list (`claimed_tokens` may lie about its
/// length, for the reader's robustness tests) and one `output.weight` tensor.
pub fn tiny_gguf(tokens: &[&str], claimed_tokens: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes()); // tensors
    out.extend_from_slice(&5u64.to_le_bytes()); // kv
    string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    string(&mut out, "llama");
    string(&mut out, "llama.context_length");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&2048u32.to_le_bytes());
    string(&mut out, "general.file_type");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&7u32.to_le_bytes());
    string(&mut out, "tokenizer.ggml.model");
    out.extend_from_slice(&8u32.to_le_bytes());
    string(&mut out, "llama");
    string(&mut out, "tokenizer.ggml.tokens");
    out.extend_from_slice(&9u32.to_le_bytes());
    out.extend_from_slice(&8u32.to_le_bytes());
    out.extend_from_slice(&claimed_tokens.unwrap_or(tokens.len() as u64).to_le_bytes());
    for t in tokens {
        string(&mut out, t);
    }
    string(&mut out, "output.weight");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&256u64.to_le_bytes());
    out.extend_from_slice(&32000u64.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out
}
