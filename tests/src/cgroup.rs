//! A memory-limited cgroup around a test's agent: a host "too small for its model" made for
//! real, as systemd's `MemoryMax=` or a container limit makes one, instead of a setting in the
//! agent's config. The agent and every server it starts (children inherit the cgroup) can
//! allocate only that much; the agent reports the limit as its RAM.
//!
//! cgroup v2 (`memory.max`, a child of the mount's root, where the memory controller is
//! enabled) or v1's memory controller (`memory.limit_in_bytes`, a child of this test's own
//! memory cgroup). Needs root, as the namespace tests do.

use std::path::{Path, PathBuf};

/// A cgroup with a memory limit, removed on drop (its processes moved back to its parent).
pub struct MemoryCgroup {
    pub dir: PathBuf,
}

impl MemoryCgroup {
    /// A new cgroup named `name` (unique per test process) limited to `limit_bytes`.
    pub fn create(name: &str, limit_bytes: u64) -> MemoryCgroup {
        let (parent, limit_file) = memory_parent();
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("{name}-{}-{n}", std::process::id()));
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating the cgroup {}: {e}", dir.display()));
        std::fs::write(dir.join(limit_file), limit_bytes.to_string())
            .unwrap_or_else(|e| panic!("setting {limit_file} of {}: {e}", dir.display()));
        MemoryCgroup { dir }
    }

    /// Moves a running process (and so its future children) into this cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        if let Some(parent) = self.dir.parent() {
            for pid in procs.lines() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Where to create a memory cgroup, and the name of its limit file.
fn memory_parent() -> (PathBuf, &'static str) {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
    if std::fs::read_to_string(v2).is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
        return (PathBuf::from("/sys/fs/cgroup"), "memory.max");
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    assert!(
        v1.join("memory.limit_in_bytes").is_file(),
        "no cgroup memory controller at /sys/fs/cgroup (v2) or /sys/fs/cgroup/memory (v1): this test needs one (run as root)"
    );
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.trim_start_matches('/').to_string())
        })
        .unwrap_or_default();
    let parent = v1.join(own);
    let parent = if parent.is_dir() {
        parent
    } else {
        v1.to_path_buf()
    };
    (parent, "memory.limit_in_bytes")
}
