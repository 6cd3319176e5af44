//! A process's memory, predicted and measured, for `tightwad status`: the placement planner's
//! prediction for the model and flags a llama-server runs with (its `-m`, `--rpc`, `-ngl`,
//! `--tensor-split`, `-ot`, `-c`), the buffers the server logged allocating, and its RSS. Side
//! by side they check the planner's estimates against reality on every host.

use tightwad_placement::plan::{
    config_from_args, evaluate, options_from_args, rpc_endpoints, Device, DeviceKind, ModelBytes,
    Target,
};
use tightwad_placement::{gguf, measure, pagecache};
use tightwad_protocol::messages::{DeviceBytes, Gpu, GpuVendor, ProcessKind, ProcessMemory};

use crate::supervisor::Supervisor;

/// The planner's prediction for a llama-server started with `args` on a host with `gpus`.
pub fn predict(args: &[String], gpus: &[Gpu], notes: &mut Vec<String>) -> Vec<DeviceBytes> {
    let Some(model) = crate::reclaim::model_path(args) else {
        return Vec::new();
    };
    let model = match gguf::read_model(&model) {
        Ok(m) => m,
        Err(e) => {
            notes.push(format!("no prediction: {}: {e}", model.display()));
            return Vec::new();
        }
    };
    let bytes = ModelBytes::from_gguf(&model);
    let mut devices: Vec<Device> = rpc_endpoints(args)
        .into_iter()
        .map(|endpoint| Device {
            name: format!("RPC[{endpoint}]"),
            kind: DeviceKind::Rpc,
            host: endpoint,
            // Unknown here; only llama.cpp's default split (no --tensor-split) uses it.
            memory_bytes: 0,
        })
        .collect();
    devices.extend(gpus.iter().map(|g| Device {
        name: match g.vendor {
            GpuVendor::Nvidia => format!("CUDA{}", g.index),
            GpuVendor::Amd => format!("ROCm{}", g.index),
        },
        kind: DeviceKind::Gpu,
        host: "local".into(),
        memory_bytes: g.memory_total_mib << 20,
    }));
    if devices.iter().any(|d| d.memory_bytes == 0)
        && !args.iter().any(|a| a == "--tensor-split" || a == "-ts")
    {
        notes.push("RPC device memory is unknown to the agent: without --tensor-split the prediction splits evenly, llama.cpp by free memory".into());
    }
    let target = Target {
        host: "local".into(),
        ram_bytes: 0,
        devices,
    };
    let config = config_from_args(&bytes, args, target.devices.len());
    evaluate(&bytes, &target, &options_from_args(args), &config)
        .into_iter()
        .filter(|d| d.total_bytes() > 0)
        .map(|d| DeviceBytes {
            bytes: d.total_bytes(),
            device: d.name,
        })
        .collect()
}

/// Predicted and measured memory of the process `name`.
pub async fn process_memory(
    supervisor: &Supervisor,
    name: &str,
) -> Result<ProcessMemory, crate::supervisor::SupervisorError> {
    let managed = supervisor.get(name)?;
    let status = managed.status();
    let mut notes = Vec::new();
    let predicted = if status.kind == ProcessKind::LlamaServer {
        let (gpus, _) = crate::gpu::probe().await;
        let args = status.args.clone();
        tokio::task::spawn_blocking(move || {
            let mut notes = Vec::new();
            let p = predict(&args, &gpus, &mut notes);
            (p, notes)
        })
        .await
        .map(|(p, n)| {
            notes.extend(n);
            p
        })
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let buffers = managed.measured_buffers();
    if buffers.is_empty() && status.kind == ProcessKind::LlamaServer {
        notes.push(
            "no buffer sizes in the server's log (this llama.cpp prints them at -lv 4)".into(),
        );
    }
    let measured = measure::per_device(&buffers)
        .into_iter()
        .map(|(device, bytes)| DeviceBytes { device, bytes })
        .collect();
    let rss = status.pid.and_then(|p| pagecache::process_rss(p).ok());
    Ok(ProcessMemory {
        name: name.to_string(),
        predicted,
        measured,
        rss_bytes: rss.map(|r| r.0),
        rss_file_bytes: rss.map(|r| r.1),
        notes,
    })
}
