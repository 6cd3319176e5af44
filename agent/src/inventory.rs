//! The host's inventory: CPU, RAM, GPUs, the configured binaries' versions, model folders and the
//! model files in them. Binary versions are cached per (path, modification time): probing
//! rpc-server means starting it.

use crate::config::{AgentConfig, TestingReportedMemory};
use crate::models::ModelFolders;
use crate::versions;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;
use tightwad_protocol::messages::{BinaryInfo, Gpu, GpuVendor, HostInfo, Inventory, ProcessKind};
use tokio::sync::Mutex;

#[derive(Default)]
pub struct BinaryCache {
    entries: Mutex<HashMap<PathBuf, (Option<SystemTime>, BinaryInfo)>>,
}

impl BinaryCache {
    pub async fn info(&self, kind: ProcessKind, path: PathBuf) -> BinaryInfo {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        {
            let entries = self.entries.lock().await;
            if let Some((time, info)) = entries.get(&path) {
                if *time == modified && info.kind == kind {
                    return info.clone();
                }
            }
        }
        let mut info = BinaryInfo {
            kind,
            path: path.display().to_string(),
            build: None,
            rpc_protocol: None,
            error: None,
        };
        match kind {
            ProcessKind::LlamaServer | ProcessKind::RpcServer => {
                if kind == ProcessKind::RpcServer {
                    match versions::rpc_protocol_version(&path).await {
                        Ok(v) => info.rpc_protocol = Some(v),
                        Err(e) => info.error = Some(e),
                    }
                } else {
                    match versions::llama_build(&path).await {
                        Ok(mut build) => {
                            build.backend = crate::build::backend_of_binary(&path);
                            info.build = Some(build)
                        }
                        Err(e) => info.error = Some(e),
                    }
                }
            }
            ProcessKind::Vllm => match versions::vllm_version(&path).await {
                Ok(v) => {
                    info.build = Some(tightwad_protocol::messages::LlamaBuild {
                        build_number: None,
                        version: Some(v),
                        commit: None,
                        backend: None,
                    })
                }
                Err(e) => info.error = Some(e),
            },
        }
        self.entries
            .lock()
            .await
            .insert(path, (modified, info.clone()));
        info
    }
}

/// The host's CPU and memory. RAM is capped by the agent's cgroup memory limit (systemd's
/// `MemoryMax=`, a container's limit): the servers this agent starts inherit it, so that is
/// all the memory they can have.
pub fn host_info() -> HostInfo {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    system.refresh_cpu_all();
    let mut ram_total_bytes = system.total_memory();
    let mut ram_available_bytes = system.available_memory();
    if let Some(limit) = crate::cgroup::memory_limit() {
        ram_total_bytes = ram_total_bytes.min(limit.limit_bytes);
        ram_available_bytes = ram_available_bytes.min(limit.available_bytes());
    }
    HostInfo {
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        os: sysinfo::System::long_os_version().unwrap_or_default(),
        cpu_brand: system
            .cpus()
            .first()
            .map(|c| c.brand().trim().to_string())
            .unwrap_or_default(),
        cpu_cores: system.cpus().len() as u32,
        ram_total_bytes,
        ram_available_bytes,
    }
}

/// Gathers the whole inventory.
pub async fn gather(config: &AgentConfig, models: &ModelFolders, cache: &BinaryCache) -> Inventory {
    let (gpus, gpu_notes) = crate::gpu::probe().await;
    let mut binaries = Vec::new();
    for kind in [ProcessKind::LlamaServer, ProcessKind::RpcServer] {
        if let Some(path) = config.binary_for(kind) {
            binaries.push(cache.info(kind, path).await);
        }
    }
    let vllm_version = match config.binary_for(ProcessKind::Vllm) {
        Some(path) => cache
            .info(ProcessKind::Vllm, path)
            .await
            .build
            .and_then(|b| b.version),
        None => None,
    };
    let models_clone = models.clone();
    let (host, folders, files) = tokio::task::spawn_blocking(move || {
        (host_info(), models_clone.folders(), models_clone.list())
    })
    .await
    .unwrap_or_default();
    let (host, gpus, gpu_notes) = match &config.testing_reported_memory {
        Some(reported) => apply_testing_memory(reported, host, gpus, gpu_notes),
        None => (host, gpus, gpu_notes),
    };
    Inventory {
        host,
        gpus,
        gpu_notes,
        binaries,
        vllm_version,
        model_folders: folders,
        models: files,
    }
}

/// Replaces measured memory with the configured test values, and says so in the GPU notes so a
/// report can never pass such numbers off as measured.
fn apply_testing_memory(
    reported: &TestingReportedMemory,
    mut host: HostInfo,
    mut gpus: Vec<Gpu>,
    mut notes: Vec<String>,
) -> (HostInfo, Vec<Gpu>, Vec<String>) {
    if let Some(total) = reported.ram_total_bytes {
        host.ram_total_bytes = total;
        host.ram_available_bytes = host.ram_available_bytes.min(total);
    }
    if let Some(available) = reported.ram_available_bytes {
        host.ram_available_bytes = available;
    }
    if !reported.gpu_memory_mib.is_empty() {
        gpus = reported
            .gpu_memory_mib
            .iter()
            .enumerate()
            .map(|(index, mib)| Gpu {
                vendor: GpuVendor::Nvidia,
                index: index as u32,
                name: "simulated GPU (testing_reported_memory)".into(),
                memory_total_mib: *mib,
                memory_used_mib: Some(0),
                driver: None,
            })
            .collect();
    }
    notes.push(
        "memory sizes come from testing_reported_memory in the agent config, not from this host"
            .into(),
    );
    (host, gpus, notes)
}
