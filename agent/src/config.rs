//! `agent.toml`: everything has a default, so `tightwad-agent` runs without a config file; each
//! key can also be set by a `TIGHTWAD_AGENT_<KEY>` variable or (some) by a flag ([`layers`]).
//! `tightwad-agent --print-schema` prints its JSON Schema (shipped as
//! `dist/schema/agent.schema.json`); old key spellings are still read, with a warning naming the
//! file, the line and the new key ([`old_spellings`]).

use schemars::JsonSchema;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tightwad_protocol::messages::ProcessKind;

pub mod layers;
pub use layers::AgentFlags;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(title = "agent.toml", extend("$id" = "https://tightwad.dev/schema/agent.schema.json"))]
pub struct AgentConfig {
    /// Name reported to the coordinator (default: the host name).
    pub name: String,
    /// UDP address the QUIC endpoint listens on.
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Identity, trust list, logs (default `~/.tightwad/agent`).
    pub state_dir: PathBuf,
    /// Folders holding model files; only files inside them are listed, sent or received
    /// (default `~/models` and `~/.tightwad/models`).
    pub model_dirs: Vec<PathBuf>,
    /// Where received models go (default: the first model folder).
    pub receive_dir: Option<PathBuf>,
    pub binaries: Binaries,
    /// Seconds a process may take to answer its health check.
    #[serde(alias = "ready_timeout_secs")]
    pub ready_timeout_s: u64,
    /// Seconds between SIGTERM and SIGKILL.
    #[serde(alias = "stop_grace_secs")]
    pub stop_grace_s: u64,
    /// The processes this agent may run (`[[process]]` tables).
    #[serde(rename = "process")]
    pub processes: Vec<ProcessConfig>,
    /// FOR TESTS ONLY: report these memory sizes instead of measuring the host, so a test can
    /// make a model "too large" without a machine that small. Never set it in production.
    pub testing_reported_memory: Option<TestingReportedMemory>,
    /// FOR TESTS ONLY: speak another peer protocol version, to play an agent of another
    /// Tightwad release. Never set it in production.
    pub testing_protocol: Option<TestingProtocol>,
    /// Drop a llama-server's model file from the page cache once it is ready: `auto` (when the
    /// file is at least a quarter of RAM), `on` or `off`. See `reclaim`.
    pub page_cache_reclaim: crate::reclaim::ReclaimMode,
    /// `tightwad build`: tools, caches and the smoke test.
    pub build: BuildConfig,
    /// Announce this agent on the LAN over mDNS (`discovery = true`, or a `[discovery]` table
    /// with `interfaces`); off by default. See `discovery`.
    #[schemars(with = "crate::discovery::DiscoverySetting")]
    pub discovery: crate::discovery::DiscoveryConfig,
    /// `[peer]`: which flags and model paths the coordinator may pass, and whether it may run
    /// `tightwad build` here. See `peer_policy`.
    pub peer: crate::peer_policy::PeerPolicy,
    /// The build `tightwad build` made current: its binaries replace `[binaries]` for
    /// llama-server and rpc-server. Shared by every clone of the config; not read from the file.
    #[serde(skip)]
    pub active_build: ActiveBuild,
}

/// `[build]` in agent.toml.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BuildConfig {
    /// Folders put in front of PATH for the build (where cmake, ninja, ccache, git live).
    pub extra_path: Vec<PathBuf>,
    /// Parallel compile jobs (default: the CPU count).
    pub jobs: Option<u32>,
    /// ccache's folder; ccache is used when it is on PATH (default `~/.cache/tightwad/ccache`).
    pub ccache_dir: PathBuf,
    /// Model for the smoke test (default: the smallest GGUF in the model folders).
    pub smoke_model: Option<PathBuf>,
    /// Seconds the whole compile may take.
    #[serde(alias = "timeout_secs")]
    pub timeout_s: u64,
    /// Extra cmake `-D` flags for every build on this host (e.g. `CMAKE_CUDA_ARCHITECTURES=86`).
    pub cmake_flags: Vec<String>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            extra_path: Vec::new(),
            jobs: None,
            ccache_dir: home_dir().join(".cache").join("tightwad").join("ccache"),
            smoke_model: None,
            timeout_s: 3 * 3600,
            cmake_flags: Vec::new(),
        }
    }
}

/// The bin folder of the current `tightwad build` build, shared between the supervisor, the
/// inventory and the builder (which switches it).
#[derive(Debug, Clone, Default)]
pub struct ActiveBuild(std::sync::Arc<std::sync::RwLock<Option<PathBuf>>>);

impl ActiveBuild {
    pub fn set(&self, bin_dir: Option<PathBuf>) {
        match self.0.write() {
            Ok(mut slot) => *slot = bin_dir,
            Err(poisoned) => *poisoned.into_inner() = bin_dir,
        }
    }

