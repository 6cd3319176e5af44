//! MoE placement against a real llama-server: the planner's flags (`--tensor-split`, `-ot` /
//! `--n-cpu-moe`) for the generated MoE model over two real rpc-servers (the "devices": CPU
//! memory behind llama.cpp's RPC backend, since this machine has no GPU — the placement rules
//! are the same, only the memory is not VRAM), then the buffers llama-server logs compared with
//! the prediction.
//!
//! Stated margin (README, "Placement"): per device, the predicted total (weights, experts, KV
//! and compute) is within 5% or 2 MiB of the logged buffers, whichever is larger; the weight and
//! KV buffers alone within 1%.

use std::time::Duration;

use serde_json::json;
use tightwad_e2e::{env, LlamaServer, RpcServer, ServerOptions};
use tightwad_placement::gguf::read_model;
use tightwad_placement::measure::{parse_log, per_device, BufferKind};
use tightwad_placement::plan::{plan, Device, DeviceKind, ModelBytes, PlanOptions, Target};

const MIB: u64 = 1 << 20;

fn moe_model() -> std::path::PathBuf {
    match std::env::var_os("TIGHTWAD_MOE_MODEL") {
        Some(p) if !p.is_empty() => p.into(),
        _ => {
            panic!("TIGHTWAD_MOE_MODEL is not set: run ./scripts/test or eval \"$(scripts/setup)\"")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_flags_load_the_moe_model_and_the_prediction_matches_the_buffers() {
    let env = env();
    let path = moe_model();
    let gguf = read_model(&path).expect("read the MoE model's header");
    let model = ModelBytes::from_gguf(&gguf);
    assert!(model.is_moe(), "{model:?}");
    assert_eq!(model.n_layer, 4);

    let a = RpcServer::start(&env).await;
    let b = RpcServer::start(&env).await;
    // Declared device memory (SIMULATION of two small cards: rpc-server on CPU reports the
    // host's RAM). 40 MiB and 24 MiB: the second holds the output layer (15.6 MiB of F16
    // logits weights), so block 3's experts do not fit there and must go to RAM while blocks
    // 0-2 keep theirs on the first: a split `-ot` pattern, not a prefix.
    let device = |port: u16, mib: u64| Device {
        name: format!("RPC0[127.0.0.1:{port}]"),
        kind: DeviceKind::Rpc,
        host: "localhost".into(),
        memory_bytes: mib * MIB,
    };
    let target = Target {
        host: "localhost".into(),
        ram_bytes: 8 << 30,
        devices: vec![device(a.port, 40), device(b.port, 24)],
    };
    let options = PlanOptions {
        context: Some(1024),
        headroom_bytes: 0,
        ..PlanOptions::default()
    };
    let p = plan(&model, &target, &options);
    assert!(p.fits, "{p:#?}");
    assert_eq!(
        p.config
            .cpu_expert_layers
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        vec![3],
        "{p:#?}"
    );
    assert!(p.flags.iter().any(|f| f == "-ot"), "{:?}", p.flags);
    assert!(
        p.flags.iter().any(|f| f == "--tensor-split"),
        "{:?}",
        p.flags
    );

    // The plan's flags, as the agent would pass them (minus -c, which ServerOptions sets), and
    // `-lm none` so the CPU buffer is what is really allocated rather than a mapped file range,
    // and `-lv 4` because this llama.cpp logs buffer sizes at trace level.
    let mut extra = vec![
        "--rpc".to_string(),
        format!("127.0.0.1:{},127.0.0.1:{}", a.port, b.port),
        "-lm".into(),
        "none".into(),
        "-lv".into(),
        "4".into(),
    ];
    let mut flags = p.flags.iter();
    while let Some(f) = flags.next() {
        if f == "-c" {
            flags.next();
        } else {
            extra.push(f.clone());
        }
    }
    let server = LlamaServer::start(
        &env,
        &path,
        ServerOptions {
            ctx: p.context as u32,
            extra,
            ..Default::default()
        },
    )
    .await;
    let answer = server.complete("Once upon a time", 8, json!({})).await;
    assert_eq!(answer["tokens_predicted"], 8, "{answer}");
    assert!(
        !answer["content"].as_str().unwrap_or_default().is_empty(),
        "{answer}"
    );

    // Buffers are logged while the model loads, before /health turns ok; llama.cpp writes its log
    // from a thread of its own, in order, so once the completion's timing lines are there, so is
    // every buffer line before them.
    let log = server
        .wait_for_log("total time =", Duration::from_secs(10))
        .await;
    let buffers = parse_log(log.lines());
    let measured = per_device(&buffers);
    let weights_kv = |device: &str| -> u64 {
        buffers
            .iter()
            .filter(|b| {
                b.device() == device && matches!(b.kind, BufferKind::Model | BufferKind::Kv)
            })
            .map(|b| b.bytes)
            .sum()
    };
    for d in &p.devices {
        let key = match d.kind {
            Some(_) => d.name.replace("RPC0[", "RPC["),
            None => "CPU".to_string(),
        };
        let got = *measured
            .get(&key)
            .unwrap_or_else(|| panic!("no buffers for {key} in {measured:?}\n{log}"));
        let predicted = d.total_bytes();
        let margin = (predicted / 20).max(2 * MIB);
        println!(
            "{key}: predicted {:.2} MiB, measured {:.2} MiB (weights+KV predicted {:.2}, measured {:.2})",
            predicted as f64 / MIB as f64,
            got as f64 / MIB as f64,
            (d.model_bytes() + d.kv_bytes) as f64 / MIB as f64,
            weights_kv(&key) as f64 / MIB as f64
        );
        assert!(
            predicted.abs_diff(got) <= margin,
            "{key}: predicted {predicted}, measured {got}, margin {margin}\n{buffers:#?}"
        );
        let wk = d.model_bytes() + d.kv_bytes;
        assert!(
            wk.abs_diff(weights_kv(&key)) <= wk / 100,
            "{key}: weights+KV predicted {wk}, measured {}\n{buffers:#?}",
            weights_kv(&key)
        );
    }
}
