//! Planner tests on GGUF headers written here (read back through the real reader), with the
//! expected numbers worked out by hand in the comments.

use super::*;
use crate::gguf::read_model_header;
use crate::synth::{Meta, SynthGguf};

const F32: u32 = 0;
const Q8_0: u32 = 8;
const MXFP4: u32 = 39;

/// A small model: `layers` blocks of embd 256, 4 heads (head dim 64), vocab 1000, all F32; with
/// `experts` > 0, qwen2moe-style routed experts of width 128 instead of a dense FFN.
fn small(layers: u32, experts: u64) -> ModelBytes {
    let arch = if experts > 0 { "qwen2moe" } else { "llama" };
    let mut g = SynthGguf::new(arch)
        .arch_u32("block_count", layers)
        .arch_u32("embedding_length", 256)
        .arch_u32("attention.head_count", 4)
        .arch_u32("attention.head_count_kv", 4)
        .arch_u32("context_length", 1024)
        .meta(
            "tokenizer.ggml.tokens",
            Meta::StrArray((0..1000).map(|i| format!("t{i}")).collect()),
        )
        .tensor("token_embd.weight", &[256, 1000], F32)
        .tensor("output_norm.weight", &[256], F32)
        .tensor("output.weight", &[256, 1000], F32);
    if experts > 0 {
        g = g
            .arch_u32("expert_count", experts as u32)
            .arch_u32("expert_used_count", 2);
    }
    for i in 0..layers {
        let p = format!("blk.{i}.");
        g = g
            .tensor(&format!("{p}attn_norm.weight"), &[256], F32)
            .tensor(&format!("{p}attn_q.weight"), &[256, 256], F32)
            .tensor(&format!("{p}attn_k.weight"), &[256, 256], F32)
            .tensor(&format!("{p}attn_v.weight"), &[256, 256], F32)
            .tensor(&format!("{p}attn_output.weight"), &[256, 256], F32)
            .tensor(&format!("{p}ffn_norm.weight"), &[256], F32);
        if experts > 0 {
            g = g
                .tensor(&format!("{p}ffn_gate_inp.weight"), &[256, experts], F32)
                .tensor(
                    &format!("{p}ffn_gate_exps.weight"),
                    &[256, 128, experts],
                    F32,
                )
                .tensor(&format!("{p}ffn_up_exps.weight"), &[256, 128, experts], F32)
                .tensor(
                    &format!("{p}ffn_down_exps.weight"),
                    &[128, 256, experts],
                    F32,
                );
        } else {
            g = g
                .tensor(&format!("{p}ffn_gate.weight"), &[256, 768], F32)
                .tensor(&format!("{p}ffn_up.weight"), &[256, 768], F32)
                .tensor(&format!("{p}ffn_down.weight"), &[768, 256], F32);
        }
    }
    let header = g.header();
    let model = read_model_header(&header[..], g.file_len()).expect("reads back");
    assert_eq!(model.missing_bytes(), 0);
    ModelBytes::from_gguf(&model)
}

fn options() -> PlanOptions {
    PlanOptions {
        context: Some(1024),
        headroom_bytes: 0,
        ..PlanOptions::default()
    }
}

fn gpu(name: &str, bytes: u64) -> Device {
    Device {
        name: name.into(),
        kind: DeviceKind::Gpu,
        host: "box".into(),
        memory_bytes: bytes,
    }
}

fn target(devices: Vec<Device>) -> Target {
    Target {
        host: "box".into(),
        ram_bytes: 64 << 30,
        devices,
    }
}

fn strings(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| s.to_string()).collect()
}

// Per block: norms 2 x 1,024 + attention 4 x 262,144 = 1,050,624 (+ 8,192 router for 8
// experts = 1,058,816); routed experts 3 x 256·128·8·4 = 3,145,728; dense FFN 3 x 786,432 =
// 2,359,296. Output 1,024,000 + 1,024 = 1,025,024; input 1,024,000.
// KV: 4 kv heads x (64 + 64) x 2 bytes = 1,024 bytes per token per layer; -c 1024 → 1 MiB.
// Compute (ubatch 512): 512·4·256·8 = 4,194,304 on every device that holds a layer.
const BLOCK_MOE: u64 = 1_058_816;
const EXPERTS: u64 = 3_145_728;
const KV: u64 = 1_048_576;
const OUTPUT: u64 = 1_025_024;
const COMPUTE: u64 = 4_194_304;