    pub fn bin_dir(&self) -> Option<PathBuf> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current build's executable for `kind`, when a build is current and has it.
    pub fn binary(&self, kind: ProcessKind) -> Option<PathBuf> {
        let dir = self.bin_dir()?;
        let name = match kind {
            ProcessKind::LlamaServer => "llama-server",
            ProcessKind::RpcServer => "ggml-rpc-server",
            ProcessKind::Vllm => return None,
        };
        Some(dir.join(name)).filter(|p| p.is_file())
    }
}

/// The peer protocol version an agent claims instead of its own (tests of `tightwad doctor`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestingProtocol {
    pub version: u32,
}

/// Memory the agent reports instead of the host's own (tests of `tightwad doctor`'s memory check).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TestingReportedMemory {
    pub ram_total_bytes: Option<u64>,
    pub ram_available_bytes: Option<u64>,
    /// One simulated GPU per entry, with this much memory (MiB).
    pub gpu_memory_mib: Vec<u64>,
}

/// Which executables to run; only these are ever started (a peer cannot name a binary).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Binaries {
    pub llama_server: Option<PathBuf>,
    pub rpc_server: Option<PathBuf>,
    pub vllm: Option<PathBuf>,
}

/// One `[[process]]`: a server this agent may start, stop and watch.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    /// The name the coordinator uses for it (`tightwad agent start HOST NAME`).
    pub name: String,
    /// `llama-server`, `rpc-server` or `vllm`.
    pub kind: ProcessKind,
    /// Its command-line arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Port of the health check; taken from `--port`/`-p` in the arguments when absent.
    pub port: Option<u16>,
    /// Host of the health check (default 127.0.0.1).
    pub health_host: Option<String>,
    /// Start it when the agent starts.
    #[serde(default)]
    pub autostart: bool,
    /// Seconds it may take to answer its health check (default: the agent's `ready_timeout_s`).
    #[serde(alias = "ready_timeout_secs")]
    pub ready_timeout_s: Option<u64>,
    /// Restart after a crash (default true).
    pub restart: Option<bool>,
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

impl Default for AgentConfig {
    fn default() -> Self {
        let home = home_dir();
        AgentConfig {
            name: hostname(),
            listen: SocketAddr::from(([0, 0, 0, 0], tightwad_protocol::DEFAULT_AGENT_PORT)),
            state_dir: home.join(".tightwad").join("agent"),
            model_dirs: vec![home.join("models"), home.join(".tightwad").join("models")],
            receive_dir: None,
            binaries: Binaries::default(),
            ready_timeout_s: 120,
            stop_grace_s: 10,
            processes: Vec::new(),
            testing_reported_memory: None,
            testing_protocol: None,
            page_cache_reclaim: Default::default(),
            build: BuildConfig::default(),
            discovery: Default::default(),
            peer: Default::default(),
            active_build: ActiveBuild::default(),
        }
    }
}

pub fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|| "agent".into())
}

/// Expands a leading `~/`.
pub fn expand_home(path: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home_dir().join(rest),
        Err(_) => path.to_path_buf(),
    }
}

/// Keys renamed to the one spelling of a timeout (`*_timeout_s`, `*_s`): (old, new).
const OLD_KEYS: &[(&str, &str)] = &[
    ("ready_timeout_secs", "ready_timeout_s"),
    ("stop_grace_secs", "stop_grace_s"),
    ("timeout_secs", "timeout_s"),
];

/// One warning per old key spelling in `text`: `FILE:LINE: … write NEW instead`.
pub fn old_spellings(path: &Path, text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let key = line.split_once('=')?.0.trim().trim_matches('"');
            let (old, new) = OLD_KEYS.iter().find(|(old, _)| *old == key)?;
            Some(format!(
                "{}:{}: `{old}` is deprecated; use `{new}`",
                path.display(),
                n + 1
            ))
        })
        .collect()
}

