//! Real `tightwad-agent` processes in network namespaces, and the coordinator side of a test: a
//! fleet config naming them, join tokens, enrollment. The agent is the BINARY (this crate imports
//! no agent code), found as [`AgentProcess::binary`] says.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tightwad_coordinator::fleet;

use crate::netns::Namespace;
use crate::test_env::{models_dir, require_env, workspace_binary};

/// What to start: an agent in `ns` with its state and models in these folders.
pub struct AgentSpec<'a> {
    pub ns: &'a Namespace,
    pub state_dir: PathBuf,
    pub models: PathBuf,
    /// A join token, for the first start (enrollment).
    pub join: Option<String>,
    /// Extra TOML appended to the generated config (`[[process]]` tables, `[binaries]` when the
    /// agent is started with [`AgentProcess::start_bare`]).
    pub extra_toml: String,
}

impl<'a> AgentSpec<'a> {
    /// An agent with no extra TOML.
    pub fn new(ns: &'a Namespace, state_dir: PathBuf, models: &Path, join: Option<String>) -> Self {
        AgentSpec {
            ns,
            state_dir,
            models: models.to_path_buf(),
            join,
            extra_toml: String::new(),
        }
    }
}

/// A running `tightwad-agent` in a namespace; SIGTERM (then SIGKILL after 10 s) on drop.
pub struct AgentProcess {
    /// The `ip netns exec` child (it execs the agent): a test may take it to kill it elsewhere.
    pub child: Option<Child>,
    pub log: PathBuf,
    /// `IP:7420`, for the coordinator's `[[hosts]]`.
    pub address: String,
    pub state_dir: PathBuf,
    pub models: PathBuf,
    config: PathBuf,
    namespace: String,
}

impl AgentProcess {
    /// The agent binary: `TIGHTWAD_AGENT_BIN`, or the `tightwad-agent` cargo built next to this
    /// test binary (`scripts/test` builds every binary before the tests run).
    pub fn binary() -> PathBuf {
        workspace_binary("tightwad-agent", "TIGHTWAD_AGENT_BIN")
    }

    /// An agent supervising the `LLAMA_SERVER` / `RPC_SERVER` builds (`[binaries]`), with a 30 s
    /// readiness limit and a 3 s stop grace.
    pub fn start(spec: AgentSpec<'_>) -> AgentProcess {
        Self::start_with_binaries(
            spec,
            &require_env("LLAMA_SERVER"),
            &require_env("RPC_SERVER"),
        )
    }

    /// Like [`AgentProcess::start`], with other llama-server / rpc-server executables (e.g.
    /// wrappers that claim another build).
    pub fn start_with_binaries(spec: AgentSpec<'_>, llama: &str, rpc: &str) -> AgentProcess {
        let settings = format!(
            "ready_timeout_s = 30\nstop_grace_s = 3\n[binaries]\nllama_server = \"{llama}\"\nrpc_server = \"{rpc}\"\n"
        );
        Self::start_config(spec, &settings)
    }

    /// An agent with only its name, address and folders configured (plus `extra_toml`): the
    /// agent's own defaults for everything else.
    pub fn start_bare(spec: AgentSpec<'_>) -> AgentProcess {
        Self::start_config(spec, "")
    }

    fn start_config(spec: AgentSpec<'_>, settings: &str) -> AgentProcess {
        let address = format!("{}:7420", spec.ns.ip);
        let config = spec.state_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "name = \"{}\"\nlisten = \"{address}\"\nstate_dir = \"{}\"\nmodel_dirs = [\"{}\"]\n{settings}{}\n",
                spec.ns.name,
                spec.state_dir.display(),
                spec.models.display(),
                spec.extra_toml,
            ),
        )
        .expect("write agent config");
        let mut agent = AgentProcess {
            child: None,
            log: spec.state_dir.with_extension("log"),
            address,
            state_dir: spec.state_dir,
            models: spec.models,
            config,
            namespace: spec.ns.name.clone(),
        };
        agent.spawn(spec.join.as_deref());
        agent
    }

    /// Start the agent and wait until it logs one more "listening" than before.
    fn spawn(&mut self, join: Option<&str>) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let before = self.log_text().matches("listening").count();
        // `ip netns exec` remounts /sys, which hides /sys/fs/cgroup; the agent reads its cgroup's
        // memory limit there (a host made small with `TestCluster::limit_memory`), so mount the
        // host's memory cgroup hierarchy again in the agent's private mount namespace first.
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace, "sh", "-c"])
            .arg(format!("{} exec \"$0\" \"$@\"", mount_cgroups()))
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

    /// SIGTERM, then SIGKILL if it has not exited after 10 s.
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

    /// The agent's config file: the one its refusals tell a user to edit.
    pub fn config(&self) -> &Path {
        &self.config
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
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Shell commands that mount the host's memory cgroup hierarchy at /sys/fs/cgroup (v2), or at
/// /sys/fs/cgroup/memory (v1), as on the host; nothing where the host has neither.
fn mount_cgroups() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").is_file() {
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null;"
    } else if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file() {
        "mount -t tmpfs cgroup /sys/fs/cgroup 2>/dev/null && mkdir -p /sys/fs/cgroup/memory && mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory 2>/dev/null;"
    } else {
        ""
    }
}

static CONFIG_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Writes a coordinator config for `hosts` (name, address) and returns its path.
pub fn coordinator_config(dir: &Path, state_dir: &Path, hosts: &[(&str, &str)]) -> PathBuf {
    let mut text = format!("state_dir = \"{}\"\n", state_dir.display());
    for (name, address) in hosts {
        text.push_str(&format!(
            "[[hosts]]\nname = \"{name}\"\naddress = \"{address}\"\n"
        ));
    }
    let path = dir.join(format!(
        "fleet-{}.toml",
        CONFIG_COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, text).expect("write coordinator config");
    path
}

/// The coordinator's fleet (identity, trust, pending tokens) for a config file.
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

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).expect("open for sha256");
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).expect("read for sha256");
    hex::encode(hasher.finalize())
}