#[test]
fn model_bytes_by_role() {
    let m = small(4, 8);
    assert_eq!(m.n_layer, 4);
    assert_eq!(m.layer, vec![BLOCK_MOE; 4]);
    assert_eq!(m.experts, vec![EXPERTS; 4]);
    assert_eq!(m.input, 1_024_000);
    assert_eq!(m.output, OUTPUT);
    assert_eq!(m.kv_per_token_layer, 1024);
    assert!(m.is_moe());
    let dense = small(4, 0);
    assert_eq!(dense.layer, vec![1_050_624 + 2_359_296; 4]);
    assert!(!dense.is_moe());
    assert_eq!(role_of("blk.3.ffn_gate_exps.weight"), TensorRole::Expert);
    assert_eq!(role_of("blk.3.ffn_gate_shexp.weight"), TensorRole::Layer);
    assert_eq!(role_of("blk.3.ffn_gate_inp.weight"), TensorRole::Layer);
    assert_eq!(role_of("token_embd.weight"), TensorRole::Input);
    assert_eq!(role_of("output_norm.weight"), TensorRole::Output);
}

#[test]
fn a_dense_model_that_fits_goes_entirely_to_the_gpu() {
    let m = small(4, 0);
    let p = plan(&m, &target(vec![gpu("CUDA0", 1 << 30)]), &options());
    assert!(p.fits, "{p:#?}");
    assert_eq!(p.flags, strings(&["-c", "1024", "-ngl", "5"]));
    let g = &p.devices[0];
    assert_eq!(g.layers, Some((0, 3)));
    assert!(g.holds_output);
    assert_eq!(g.weights_bytes, 4 * (1_050_624 + 2_359_296) + OUTPUT);
    assert_eq!(g.kv_bytes, 4 * KV);
    assert_eq!(g.compute_bytes, COMPUTE);
    let cpu = p.cpu().expect("cpu");
    assert_eq!(
        cpu.weights_bytes, 1_024_000,
        "token embeddings stay on the CPU"
    );
    assert_eq!(cpu.kv_bytes, 0);
}

#[test]
fn a_dense_model_too_big_keeps_its_first_layers_on_the_cpu() {
    // Slots: block = 3,409,920 + 1 MiB KV = 4,458,496; output 1,025,024. A card with 12 MB:
    // usable 12,000,000 - 4,194,304 = 7,805,696 → output + 1 block = 5,483,520; a second block
    // would make 9,942,016. So -ngl 2: block 3 and the output.
    let m = small(4, 0);
    let p = plan(&m, &target(vec![gpu("CUDA0", 12_000_000)]), &options());
    assert_eq!(p.config.gpu_layers, 2);
    assert_eq!(p.flags, strings(&["-c", "1024", "-ngl", "2"]));
    assert!(p.warnings[0].contains("3 of 5 layers"), "{:?}", p.warnings);
    assert!(p.fits);
    assert_eq!(p.devices[0].layers, Some((3, 3)));
    // 20 MB: usable 15,805,696 → output + 3 blocks (14,400,512); a fourth would be 18,859,008.
    let p = plan(&m, &target(vec![gpu("CUDA0", 20_000_000)]), &options());
    assert_eq!(p.config.gpu_layers, 4);
    assert_eq!(p.devices[0].layers, Some((1, 3)));
    assert_eq!(p.cpu().and_then(|c| c.layers), Some((0, 0)));
}

#[test]
fn moe_experts_that_do_not_fit_stay_in_ram_with_n_cpu_moe() {
    // All non-expert slots: 4 x (1,058,816 + 1,048,576) + 1,025,024 = 9,454,592. A card whose
    // usable memory is that + 2 experts + 100,000 keeps the experts of blocks 3 and 2.
    let m = small(4, 8);
    let usable = 9_454_592 + 2 * EXPERTS + 100_000;
    let card = usable + COMPUTE;
    let p = plan(&m, &target(vec![gpu("CUDA0", card)]), &options());
    assert!(p.fits, "{p:#?}");
    assert_eq!(
        p.config.cpu_expert_layers,
        [0, 1].into_iter().collect::<BTreeSet<u32>>()
    );
    assert_eq!(
        p.flags,
        strings(&["-c", "1024", "-ngl", "5", "--n-cpu-moe", "2"])
    );
    let g = &p.devices[0];
    assert_eq!(g.weights_bytes, 4 * BLOCK_MOE + OUTPUT);
    assert_eq!(g.expert_bytes, 2 * EXPERTS);
    assert_eq!(g.total_bytes(), card - 100_000);
    let cpu = p.cpu().expect("cpu");
    assert_eq!(cpu.expert_bytes, 2 * EXPERTS);
    assert_eq!(cpu.weights_bytes, 1_024_000);
    // Much smaller: no expert fits → --cpu-moe; much larger: no flag at all.
    let p = plan(
        &m,
        &target(vec![gpu("CUDA0", 9_454_592 + COMPUTE)]),
        &options(),
    );
    assert_eq!(p.flags, strings(&["-c", "1024", "-ngl", "5", "--cpu-moe"]));
    let p = plan(&m, &target(vec![gpu("CUDA0", 1 << 30)]), &options());
    assert_eq!(p.flags, strings(&["-c", "1024", "-ngl", "5"]));
}

