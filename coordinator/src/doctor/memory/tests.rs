use super::*;
use crate::cluster::HostEntry;
use crate::doctor::agents::{HostView, ProcessView};
use tightwad_protocol::messages::{
    Gpu, GpuVendor, HostInfo, Inventory, ProcessCheck, ProcessKind, ProcessState,
};

fn host(name: &str, gpus_mib: &[u64]) -> HostView {
    HostView {
        entry: HostEntry {
            name: name.into(),
            address: format!("{name}:7420"),
            build_backend: None,
        },
        client: None,
        status: Ok(AgentStatus {
            node_name: name.into(),
            software_version: "0".into(),
            protocol_version: 2,
            uptime_secs: 0,
            processes: vec![],
            inventory: Inventory {
                host: HostInfo {
                    ram_total_bytes: 64 << 30,
                    ram_available_bytes: 60 << 30,
                    ..Default::default()
                },
                gpus: gpus_mib
                    .iter()
                    .enumerate()
                    .map(|(i, mib)| Gpu {
                        vendor: GpuVendor::Nvidia,
                        index: i as u32,
                        name: "card".into(),
                        memory_total_mib: *mib,
                        memory_used_mib: None,
                        driver: None,
                    })
                    .collect(),
                ..Default::default()
            },
        }),
    }
}

/// The field report's draft host: a 16 GB M2 and a ~12 GB model; Metal allows ~11.2 GB.
#[test]
fn a_mac_is_held_to_its_metal_working_set() {
    let mut mac = host("m2", &[]);
    if let Ok(status) = &mut mac.status {
        status.inventory.host.os = "macOS 14.5 Sonoma".into();
        status.inventory.host.ram_total_bytes = 16 << 30;
        status.inventory.host.ram_available_bytes = 14 << 30;
    }
    let draft: ProcessRef = "m2/draft".parse().expect("ref");
    let mut processes = BTreeMap::new();
    processes.insert(
        draft.clone(),
        ProcessView {
            reference: draft,
            check: Ok(ProcessCheck {
                name: "draft".into(),
                kind: ProcessKind::LlamaServer,
                args: vec!["-c".into(), "2048".into()],
                binary: None,
                flag_error: None,
                models: vec![ModelArg {
                    flag: "-m".into(),
                    path: "/m/gpt-oss-20b-Q8_0.gguf".into(),
                    exists: true,
                    size_bytes: 12_100_000_000,
                    gguf: Some(GgufSummary {
                        tensor_bytes: 12_100_000_000,
                        ..Default::default()
                    }),
                    error: None,
                    found_elsewhere: vec![],
                }],
                state: ProcessState::Stopped,
            }),
        },
    );
    let cluster = Cluster {
        hosts: vec![mac],
        processes,
    };
    let checks = checks(&cluster, &Layout::default());
    let fail = checks
        .iter()
        .find(|c| c.status == Status::Fail)
        .unwrap_or_else(|| panic!("{checks:#?}"));
    assert!(
        fail.message.contains("over the Metal working set"),
        "{fail:?}"
    );
    assert!(
        fail.message.contains("of 11.2 GiB Metal working set"),
        "{fail:?}"
    );
    assert!(fail
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("--no-warmup")));
}

/// `-ngl 0` keeps a model in RAM and `--cpu-moe` its experts: neither spills out of VRAM.
#[test]
fn flags_that_keep_weights_in_ram_are_not_counted_against_vram() {
    let model = ModelArg {
        flag: "-m".into(),
        path: "/m/moe.gguf".into(),
        exists: true,
        size_bytes: 30 << 30,
        gguf: Some(GgufSummary {
            tensor_bytes: 30 << 30,
            expert_tensor_bytes: 26 << 30,
            expert_count: Some(64),
            ..Default::default()
        }),
        error: None,
        found_elsewhere: vec![],
    };
    let status_for = |args: &[&str]| {
        let reference: ProcessRef = "gpu/target".parse().expect("ref");
        let mut processes = BTreeMap::new();
        processes.insert(
            reference.clone(),
            ProcessView {
                reference,
                check: Ok(ProcessCheck {
                    name: "target".into(),
                    kind: ProcessKind::LlamaServer,
                    args: args.iter().map(|a| a.to_string()).collect(),
                    binary: None,
                    flag_error: None,
                    models: vec![model.clone()],
                    state: ProcessState::Stopped,
                }),
            },
        );
        let cluster = Cluster {
            hosts: vec![host("gpu", &[12288])],
            processes,
        };
        checks(&cluster, &Layout::default())
            .into_iter()
            .map(|c| c.status)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status_for(&["-c", "512"]),
        vec![Status::Warn],
        "30 GiB on a 12 GiB card spills"
    );
    assert_eq!(status_for(&["-c", "512", "--cpu-moe"]), vec![Status::Pass]);
    assert_eq!(status_for(&["-c", "512", "-ngl", "0"]), vec![Status::Pass]);
}

