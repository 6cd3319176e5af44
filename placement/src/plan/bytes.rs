//! What a model's tensors weigh, by the part they play (input, output, a layer's own, a routed
//! expert), read from its GGUF header.

use super::*;

/// What a tensor is, for placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorRole {
    /// Token embeddings and other tensors outside the blocks: always CPU.
    Input,
    /// `output.weight`, `output_norm`: on the device of the last offloaded slot.
    Output,
    /// Attention, norms, router, dense FFN, shared experts of a block.
    Layer,
    /// Routed expert weights of a block (`ffn_*_exps`).
    Expert,
}

/// The role of a tensor, from its name.
pub fn role_of(name: &str) -> TensorRole {
    if name.starts_with("blk.") {
        if is_routed_expert(name) {
            TensorRole::Expert
        } else {
            TensorRole::Layer
        }
    } else if name.starts_with("output") {
        TensorRole::Output
    } else {
        TensorRole::Input
    }
}

/// Matches [`EXPS_PATTERN`] without a regex engine.
fn is_routed_expert(name: &str) -> bool {
    ["up", "down", "gate", "gate_up"].iter().any(|w| {
        name.contains(&format!(".ffn_{w}_exps")) || name.contains(&format!(".ffn_{w}_chexps"))
    })
}

/// Bytes per layer of a model, the planner's view of a GGUF file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelBytes {
    pub n_layer: u32,
    /// Non-expert weights of each block.
    pub layer: Vec<u64>,
    /// Routed-expert weights of each block.
    pub experts: Vec<u64>,
    pub input: u64,
    pub output: u64,
    /// Output tensors that duplicate the token embeddings (tied embeddings): llama.cpp copies
    /// `token_embd` to the output device when it is not the CPU.
    pub output_tied: bool,
    /// KV cache bytes per token per layer at F16 (K and V together).
    pub kv_per_token_layer: u64,
    pub n_vocab: u64,
    pub n_embd: u64,
    pub n_head: u64,
    pub expert_count: u64,
    pub expert_used_count: u64,
    pub context_length: u64,
}

impl ModelBytes {
    pub fn from_gguf(model: &GgufModel) -> Self {
        let s = &model.summary;
        let n_layer = layer_count(s.block_count.unwrap_or_else(|| {
            model
                .tensors
                .iter()
                .filter_map(|t| t.layer())
                .max()
                .map(|l| l as u64 + 1)
                .unwrap_or(0)
        }));
        let mut layer = vec![0u64; n_layer as usize];
        let mut experts = vec![0u64; n_layer as usize];
        let (mut input, mut output) = (0u64, 0u64);
        let mut has_output_weight = false;
        let mut token_embd = 0u64;
        for t in &model.tensors {
            match role_of(&t.name) {
                TensorRole::Input => {
                    input = input.saturating_add(t.bytes);
                    if t.name == "token_embd.weight" {
                        token_embd = t.bytes;
                    }
                }
                TensorRole::Output => {
                    output = output.saturating_add(t.bytes);
                    has_output_weight |= t.name == "output.weight";
                }
                role @ (TensorRole::Layer | TensorRole::Expert) => {
                    let Some(i) = t.layer().filter(|i| *i < n_layer) else {
                        input = input.saturating_add(t.bytes);
                        continue;
                    };
                    if role == TensorRole::Expert {
                        let e = &mut experts[i as usize];
                        *e = e.saturating_add(t.bytes);
                    } else {
                        let l = &mut layer[i as usize];
                        *l = l.saturating_add(t.bytes);
                    }
                }
            }
        }
        let output_tied = !has_output_weight && token_embd > 0;
        if output_tied {
            output = output.saturating_add(token_embd);
        }
        let kv_per_token_layer = match s.block_count {
            Some(b) if b > 0 => s.kv_cache_bytes(1).unwrap_or(0) / b,
            _ => 0,
        };
        ModelBytes {
            n_layer,
            layer,
            experts,
            input,
            output,
            output_tied,
            kv_per_token_layer,
            n_vocab: s.vocab_size.unwrap_or(0),
            n_embd: s.embedding_length.unwrap_or(0),
            n_head: s.head_count.unwrap_or(0),
            expert_count: s.expert_count.unwrap_or(0),
            expert_used_count: s.expert_used_count.unwrap_or(0),
            context_length: s.context_length.unwrap_or(4096),
        }
    }

    /// An approximation from the summary alone (what the peer protocol carries, without the
    /// tensor table): expert and other weights spread evenly over the blocks, input and output
    /// layers of `vocab x embd` at the file's average bytes per parameter. Doctor uses it on
    /// remote files; `inspect` reads the tensor table and needs no approximation.
    pub fn from_summary(s: &tightwad_protocol::messages::GgufSummary, file_bytes: u64) -> Self {
        let n_layer = layer_count(s.block_count.unwrap_or(1)).max(1);
        let total = if s.tensor_bytes > 0 {
            s.tensor_bytes
        } else {
            file_bytes
        };
        let per_param = total as f64 / s.parameter_count.max(1) as f64;
        let io = match (s.vocab_size, s.embedding_length) {
            (Some(v), Some(e)) => (v as f64 * e as f64 * per_param) as u64,
            _ => 0,
        };
        let experts = s.expert_tensor_bytes.min(total);
        let rest = total
            .saturating_sub(experts)
            .saturating_sub(io.saturating_mul(2));
        let n = n_layer as u64;
        ModelBytes {
            n_layer,
            layer: vec![rest / n; n_layer as usize],
            experts: vec![experts / n; n_layer as usize],
            input: io,
            output: io,
            output_tied: false,
            kv_per_token_layer: s.kv_cache_bytes(1).unwrap_or(0) / n,
            n_vocab: s.vocab_size.unwrap_or(0),
            n_embd: s.embedding_length.unwrap_or(0),
            n_head: s.head_count.unwrap_or(0),
            expert_count: s.expert_count.unwrap_or(0),
            expert_used_count: s.expert_used_count.unwrap_or(0),
            context_length: s.context_length.unwrap_or(4096),
        }
    }

    pub fn total_weights(&self) -> u64 {
        let output = if self.output_tied { 0 } else { self.output };
        saturating_sum(
            [self.input, output]
                .into_iter()
                .chain(self.layer.iter().copied())
                .chain(self.experts.iter().copied()),
        )
    }
    pub fn expert_weights(&self) -> u64 {
        saturating_sum(self.experts.iter().copied())
    }
    pub fn is_moe(&self) -> bool {
        self.expert_weights() > 0
    }
}