#[test]
fn two_devices_split_layers_and_experts_each_keeps_what_fits() {
    // RPC0 (a worker) and CUDA0, 16.5 MB each: usable 16,500,000 - 4,194,304 = 12,305,696
    // each. Five slots in proportion 1 : 1 → 3 : 2 (largest remainder, ties to the first).
    // RPC0 holds blocks 0-2: base 3 x 2,107,392 = 6,322,176, room 5,983,520 → one block's
    // experts (3,145,728; two would be 6,291,456): block 2's. CUDA0 holds block 3 and the
    // output: base 3,132,416, room 9,173,280 → block 3's experts. CPU: experts of blocks 0, 1.
    let m = small(4, 8);
    let devices = vec![
        Device {
            name: "RPC0[10.0.0.3:50052]".into(),
            kind: DeviceKind::Rpc,
            host: "desk".into(),
            memory_bytes: 16_500_000,
        },
        gpu("CUDA0", 16_500_000),
    ];
    let p = plan(&m, &target(devices.clone()), &options());
    assert!(p.fits, "{p:#?}");
    assert_eq!(p.config.tensor_split, vec![3.0, 2.0]);
    assert_eq!(
        p.flags,
        strings(&[
            "-c",
            "1024",
            "-ngl",
            "5",
            "--tensor-split",
            "3,2",
            "--n-cpu-moe",
            "2"
        ])
    );
    assert_eq!(p.devices[0].layers, Some((0, 2)));
    assert_eq!(p.devices[0].expert_bytes, EXPERTS);
    assert_eq!(p.devices[1].layers, Some((3, 3)));
    assert_eq!(p.devices[1].expert_bytes, EXPERTS);
    // Experts kept off RPC workers: blocks 0-2's experts go to RAM, block 3's stay.
    let p = plan(
        &m,
        &target(devices),
        &PlanOptions {
            experts_on_rpc: false,
            ..options()
        },
    );
    assert_eq!(p.devices[0].expert_bytes, 0);
    assert!(p.flags.ends_with(&strings(&["--n-cpu-moe", "3"])));
}

#[test]
fn a_split_that_is_not_a_prefix_gets_an_override_tensor_pattern() {
    let m = small(6, 8);
    let config = Config {
        gpu_layers: 7,
        tensor_split: vec![4.0, 3.0],
        cpu_expert_layers: [4u32, 5].into_iter().collect(),
    };
    let flags = flags_for(&m, &config, 2, 1024);
    assert_eq!(
        flags,
        strings(&[
            "-c",
            "1024",
            "-ngl",
            "7",
            "--tensor-split",
            "4,3",
            "-ot",
            r"blk\.(4|5)\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"
        ])
    );
    // Reading the flags back gives the same configuration (the -ot regex is evaluated).
    assert_eq!(config_from_args(&m, &flags, 2), config);
    // llama.cpp's own shorthands.
    let args = strings(&["-ngl", "99", "--n-cpu-moe", "2"]);
    let c = config_from_args(&m, &args, 1);
    assert_eq!(c.gpu_layers, 7);
    assert_eq!(c.cpu_expert_layers, [0u32, 1].into_iter().collect());
    let c = config_from_args(&m, &strings(&["-ot", "exps=CPU"]), 1);
    assert_eq!(c.cpu_expert_layers.len(), 6);
}

#[test]
fn slot_devices_follow_llama_cpp_split_rule() {
    let config = |ngl, split: &[f64]| Config {
        gpu_layers: ngl,
        tensor_split: split.to_vec(),
        cpu_expert_layers: BTreeSet::new(),
    };
    // 4 blocks + output over 3 : 2.
    assert_eq!(
        slot_devices(4, 2, &config(5, &[3.0, 2.0])),
        vec![Some(0), Some(0), Some(0), Some(1), Some(1)]
    );
    // -ngl 2: blocks 0-2 on the CPU, block 3 and the output offloaded (split 1 : 1).
    assert_eq!(
        slot_devices(4, 2, &config(2, &[1.0, 1.0])),
        vec![None, None, None, Some(0), Some(1)]
    );
    // A zero weight skips a device.
    assert_eq!(
        slot_devices(2, 2, &config(3, &[0.0, 1.0])),
        vec![Some(1), Some(1), Some(1)]
    );
}

