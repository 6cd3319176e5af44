//! Network namespaces on a bridge: each "host" of a multi-host test gets its own namespace behind a
//! veth pair, and the root namespace (where the test, the proxy and the coordinator run) sits on
//! the bridge. A test can cut a link (`ip link set … down`) the way a pulled cable or a dead switch
//! port looks to its peer: no RST, no FIN, just silence. Killing a process (the other fault the
//! suite covers) closes its sockets at once, which is the easy case.
//!
//! Namespaces need root and iproute2 (CI and these machines run the tests as root).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Run a command; `Err` with its stderr when it fails.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(cmd: &str, args: &[&str]) {
    if let Err(e) = run(cmd, args) {
        panic!("{e} (network-namespace tests need root and iproute2)");
    }
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bridge in the root namespace with a /24 of its own, namespaces hanging off it by veth pairs,
/// and a temporary folder for the test's files. Everything is removed on drop, also when the test
/// panics (whatever still runs in a namespace is killed first).
pub struct Lab {
    pub id: String,
    bridge: String,
    subnet: (u8, u8),
    namespaces: Vec<String>,
    /// The test's scratch folder (state directories, model folders, configs).
    pub dir: tempfile::TempDir,
}

/// One network namespace on a [`Lab`]'s bridge.
pub struct Namespace {
    pub name: String,
    /// Root-side end of its veth pair: set it down to cut the namespace off.
    pub veth: String,
    pub ip: String,
}

impl Lab {
    pub fn new() -> Lab {
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = (std::process::id().wrapping_mul(7919) ^ n.wrapping_mul(104729)) % 0xfffff;
        let id = format!("{tag:05x}");
        // 10.(100..250).x.0/24, moved on if a parallel test already routes it.
        let mut subnet = (100 + (tag % 150) as u8, ((tag >> 7) % 256) as u8);
        for _ in 0..256 {
            let routes = Command::new("ip")
                .args([
                    "-4",
                    "route",
                    "show",
                    &format!("10.{}.{}.0/24", subnet.0, subnet.1),
                ])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            if routes.is_empty() {
                break;
            }
            subnet.1 = subnet.1.wrapping_add(1);
        }
        let bridge = format!("twb{id}");
        let lab = Lab {
            id,
            bridge: bridge.clone(),
            subnet,
            namespaces: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        must("ip", &["link", "add", &bridge, "type", "bridge"]);
        must(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", lab.root_ip()),
                "dev",
                &bridge,
            ],
        );
        must("ip", &["link", "set", &bridge, "up"]);
        lab
    }

    /// The root namespace's (the proxy's, the coordinator's) address on the bridge.
    pub fn root_ip(&self) -> String {
        format!("10.{}.{}.1", self.subnet.0, self.subnet.1)
    }

    pub fn add_namespace(&mut self) -> Namespace {
        let index = self.namespaces.len() + 2;
        let name = format!("tw{}n{index}", self.id);
        let veth = format!("tv{}{index}", self.id);
        let peer = format!("tp{}{index}", self.id);
        let ip = format!("10.{}.{}.{index}", self.subnet.0, self.subnet.1);
        must("ip", &["netns", "add", &name]);
        self.namespaces.push(name.clone());
        must(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        );
        must("ip", &["link", "set", &peer, "netns", &name]);
        must("ip", &["link", "set", &veth, "master", &self.bridge]);
        must("ip", &["link", "set", &veth, "up"]);
        must("ip", &["-n", &name, "link", "set", "lo", "up"]);
        must(
            "ip",
            &[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &peer,
            ],
        );
        must("ip", &["-n", &name, "link", "set", &peer, "up"]);
        must(
            "ip",
            &[
                "-n",
                &name,
                "route",
                "add",
                "default",
                "via",
                &self.root_ip(),
            ],
        );
        Namespace { name, veth, ip }
    }

    /// Cut (`up = false`) or restore the namespace's link. Packets are dropped silently while it is
    /// down; established TCP connections survive a restore, as with a real cable.
    pub fn set_link(&self, ns: &Namespace, up: bool) {
        must(
            "ip",
            &["link", "set", &ns.veth, if up { "up" } else { "down" }],
        );
    }

    /// A fresh directory inside the lab's temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Whatever still runs in the namespace (a server a test leaked) goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}
