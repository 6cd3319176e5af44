//! What an agent's inventory says about a host, as the placement planner's devices.

use tightwad_placement::plan::{Device, DeviceKind};
use tightwad_protocol::messages::{AgentStatus, GpuVendor};

/// llama.cpp's name for a host's GPU `index`.
pub fn gpu_name(vendor: GpuVendor, index: u32) -> String {
    match vendor {
        GpuVendor::Nvidia => format!("CUDA{index}"),
        GpuVendor::Amd => format!("ROCm{index}"),
    }
}

/// The device an rpc-server on `status`'s host offers: its first GPU, or (a CPU rpc-server)
/// its RAM.
pub fn rpc_device(name: &str, endpoint: &str, status: &AgentStatus) -> Device {
    let memory = status
        .inventory
        .gpus
        .first()
        .map(|g| g.memory_total_mib << 20)
        .unwrap_or(status.inventory.host.ram_total_bytes);
    Device {
        name: format!("RPC0[{endpoint}]"),
        kind: DeviceKind::Rpc,
        host: name.to_string(),
        memory_bytes: memory,
    }
}

/// The llama-server host's GPUs as planner devices.
pub fn gpu_devices(host: &str, status: &AgentStatus) -> Vec<Device> {
    status
        .inventory
        .gpus
        .iter()
        .map(|g| Device {
            name: gpu_name(g.vendor, g.index),
            kind: DeviceKind::Gpu,
            host: host.to_string(),
            memory_bytes: g.memory_total_mib << 20,
        })
        .collect()
}