/// GPT-OSS-120B's shape: 36 blocks, embd 2880, 64 heads (8 KV, head dim 64), vocab 201,088,
/// 128 experts of width 2880 in MXFP4, attention in Q8_0.
fn gpt_oss_120b() -> ModelBytes {
    let mut g = SynthGguf::new("gpt-oss")
        .arch_u32("block_count", 36)
        .arch_u32("embedding_length", 2880)
        .arch_u32("attention.head_count", 64)
        .arch_u32("attention.head_count_kv", 8)
        .arch_u32("attention.key_length", 64)
        .arch_u32("attention.value_length", 64)
        .arch_u32("context_length", 131072)
        .arch_u32("expert_count", 128)
        .arch_u32("expert_used_count", 4)
        .tensor("token_embd.weight", &[2880, 201_088], Q8_0)
        .tensor("output_norm.weight", &[2880], F32)
        .tensor("output.weight", &[2880, 201_088], Q8_0);
    for i in 0..36 {
        let p = format!("blk.{i}.");
        g = g
            .tensor(&format!("{p}attn_norm.weight"), &[2880], F32)
            .tensor(&format!("{p}attn_q.weight"), &[2880, 4096], Q8_0)
            .tensor(&format!("{p}attn_k.weight"), &[2880, 512], Q8_0)
            .tensor(&format!("{p}attn_v.weight"), &[2880, 512], Q8_0)
            .tensor(&format!("{p}attn_output.weight"), &[4096, 2880], Q8_0)
            .tensor(&format!("{p}post_attention_norm.weight"), &[2880], F32)
            .tensor(&format!("{p}ffn_gate_inp.weight"), &[2880, 128], F32)
            .tensor(
                &format!("{p}ffn_gate_exps.weight"),
                &[2880, 2880, 128],
                MXFP4,
            )
            .tensor(&format!("{p}ffn_up_exps.weight"), &[2880, 2880, 128], MXFP4)
            .tensor(
                &format!("{p}ffn_down_exps.weight"),
                &[2880, 2880, 128],
                MXFP4,
            );
    }
    let header = g.header();
    let model = read_model_header(&header[..], g.file_len()).expect("reads back");
    ModelBytes::from_gguf(&model)
}

/// The field report: the target box (2 x 24 GB) pooled with a desktop whose rpc-server ran on
/// its 12 GB RTX 3060, the split made over the desktop's 28 GB total (28 : 24 : 24). llama.cpp
/// then gives RPC0 the first 14 of 37 slots (14/37 < 28/76), experts included: per block
/// 3 x 564,019,200 (MXFP4 2880x2880x128) + 28,200,960 attention + 2 x 11,520 norms +
/// 1,474,560 router = 1,721,940,480 bytes, x 14 = 24.1 GB. (The report's 22.3 GB buffer is
/// the same arithmetic on its Q4_K_XL file and split: 13 blocks.)
#[test]
fn gpt_oss_120b_on_a_12_gb_rpc_worker_is_refused_with_numbers_and_replanned() {
    let m = gpt_oss_120b();
    assert_eq!(m.experts[0], 3 * 564_019_200);
    assert_eq!(m.layer[0] + m.experts[0], 1_721_756_160);
    let devices = vec![
        Device {
            name: "RPC0[192.168.1.20:50052]".into(),
            kind: DeviceKind::Rpc,
            host: "desktop".into(),
            memory_bytes: 12 << 30,
        },
        gpu("ROCm0", 24 << 30),
        gpu("ROCm1", 24 << 30),
    ];
    let t = Target {
        host: "target-box".into(),
        ram_bytes: 64 << 30,
        devices,
    };
    let opts = PlanOptions {
        context: Some(2048),
        ..PlanOptions::default()
    };
    let args = strings(&["-c", "2048", "--tensor-split", "28,24,24"]);
    let given = check(&m, &t, &opts, &config_from_args(&m, &args, 3));
    assert!(!given.fits);
    assert_eq!(given.devices[0].layers, Some((0, 13)));
    assert_eq!(given.devices[0].model_bytes(), 14 * 1_721_756_160);
    let warning = given
        .warnings
        .iter()
        .find(|w| w.contains("RPC0"))
        .unwrap_or_else(|| panic!("{:?}", given.warnings));
    assert!(
        warning.starts_with("RPC worker RPC0[192.168.1.20:50052] on desktop would need 22."),
        "{warning}"
    );
    assert!(warning.contains("experts 22.1 GiB"), "{warning}");
    assert!(warning.contains("but has 12.0 GiB"), "{warning}");
    assert!(warning.contains("cannot spill"), "{warning}");

    // The plan for the same machines fits: every block's attention and KV on a device, experts
    // where they fit, the rest in the target box's RAM. The devices' 60 GiB less headroom and
    // compute buffers (~63.1 GB usable) against ~62.8 GB of weights and KV: nearly everything
    // fits, and the one or two blocks whose experts do not (split rounding) stay in RAM.
    let p = plan(&m, &t, &opts);
    assert!(p.fits, "{p:#?}");
    for d in &p.devices[..3] {
        assert!(
            d.total_bytes() + opts.headroom_bytes <= d.capacity_bytes,
            "{d:?}"
        );
    }
    let cpu = p.cpu().expect("cpu");
    let per_block = 3 * 564_019_200;
    assert_eq!(cpu.expert_bytes % per_block, 0, "{cpu:?}");
    assert!((1..=2).contains(&(cpu.expert_bytes / per_block)), "{cpu:?}");
    assert!(p.flags.iter().any(|f| f == "--tensor-split"));
    assert!(
        p.flags.iter().any(|f| f == "-ot" || f == "--n-cpu-moe"),
        "{:?}",
        p.flags
    );
    // And its flags, read back, describe the same placement.
    let back = config_from_args(&m, &p.flags, 3);
    assert_eq!(back, p.config);
}

