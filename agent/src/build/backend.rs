//! Which GPU backend a host's llama.cpp build uses, and the cmake flags for it.
//!
//! Detected from the agent's own inventory (NVIDIA GPU → CUDA, AMD → HIP, macOS → Metal, a Vulkan
//! loader → Vulkan, else CPU); the coordinator may override it per host (`build_backend` in
//! `[[hosts]]`). CPU flags are portable (no `-march=native`): a build made on one machine of a
//! family runs on the others, and `GGML_NATIVE` crashed on the CI machines (notes/backends.md).

use tightwad_protocol::messages::{BuildBackend, Gpu, GpuVendor};

/// What the host looks like, as far as the backend choice goes.
#[derive(Debug, Clone, Default)]
pub struct HostTraits {
    pub gpus: Vec<Gpu>,
    pub macos: bool,
    pub x86_64: bool,
    /// A Vulkan loader/ICD is installed.
    pub vulkan: bool,
}

impl HostTraits {
    /// This host, from the GPUs the inventory found.
    pub fn this_host(gpus: Vec<Gpu>) -> Self {
        HostTraits {
            gpus,
            macos: cfg!(target_os = "macos"),
            x86_64: cfg!(target_arch = "x86_64"),
            vulkan: ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
                .iter()
                .any(|dir| {
                    std::fs::read_dir(dir)
                        .map(|mut entries| entries.next().is_some())
                        .unwrap_or(false)
                }),
        }
    }
}

/// The backend for this host and why.
pub fn detect(host: &HostTraits) -> (BuildBackend, String) {
    if let Some(gpu) = host.gpus.iter().find(|g| g.vendor == GpuVendor::Nvidia) {
        return (BuildBackend::Cuda, format!("NVIDIA GPU {}", gpu.name));
    }
    if let Some(gpu) = host.gpus.iter().find(|g| g.vendor == GpuVendor::Amd) {
        return (BuildBackend::Hip, format!("AMD GPU {}", gpu.name));
    }
    if host.macos {
        return (BuildBackend::Metal, "macOS".into());
    }
    if host.vulkan {
        return (BuildBackend::Vulkan, "a Vulkan ICD is installed".into());
    }
    (BuildBackend::Cpu, "no GPU found".into())
}

/// cmake `-D` flags (without the `-D`) for a build of llama-server, rpc-server and
/// llama-quantize. The CPU part must stay equal to `scripts/setup`'s (a unit test checks), so
/// the tests' agent builds hit the ccache that setup filled.
pub fn cmake_flags(backend: BuildBackend, host: &HostTraits) -> Vec<String> {
    let mut flags: Vec<&str> = vec![
        "CMAKE_BUILD_TYPE=Release",
        "LLAMA_CURL=OFF",
        "LLAMA_OPENSSL=OFF",
        "GGML_NATIVE=OFF",
    ];
    if host.x86_64 {
        // The x86-64-v3 level every machine of the last ten years has; portable across hosts.
        flags.extend([
            "GGML_AVX=ON",
            "GGML_AVX2=ON",
            "GGML_FMA=ON",
            "GGML_F16C=ON",
            "GGML_BMI2=ON",
        ]);
    }
    flags.extend([
        "GGML_RPC=ON",
        "LLAMA_BUILD_TESTS=OFF",
        "LLAMA_BUILD_EXAMPLES=OFF",
        "LLAMA_BUILD_SERVER=ON",
        "LLAMA_BUILD_TOOLS=ON",
        "BUILD_SHARED_LIBS=OFF",
        // llama.cpp compiles its models as unity batches; relative #includes in those generated
        // files keep them identical wherever the tree is unpacked, so ccache hits them too
        // (CMake >= 4.0; older versions ignore it).
        "CMAKE_UNITY_BUILD_RELOCATABLE=ON",
    ]);
    match backend {
        BuildBackend::Cpu => {
            if host.macos {
                flags.push("GGML_METAL=OFF");
            }
        }
        BuildBackend::Cuda => flags.push("GGML_CUDA=ON"),
        BuildBackend::Hip => flags.push("GGML_HIP=ON"),
        BuildBackend::Metal => flags.push("GGML_METAL=ON"),
        BuildBackend::Vulkan => flags.push("GGML_VULKAN=ON"),
    }
    flags.into_iter().map(String::from).collect()
}

