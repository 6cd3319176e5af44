//! The memory limit of the cgroup this agent runs in (and so every server it starts: children
//! inherit it). An agent under systemd's `MemoryMax=`, in a container, or in any memory-limited
//! cgroup can use only that much, whatever the host has: the inventory reports the smaller of the
//! two, so `tightwad doctor` and the placement planner judge a model against what the agent's
//! servers can really allocate.
//!
//! Both hierarchies are read: cgroup v2 (`memory.max`, `memory.current`) and v1's memory
//! controller (`memory.limit_in_bytes`, `memory.usage_in_bytes`). The limit that binds is the
//! smallest along the path from the agent's cgroup up to the root of the mount.

use std::path::{Path, PathBuf};

/// A memory limit found above this process, and what its cgroup uses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The smallest limit along the cgroup path.
    pub limit_bytes: u64,
    /// Memory charged to the agent's own cgroup that cannot simply be dropped (usage less the
    /// inactive page cache, which the kernel reclaims before it fails an allocation).
    pub used_bytes: u64,
}

impl MemoryLimit {
    pub fn available_bytes(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.used_bytes)
    }
}

/// The memory limit of this process's cgroup, if any (none: not in a limited cgroup, or no
/// cgroup filesystem to read).
pub fn memory_limit() -> Option<MemoryLimit> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<MemoryLimit> = Vec::new();
    for (hierarchy, path) in memory_cgroups(&cgroups) {
        let Some((mount, root)) = mount_point(&mountinfo, hierarchy) else {
            continue;
        };
        let files = hierarchy.files();
        // In a cgroup namespace the mount shows a subtree (`root`) that the path already names.
        let relative = path.strip_prefix(root.as_str()).unwrap_or(path);
        let own = mount.join(relative.trim_start_matches('/'));
        let Some(limit_bytes) = smallest_limit(&mount, &own, files.limit) else {
            continue;
        };
        let usage = read_number(&own.join(files.usage)).unwrap_or(0);
        let inactive = std::fs::read_to_string(own.join("memory.stat"))
            .ok()
            .and_then(|stat| stat_value(&stat, files.inactive_file))
            .unwrap_or(0);
        found.push(MemoryLimit {
            limit_bytes,
            used_bytes: usage.saturating_sub(inactive),
        });
    }
    found.into_iter().min_by_key(|m| m.available_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hierarchy {
    V1,
    V2,
}

struct Files {
    limit: &'static str,
    usage: &'static str,
    inactive_file: &'static str,
}

impl Hierarchy {
    fn files(self) -> Files {
        match self {
            Hierarchy::V1 => Files {
                limit: "memory.limit_in_bytes",
                usage: "memory.usage_in_bytes",
                inactive_file: "total_inactive_file",
            },
            Hierarchy::V2 => Files {
                limit: "memory.max",
                usage: "memory.current",
                inactive_file: "inactive_file",
            },
        }
    }
}

/// The (hierarchy, path) of each memory cgroup in `/proc/self/cgroup`: `0::/path` (v2) and
/// `N:...memory...:/path` (v1).
fn memory_cgroups(text: &str) -> Vec<(Hierarchy, &str)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            if id == "0" && controllers.is_empty() {
                Some((Hierarchy::V2, path))
            } else if controllers.split(',').any(|c| c == "memory") {
                Some((Hierarchy::V1, path))
            } else {
                None
            }
        })
        .collect()
}

/// Where the hierarchy is mounted and which of its cgroups is the mount's root, from
/// `/proc/self/mountinfo` (fields: … root at 4, mount point at 5, then `-`, the filesystem type
/// and the super options).
fn mount_point(mountinfo: &str, hierarchy: Hierarchy) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut fields = before.split_whitespace();
        let root = fields.nth(3)?;
        let mount = fields.next()?;
        let mut after = after.split_whitespace();
        let fstype = after.next()?;
        let options = after.nth(1).unwrap_or("");
        let matches = match hierarchy {
            Hierarchy::V2 => fstype == "cgroup2",
            Hierarchy::V1 => fstype == "cgroup" && options.split(',').any(|o| o == "memory"),
        };
        let root = if root == "/" { "" } else { root };
        matches.then(|| (PathBuf::from(mount), root.to_string()))
    })
}

/// The smallest limit in `file` from `own` up to `mount` (`max` and v1's "no limit", a number
/// near 2^63, count as none).
fn smallest_limit(mount: &Path, own: &Path, file: &str) -> Option<u64> {
    const NO_LIMIT_V1: u64 = 1 << 62;
    let mut smallest: Option<u64> = None;
    let mut dir = Some(own);
    while let Some(current) = dir {
        if !current.starts_with(mount) {
            break;
        }
        if let Some(limit) = read_number(&current.join(file)).filter(|l| *l < NO_LIMIT_V1) {
            smallest = Some(smallest.map_or(limit, |s: u64| s.min(limit)));
        }
        dir = current.parent();
    }
    smallest
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_cgroup_of_either_hierarchy() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n3:cpu,cpuacct:/\n0::/user.slice/agent.service\n";
        assert_eq!(
            memory_cgroups(text),
            vec![
                (Hierarchy::V1, "/process_api/abc"),
                (Hierarchy::V2, "/user.slice/agent.service")
            ]
        );
    }

    #[test]
    fn finds_the_mount_of_each_hierarchy() {
        let mountinfo =
            "30 25 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                         31 25 0:28 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                         32 25 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(
            mount_point(mountinfo, Hierarchy::V1),
            Some((PathBuf::from("/sys/fs/cgroup/memory"), String::new()))
        );
        assert_eq!(
            mount_point(mountinfo, Hierarchy::V2),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), String::new()))
        );
    }

    #[test]
    fn the_smallest_limit_on_the_path_binds() {
        let root = tempfile::tempdir().expect("tmp");
        let parent = root.path().join("system.slice");
        let own = parent.join("agent.service");
        std::fs::create_dir_all(&own).expect("dirs");
        std::fs::write(root.path().join("memory.max"), "max\n").expect("root");
        std::fs::write(parent.join("memory.max"), "1073741824\n").expect("parent");
        std::fs::write(own.join("memory.max"), "max\n").expect("own");
        assert_eq!(
            smallest_limit(root.path(), &own, "memory.max"),
            Some(1 << 30)
        );
        std::fs::write(own.join("memory.max"), "67108864\n").expect("own");
        assert_eq!(
            smallest_limit(root.path(), &own, "memory.max"),
            Some(64 << 20)
        );
        std::fs::write(own.join("memory.max"), "9223372036854771712\n").expect("v1 none");
        std::fs::write(parent.join("memory.max"), "max\n").expect("parent");
        assert_eq!(smallest_limit(root.path(), &own, "memory.max"), None);
    }

    #[test]
    fn inactive_page_cache_does_not_count_as_used() {
        let stat = "cache 100\ninactive_file 4096\nactive_file 10\n";
        assert_eq!(stat_value(stat, "inactive_file"), Some(4096));
        assert_eq!(stat_value(stat, "total_inactive_file"), None);
    }
}