/// A header is a claim: 4 billion blocks made `from_gguf` allocate two tables of 4 billion
/// entries (64 GB: the process died), seen while writing `fuzz/fuzz_targets/gguf_header.rs`. The count is
/// capped at llama.cpp's own limit.
#[test]
fn a_header_claiming_billions_of_blocks_allocates_tables_of_at_most_max_layers() {
    let bytes = SynthGguf::new("llama")
        .arch_u32("block_count", u32::MAX)
        .tensor("blk.4000000000.attn_q.weight", &[32, 32], F32)
        .header();
    let model = read_model_header(&bytes[..], bytes.len() as u64).expect("a header");
    let m = ModelBytes::from_gguf(&model);
    assert_eq!(m.n_layer, MAX_LAYERS);
    assert_eq!(m.layer.len(), MAX_LAYERS as usize);
    let p = plan(&m, &target(vec![gpu("GPU0", 24 << 30)]), &options());
    assert_eq!(p.devices.len(), 2);
    let summary = ModelBytes::from_summary(&model.summary, bytes.len() as u64);
    assert_eq!(summary.layer.len(), MAX_LAYERS as usize);
}

/// Sizes, context and widths near `u64::MAX` add and multiply without wrapping (a debug build
/// panicked on the overflow, a release build wrapped to small numbers that "fit"): they saturate
/// and the plan says the model does not fit.
#[test]
fn absurd_sizes_in_a_header_saturate_and_do_not_fit() {
    let mut g = SynthGguf::new("llama")
        .arch_u32("block_count", 2)
        .meta("llama.context_length", Meta::U64(u64::MAX))
        .meta("llama.embedding_length", Meta::U64(u64::MAX))
        .arch_u32("attention.head_count", 1);
    for _ in 0..5 {
        // 2^20 x 2^40 F32 elements: 2^62 bytes each, five of them.
        g = g.tensor("token_embd.weight", &[1 << 20, 1 << 40], F32);
    }
    let bytes = g
        .tensor("blk.0.attn_q.weight", &[1 << 20, 1 << 40], F32)
        .tensor("blk.1.attn_q.weight", &[1 << 20, 1 << 40], F32)
        .header();
    let model = read_model_header(&bytes[..], bytes.len() as u64).expect("a header");
    assert_eq!(model.tensor_table_bytes(), u64::MAX);
    let m = ModelBytes::from_gguf(&model);
    assert_eq!(m.input, u64::MAX);
    assert_eq!(m.total_weights(), u64::MAX);
    let p = plan(
        &m,
        &target(vec![gpu("GPU0", 24 << 30)]),
        &PlanOptions::default(),
    );
    assert!(!p.fits);
    assert_eq!(
        p.context,
        u64::MAX,
        "the context rounds up to 256 cells, saturated"
    );
}