/// What to install when a backend's configure step fails (the summary's advice).
pub fn toolkit_hint(backend: BuildBackend) -> &'static str {
    match backend {
        BuildBackend::Cpu => "install cmake, ninja and a C++ compiler (build-essential)",
        BuildBackend::Cuda => {
            "install the CUDA toolkit (nvcc on PATH), or build this host with --backend cpu"
        }
        BuildBackend::Hip => {
            "install ROCm/HIP (hipcc, rocm-cmake), or build this host with --backend cpu"
        }
        BuildBackend::Metal => "install the Xcode command line tools",
        BuildBackend::Vulkan => {
            "install the Vulkan SDK (glslc, libvulkan-dev), or build this host with --backend cpu"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(vendor: GpuVendor) -> Gpu {
        Gpu {
            vendor,
            index: 0,
            name: "x".into(),
            memory_total_mib: 8192,
            memory_used_mib: None,
            driver: None,
        }
    }

    #[test]
    fn detection_prefers_the_gpu_the_host_has() {
        let linux = HostTraits {
            x86_64: true,
            ..Default::default()
        };
        assert_eq!(detect(&linux).0, BuildBackend::Cpu);
        let nvidia = HostTraits {
            gpus: vec![gpu(GpuVendor::Nvidia)],
            vulkan: true,
            ..linux.clone()
        };
        assert_eq!(detect(&nvidia).0, BuildBackend::Cuda);
        let amd = HostTraits {
            gpus: vec![gpu(GpuVendor::Amd)],
            ..linux.clone()
        };
        assert_eq!(detect(&amd).0, BuildBackend::Hip);
        let mac = HostTraits {
            macos: true,
            ..Default::default()
        };
        assert_eq!(detect(&mac).0, BuildBackend::Metal);
        let vulkan = HostTraits {
            vulkan: true,
            ..linux
        };
        assert_eq!(detect(&vulkan).0, BuildBackend::Vulkan);
    }

    #[test]
    fn flags_per_backend() {
        let x86 = HostTraits {
            x86_64: true,
            ..Default::default()
        };
        let cpu = cmake_flags(BuildBackend::Cpu, &x86);
        assert!(cpu.contains(&"GGML_NATIVE=OFF".to_string()));
        assert!(cpu.contains(&"GGML_AVX2=ON".to_string()));
        assert!(!cpu.iter().any(|f| f.starts_with("GGML_CUDA")));
        for (backend, flag) in [
            (BuildBackend::Cuda, "GGML_CUDA=ON"),
            (BuildBackend::Hip, "GGML_HIP=ON"),
            (BuildBackend::Vulkan, "GGML_VULKAN=ON"),
        ] {
            let flags = cmake_flags(backend, &x86);
            assert!(flags.contains(&flag.to_string()), "{backend}: {flags:?}");
            assert!(flags.contains(&"GGML_RPC=ON".to_string()));
        }
        let arm_mac = HostTraits {
            macos: true,
            ..Default::default()
        };
        let metal = cmake_flags(BuildBackend::Metal, &arm_mac);
        assert!(metal.contains(&"GGML_METAL=ON".to_string()));
        assert!(
            !metal.iter().any(|f| f.starts_with("GGML_AVX")),
            "no x86 flags on Apple silicon"
        );
        assert!(cmake_flags(BuildBackend::Cpu, &arm_mac).contains(&"GGML_METAL=OFF".to_string()));
    }

    /// scripts/setup builds the tests' llama.cpp with the same flags, so the agents' builds in
    /// the tests are ccache hits. A drift here would make them full compiles (and slow CI).
    #[test]
    fn cpu_flags_match_scripts_setup() {
        let setup = include_str!("../../../scripts/setup");
        let x86 = HostTraits {
            x86_64: true,
            ..Default::default()
        };
        for flag in cmake_flags(BuildBackend::Cpu, &x86) {
            assert!(
                setup.contains(&format!("-D{flag}")),
                "scripts/setup's llama.cpp build lacks -D{flag}"
            );
        }
        assert!(setup.contains("build-tightwad"), "same build folder shape");
    }
}
