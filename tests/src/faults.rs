//! Fault injection with real processes: llama-servers in their own network namespaces behind veth
//! links, so a test can cut a link (`ip link set … down`) the way a pulled cable or a dead switch
//! port looks to the proxy: no RST, no FIN, just silence. Killing a process (the other fault the
//! suite already covers) closes its sockets at once, which is the easy case.
//!
//! Also: the proxy's footprint (open file descriptors, live tokio tasks) before and after a fault,
//! to show a fault leaves nothing behind, and a small streaming client for load tests.
//!
//! Namespaces need root (CI and these machines run the tests as root).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{LlamaServer, ServerOptions, TestEnv};

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
        panic!("{e} (the fault tests need root and iproute2)");
    }
}

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bridge in the root namespace (where the proxy runs) with a /24 of its own, and namespaces
/// hanging off it by veth pairs. Everything is removed on drop, also when the test panics.
pub struct Lab {
    id: String,
    bridge: String,
    subnet: (u8, u8),
    namespaces: Vec<String>,
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
        // 10.(230..250).x.0/24: away from the agent tests' 10.100..227 range, moved on if a
        // parallel test already routes it.
        let mut subnet = (230 + (tag % 20) as u8, ((tag >> 5) % 256) as u8);
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
        let bridge = format!("tfb{id}");
        let lab = Lab {
            id,
            bridge: bridge.clone(),
            subnet,
            namespaces: Vec::new(),
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

    /// The root namespace's (the proxy's) address on the bridge.
    pub fn root_ip(&self) -> String {
        format!("10.{}.{}.1", self.subnet.0, self.subnet.1)
    }

    pub fn add_namespace(&mut self) -> Namespace {
        let index = self.namespaces.len() + 2;
        let name = format!("tf{}n{index}", self.id);
        let veth = format!("tfv{}{index}", self.id);
        let peer = format!("tfp{}{index}", self.id);
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

/// The port llama-servers listen on inside their namespaces (each namespace has its own ports).
pub const NAMESPACE_PORT: u16 = 8080;

impl LlamaServer {
    /// Start a llama-server inside `ns`, listening on the namespace's address, with the same flags
    /// as [`LlamaServer::start`]. `ip netns exec` execs the server, so killing the child kills it.
    pub async fn start_in_namespace(
        env: &TestEnv,
        ns: &Namespace,
        model: &Path,
        opts: ServerOptions,
    ) -> LlamaServer {
        let port = NAMESPACE_PORT;
        let log = std::env::temp_dir().join(format!("tightwad-test-llama-{}.log", ns.name));
        let log_file = std::fs::File::create(&log).expect("create server log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(&env.llama_server)
            .args(opts.llama_server_args(model, &ns.ip, port))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start llama-server in {}: {e}", ns.name));
        let mut server = LlamaServer {
            child,
            url: format!("http://{}:{port}", ns.ip),
            port,
            log,
        };
        server.wait_ready(Duration::from_secs(90)).await;
        server
    }
}

/// What the proxy holds: open file descriptors of this process (sockets included) and live
/// tasks of the tokio runtime it runs on. The in-process proxy shares both with the test, so
/// take the baseline with the test's own clients dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub open_fds: usize,
    pub alive_tasks: usize,
}

impl Footprint {
    pub fn now() -> Footprint {
        Footprint {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0),
            alive_tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        }
    }

    /// Wait (up to `settle`) until the footprint is back to `baseline` (plus `slack` descriptors:
    /// a pooled keep-alive connection the proxy re-opened is not a leak), and return the last
    /// measurement either way; the caller asserts.
    pub async fn settle_to(baseline: Footprint, slack: usize, settle: Duration) -> Footprint {
        let deadline = Instant::now() + settle;
        loop {
            let now = Footprint::now();
            let back = now.open_fds <= baseline.open_fds + slack
                && now.alive_tasks <= baseline.alive_tasks;
            if back || Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/PID/status`; `None` if it is gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A streamed response read as it arrives: the raw text so far and its `data:` payloads.
pub struct SseRead {
    pub response: reqwest::Response,
    pub body: String,
}

impl SseRead {
    pub async fn open(client: &reqwest::Client, url: &str, request: &Value) -> SseRead {
        let response = client
            .post(url)
            .json(request)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(response.status(), 200, "stream refused");
        SseRead {
            response,
            body: String::new(),
        }
    }

    /// Read until at least `count` events have arrived (panics if the stream ends first).
    pub async fn read_events(&mut self, count: usize) {
        while self.events().len() < count {
            let chunk = self
                .response
                .chunk()
                .await
                .expect("stream readable")
                .unwrap_or_else(|| panic!("stream ended after: {}", self.body));
            self.body.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Read to the end; `Err` with what arrived if that takes longer than `limit` (a hang).
    pub async fn read_to_end(&mut self, limit: Duration) -> Result<(), String> {
        let finished = tokio::time::timeout(limit, async {
            while let Ok(Some(chunk)) = self.response.chunk().await {
                self.body.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await;
        finished.map_err(|_| format!("no end after {limit:?}; so far: {}", self.body))
    }

    /// The `data:` payloads of the complete events so far.
    pub fn events(&self) -> Vec<String> {
        sse_payloads(&self.body)
    }
}

/// The `data:` payloads of an SSE body's complete events (`[DONE]` included).
pub fn sse_payloads(body: &str) -> Vec<String> {
    let complete = match body.rfind("\n\n") {
        Some(end) => &body[..end],
        None => return vec![],
    };
    complete
        .split("\n\n")
        .filter_map(|e| {
            let data: Vec<&str> = e
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The token ids of a streamed response (`return_token_ids: true`: the final chunk carries them).
pub fn streamed_token_ids(events: &[String]) -> Option<Vec<u64>> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c["choices"][0]["token_ids"].as_array().cloned())
        .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
}

/// The `tightwad` object of a streamed response (on its final chunk).
pub fn streamed_tightwad(events: &[String]) -> Option<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c.get("tightwad").cloned())
}

/// A scratch directory removed on drop (the tests crate has no `tempfile`).
pub struct ScratchDir {
    pub path: std::path::PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> ScratchDir {
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "tightwad-faults-{label}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir { path }
    }

    /// A fresh sub-directory.
    pub fn dir(&self, name: &str) -> std::path::PathBuf {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A real `tightwad-agent` in a namespace, killed (SIGKILL) on drop.
///
/// The binary is `TIGHTWAD_AGENT_BIN`, or the `tightwad-agent` cargo built next to this test
/// binary (`cargo nextest run --workspace` and `cargo build -p tightwad-agent` put it there).
pub struct AgentProcess {
    child: Option<std::process::Child>,
    pub log: std::path::PathBuf,
    config: std::path::PathBuf,
    namespace: String,
    /// `IP:7420`, for the coordinator's `[[hosts]]`.
    pub address: String,
}

impl AgentProcess {
    pub fn binary() -> std::path::PathBuf {
        if let Some(path) = std::env::var_os("TIGHTWAD_AGENT_BIN") {
            return path.into();
        }
        let exe = std::env::current_exe().expect("test binary path");
        // target/<profile>/deps/<test> → target/<profile>/tightwad-agent
        let path = exe
            .parent()
            .and_then(Path::parent)
            .map(|dir| dir.join("tightwad-agent"))
            .expect("target directory");
        assert!(
            path.exists(),
            "{} missing: build it (cargo build -p tightwad-agent) or set TIGHTWAD_AGENT_BIN",
            path.display()
        );
        path
    }

    /// Write the agent's config (its state and models under the given folders) and start it.
    pub fn start(
        ns: &Namespace,
        state_dir: &Path,
        models: &Path,
        join: Option<&str>,
    ) -> AgentProcess {
        Self::start_with(ns, state_dir, models, join, "")
    }

    /// [`AgentProcess::start`] with more of the agent's config (`[binaries]`, `[[process]]`
    /// tables) appended.
    pub fn start_with(
        ns: &Namespace,
        state_dir: &Path,
        models: &Path,
        join: Option<&str>,
        extra_toml: &str,
    ) -> AgentProcess {
        let address = format!("{}:7420", ns.ip);
        let config = state_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "name = \"{}\"\nlisten = \"{address}\"\nstate_dir = \"{}\"\nmodel_dirs = [\"{}\"]\n{extra_toml}\n",
                ns.name,
                state_dir.display(),
                models.display()
            ),
        )
        .expect("write agent config");
        let mut agent = AgentProcess {
            child: None,
            log: state_dir.with_extension("log"),
            config,
            namespace: ns.name.clone(),
            address,
        };
        agent.spawn(join);
        agent
    }

    fn spawn(&mut self, join: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let before = std::fs::read_to_string(&self.log)
            .map(|t| t.matches("listening").count())
            .unwrap_or(0);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(Self::binary())
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(token) = join {
            command.args(["--join", token]);
        }
        self.child = Some(command.spawn().expect("spawn tightwad-agent"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log_text().matches("listening").count() <= before {
            assert!(
                Instant::now() < deadline,
                "the agent never listened:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start it again with the same config and state (identity, pinned peers, partial files).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(None);
    }

    /// SIGKILL: a crash or a power cut, no clean-up of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// sha256 of a file, hex (through coreutils' `sha256sum`).
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