/// The field report's pool: a 60 GB, 36-block MoE model over a box with two 24 GB cards and
/// a desktop whose rpc-server runs on its 12 GB RTX 3060, split 28:24:24 by the desktop's
/// 28 GB total. llama.cpp gives the worker 14 of 37 slots, experts included: ~22 GiB.
#[test]
fn moe_on_a_small_rpc_worker_is_flagged_with_the_estimate() {
    let model = ModelArg {
        flag: "-m".into(),
        path: "/m/gpt-oss-120b.gguf".into(),
        exists: true,
        size_bytes: 60_000_000_000,
        gguf: Some(GgufSummary {
            tensor_bytes: 60_000_000_000,
            expert_tensor_bytes: 55_000_000_000,
            expert_count: Some(128),
            block_count: Some(36),
            parameter_count: 117_000_000_000,
            context_length: Some(2048),
            ..Default::default()
        }),
        error: None,
        found_elsewhere: vec![],
    };
    let coordinator: ProcessRef = "gpu/target".parse().expect("ref");
    let cluster_with = |args: &[&str], desk_mib: &[u64]| {
        let mut processes = BTreeMap::new();
        processes.insert(
            coordinator.clone(),
            ProcessView {
                reference: coordinator.clone(),
                check: Ok(ProcessCheck {
                    name: "target".into(),
                    kind: ProcessKind::LlamaServer,
                    args: args.iter().map(|a| a.to_string()).collect(),
                    binary: None,
                    flag_error: None,
                    models: vec![model.clone()],
                    state: ProcessState::Stopped,
                }),
            },
        );
        Cluster {
            hosts: vec![host("gpu", &[24576, 24576]), host("desk", desk_mib)],
            processes,
        }
    };
    let layout = Layout::parse(
        "[[pools]]\nname = \"big\"\ncoordinator = \"gpu/target\"\nworkers = [\"desk/rpc\"]\n",
    )
    .expect("layout");
    let checks = checks(
        &cluster_with(
            &["-c", "2048", "--tensor-split", "28,24,24"],
            &[12288, 16384],
        ),
        &layout,
    );
    let moe = checks
        .iter()
        .find(|c| c.subject == "desk" && c.status == Status::Warn)
        .unwrap_or_else(|| panic!("{checks:#?}"));
    assert!(moe.message.contains("MoE model"), "{moe:?}");
    assert!(
        moe.message
            .contains("asks desk on RPC0[desk:50052] for 21."),
        "{moe:?}"
    );
    assert!(moe.message.contains("but it has 12.0 GiB"), "{moe:?}");
    let hint = moe.hint.as_deref().unwrap_or_default();
    // 12 + 24 + 24 GiB hold the 56 GiB model when the split follows each device's memory.
    assert!(hint.contains("--tensor-split 7,15,15"), "{hint}");
    let fail = checks
        .iter()
        .find(|c| c.subject == "desk" && c.status == Status::Fail)
        .unwrap_or_else(|| panic!("{checks:#?}"));
    assert!(fail.message.contains("RPC buffers do not fit"), "{fail:?}");
    // With the planner's flags the same pool passes on the desktop.
    let planned = hint.split("gives ").nth(1).unwrap_or_default();
    let mut args: Vec<String> = Vec::new();
    for word in planned.split_whitespace() {
        args.push(word.trim_matches('\'').to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let checks = super::checks(&cluster_with(&args, &[12288, 16384]), &layout);
    assert!(
        checks
            .iter()
            .filter(|c| c.subject == "desk")
            .all(|c| c.status == Status::Pass),
        "{args:?}: {checks:#?}"
    );
}

#[test]
fn context_from_args_or_model() {
    let g = GgufSummary {
        context_length: Some(2048),
        ..Default::default()
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(context_of(&args(&["-c", "512"]), &g), 512);
    assert_eq!(context_of(&args(&["--ctx-size=1024"]), &g), 1024);
    assert_eq!(context_of(&args(&["-c", "0"]), &g), 2048);
    assert_eq!(context_of(&[], &g), 2048);
    assert_eq!(
        cache_type_bytes(&args(&["-ctk", "q8_0"]), &["-ctk"]),
        34.0 / 32.0
    );
    assert_eq!(
        cache_type_bytes(&args(&["--cache-type-v=q4_0"]), &["-ctv", "--cache-type-v"]),
        18.0 / 32.0
    );
    assert_eq!(cache_type_bytes(&[], &["-ctk"]), 2.0);
    let kv = GgufSummary {
        block_count: Some(4),
        embedding_length: Some(256),
        head_count: Some(4),
        head_count_kv: Some(4),
        ..Default::default()
    };
    // 2 × 4 layers × 512 ctx × 4 heads × (64 + 64) × 2 bytes... per K and V: 4·512·256·2·2
    assert_eq!(kv.kv_cache_bytes(512), Some(4 * 512 * 4 * 128 * 2));
}
