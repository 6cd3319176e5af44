//! Test harness: real `tightwad-agent` processes in their own network namespaces, joined by a
//! bridge in the root namespace where the test itself plays the coordinator (through the same
//! fleet code the `tightwad` CLI runs).
#![allow(dead_code)]

pub use tightwad_coordinator::fleet;

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A variable `eval "$(scripts/setup)"` exports; missing means the test cannot mean anything,
/// so it fails (never passes silently).
pub fn require_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run `eval \"$(scripts/setup)\"` first (it builds llama.cpp and the test models)"
        ),
    }
}

pub fn models_dir() -> PathBuf {
    PathBuf::from(require_env("TIGHTWAD_MODELS"))
}

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
        panic!("{e}");
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bridge with a /24 of its own and any number of namespaces on it; all removed on drop
/// (also when the test panics).
pub struct Lab {
    pub id: String,
    bridge: String,
    subnet: (u8, u8),
    namespaces: Vec<String>,
    pub dir: tempfile::TempDir,
}

pub struct Namespace {
    pub name: String,
    /// Root-side end of its veth pair (set it down to cut the link).
    pub veth: String,
    pub ip: String,
}

impl Lab {
    pub fn new() -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = (pid.wrapping_mul(7919).wrapping_add(n * 104729)) % 0xfffff;
        let id = format!("{tag:05x}");
        // 10.(100..227).(0..255).0/24, moved on if already routed by a parallel test.
        let mut subnet = (100 + (tag % 128) as u8, ((tag >> 7) % 256) as u8);
        for _ in 0..64 {
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
                &format!("10.{}.{}.1/24", subnet.0, subnet.1),
                "dev",
                &bridge,
            ],
        );
        must("ip", &["link", "set", &bridge, "up"]);
        lab
    }

    /// The coordinator's address on the bridge.
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

    pub fn set_link(&self, ns: &Namespace, up: bool) {
        must(
            "ip",
            &["link", "set", &ns.veth, if up { "up" } else { "down" }],
        );
    }

    /// A fresh directory inside the lab's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Kill whatever is left in the namespace, then remove it (its veth goes with it).
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

/// A running `tightwad-agent` in a namespace; SIGTERM (then SIGKILL) on drop.
pub struct AgentProcess {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub address: String,
    pub state_dir: PathBuf,
    pub models: PathBuf,
}

pub struct AgentSpec<'a> {
    pub ns: &'a Namespace,
    pub state_dir: PathBuf,
    pub models: PathBuf,
    pub join: Option<String>,
    /// Extra TOML appended to the generated config (`[[process]]` tables).
    pub extra_toml: String,
}

impl AgentProcess {
    pub fn start(spec: AgentSpec<'_>) -> AgentProcess {
        Self::start_with_binaries(
            spec,
            &require_env("LLAMA_SERVER"),
            &require_env("RPC_SERVER"),
        )
    }

    /// Like `start`, with other llama-server / rpc-server executables (e.g. wrappers that claim
    /// another build).
    pub fn start_with_binaries(spec: AgentSpec<'_>, llama: &str, rpc: &str) -> AgentProcess {
        let address = format!("{}:7420", spec.ns.ip);
        let config = spec.state_dir.with_extension("toml");
        let toml = format!(
            "name = \"{name}\"\nlisten = \"{address}\"\nstate_dir = \"{state}\"\nmodel_dirs = [\"{models}\"]\nready_timeout_secs = 30\nstop_grace_secs = 3\n[binaries]\nllama_server = \"{llama}\"\nrpc_server = \"{rpc}\"\n{extra}\n",
            name = spec.ns.name,
            state = spec.state_dir.display(),
            models = spec.models.display(),
            llama = llama,
            rpc = rpc,
            extra = spec.extra_toml,
        );
        std::fs::write(&config, toml).expect("write agent config");
        let log = spec.state_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log");
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                &spec.ns.name,
                env!("CARGO_BIN_EXE_tightwad-agent"),
                "--config",
            ])
            .arg(&config)
            .env("RUST_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        if let Some(token) = &spec.join {
            command.args(["--join", token]);
        }
        let child = command.spawn().expect("spawn tightwad-agent");
        let agent = AgentProcess {
            child: Some(child),
            log,
            address,
            state_dir: spec.state_dir,
            models: spec.models,
        };
        agent.wait_for_log("listening", Duration::from_secs(20));
        agent
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent's log contains `needle`; panics with the log otherwise.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agent log never showed {needle:?}:\n{}", self.log_text());
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a coordinator config for `hosts` and returns its path.
pub fn coordinator_config(dir: &Path, state_dir: &Path, hosts: &[(&str, &str)]) -> PathBuf {
    let mut text = format!("state_dir = \"{}\"\n", state_dir.display());
    for (name, address) in hosts {
        text.push_str(&format!(
            "[[hosts]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    let path = dir.join(format!(
        "fleet-{}.toml",
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).expect("write coordinator config");
    path
}

pub fn fleet_for(config: &Path) -> fleet::Fleet {
    fleet::Fleet::open(fleet::FleetConfig::load(config).expect("fleet config")).expect("open fleet")
}

/// Issues a join token in the coordinator's state dir.
pub fn issue_token(fleet: &fleet::Fleet) -> String {
    fleet
        .pending
        .issue(fleet.identity.fingerprint(), 600)
        .expect("issue token")
        .to_string()
}

/// Copies model files from `TIGHTWAD_MODELS` into `dir` (hard links when possible: fast, and the
/// agent under test never writes to them).
pub fn stock_models(dir: &Path, names: &[&str]) {
    std::fs::create_dir_all(dir).expect("models dir");
    for name in names {
        let src = models_dir().join(name);
        assert!(
            src.is_file(),
            "{} missing: rerun scripts/setup",
            src.display()
        );
        let dst = dir.join(name);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).expect("copy model");
        }
    }
}

pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read");
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