/// The JSON Schema of agent.toml, pretty, with a final newline (the shipped file's bytes). The
/// defaults that depend on the machine (host name, home folder) are left out, so every machine
/// prints the same schema; the descriptions say what they are.
pub fn schema_json() -> String {
    let mut schema = serde_json::to_value(schemars::schema_for!(AgentConfig)).unwrap_or_default();
    for key in ["name", "state_dir", "model_dirs", "build"] {
        if let Some(p) = schema["properties"][key].as_object_mut() {
            p.remove("default");
        }
    }
    if let Some(p) = schema["$defs"]["BuildConfig"]["properties"]["ccache_dir"].as_object_mut() {
        p.remove("default");
    }
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

impl AgentConfig {
    /// The file (if any) and the `TIGHTWAD_AGENT_*` variables, as the agent reads them.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self::load_with_warnings(path)?.0)
    }

    /// The file (if any) and the variables, with the warnings about the file's old spellings
    /// (logged by the binary); what a SIGHUP re-reads.
    pub fn load_with_warnings(path: Option<&Path>) -> anyhow::Result<(Self, Vec<String>)> {
        Self::load_layered(path, &AgentFlags::default())
    }

    /// All the layers ([`layers`]): the file, the variables, then `flags`.
    pub fn load_layered(
        path: Option<&Path>,
        flags: &AgentFlags,
    ) -> anyhow::Result<(Self, Vec<String>)> {
        let (mut config, warnings) = layers::read(path, flags)?;
        config.state_dir = expand_home(&config.state_dir);
        config.model_dirs = config.model_dirs.iter().map(|d| expand_home(d)).collect();
        config.receive_dir = config.receive_dir.as_deref().map(expand_home);
        config.build.ccache_dir = expand_home(&config.build.ccache_dir);
        config.build.extra_path = config
            .build
            .extra_path
            .iter()
            .map(|d| expand_home(d))
            .collect();
        config.build.smoke_model = config.build.smoke_model.as_deref().map(expand_home);
        let mut seen = std::collections::HashSet::new();
        for process in &config.processes {
            anyhow::ensure!(
                seen.insert(process.name.clone()),
                "process {:?} is configured twice",
                process.name
            );
        }
        Ok((config, warnings))
    }

    /// The executable for a process kind: the current `tightwad build` build's, else
    /// configured, else found on PATH.
    pub fn binary_for(&self, kind: ProcessKind) -> Option<PathBuf> {
        if let Some(built) = self.active_build.binary(kind) {
            return Some(built);
        }
        self.configured_binary(kind)
    }

    /// The executable `[binaries]` (or PATH) names, ignoring `tightwad build`'s builds.
    pub fn configured_binary(&self, kind: ProcessKind) -> Option<PathBuf> {
        let (configured, names): (&Option<PathBuf>, &[&str]) = match kind {
            ProcessKind::LlamaServer => (&self.binaries.llama_server, &["llama-server"]),
            ProcessKind::RpcServer => (
                &self.binaries.rpc_server,
                &["ggml-rpc-server", "rpc-server"],
            ),
            ProcessKind::Vllm => (&self.binaries.vllm, &["vllm"]),
        };
        if let Some(path) = configured {
            return Some(expand_home(path));
        }
        let path_var = std::env::var_os("PATH")?;
        std::env::split_paths(&path_var)
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .find(|candidate| candidate.is_file())
    }

    pub fn receive_dir(&self) -> Option<PathBuf> {
        self.receive_dir
            .clone()
            .or_else(|| self.model_dirs.first().cloned())
    }
}

/// The port a process listens on, from its arguments (`--port N`, `--port=N`, `-p N`).
pub fn port_from_args(args: &[String]) -> Option<u16> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some(value) = arg.strip_prefix("--port=") {
            return value.parse().ok();
        }
        if arg == "--port" || arg == "-p" {
            return iter.next().and_then(|v| v.parse().ok());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let config: AgentConfig = toml::from_str(
            r#"
            name = "gpu-box"
            listen = "10.0.0.2:7420"
            model_dirs = ["/models"]
            [binaries]
            llama_server = "/opt/llama-server"
            [[process]]
            name = "target"
            kind = "llama-server"
            args = ["-m", "/models/t.gguf", "--port", "8080"]
            "#,
        )
        .expect("config");
        assert_eq!(config.processes[0].kind, ProcessKind::LlamaServer);
        assert_eq!(port_from_args(&config.processes[0].args), Some(8080));
        assert!(toml::from_str::<AgentConfig>("bogus = 1").is_err());
    }

    /// `*_secs` keys are still read, and each is warned about with its file, line and the new key
    /// (one spelling of a timeout: `*_s`, like the proxy's `target_timeout_s`).
    #[test]
    fn old_timeout_spellings_are_read_and_warned_about() {
        layers::jailed(|_| old_timeout_spellings());
    }

    fn old_timeout_spellings() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "ready_timeout_secs = 7\nstop_grace_secs = 2\n[build]\ntimeout_secs = 60\n[[process]]\nname = \"t\"\nkind = \"llama-server\"\nready_timeout_secs = 9\n",
        )
        .expect("write");
        let (config, warnings) = AgentConfig::load_with_warnings(Some(&path)).expect("loads");
        assert_eq!((config.ready_timeout_s, config.stop_grace_s), (7, 2));
        assert_eq!(config.build.timeout_s, 60);
        assert_eq!(config.processes[0].ready_timeout_s, Some(9));
        let all = warnings.join("\n");
        for needle in [
            "agent.toml:1: `ready_timeout_secs` is deprecated; use `ready_timeout_s`",
            "agent.toml:2: `stop_grace_secs` is deprecated; use `stop_grace_s`",
            "agent.toml:4: `timeout_secs` is deprecated; use `timeout_s`",
            "agent.toml:8: `ready_timeout_secs`",
        ] {
            assert!(all.contains(needle), "{needle:?} in {all}");
        }
    }

    #[test]
    fn example_config_parses() {
        let config: AgentConfig =
            toml::from_str(include_str!("../agent.example.toml")).expect("example config");
        assert_eq!(config.processes.len(), 2);
        assert_eq!(config.processes[1].kind, ProcessKind::RpcServer);
    }
}
