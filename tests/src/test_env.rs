//! Where the real parts are: binaries and models from the environment `eval "$(scripts/setup)"`
//! prepares (`LLAMA_SERVER`, `RPC_SERVER`, `TIGHTWAD_MODELS`, `TIGHTWAD_SMOLLM2`); `./scripts/test`
//! sets them. A missing variable fails the test with a message saying so: a test that cannot run
//! must not pass.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// A variable `eval "$(scripts/setup)"` exports; missing means the test cannot mean anything, so it
/// fails (never passes silently).
pub fn require_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: run the tests through ./scripts/test, or eval \"$(scripts/setup)\" first"
        ),
    }
}

/// The test models folder (`TIGHTWAD_MODELS`).
pub fn models_dir() -> PathBuf {
    PathBuf::from(require_env("TIGHTWAD_MODELS"))
}

/// Where the real parts are.
pub struct TestEnv {
    pub llama_server: PathBuf,
    pub models: PathBuf,
    pub smollm2: Option<PathBuf>,
    pub rpc_server: Option<PathBuf>,
}

pub fn env() -> TestEnv {
    let llama_server = PathBuf::from(require_env("LLAMA_SERVER"));
    let models = models_dir();
    assert!(
        llama_server.exists(),
        "LLAMA_SERVER={} does not exist",
        llama_server.display()
    );
    assert!(
        models.join("target.gguf").exists(),
        "no target.gguf in TIGHTWAD_MODELS={}",
        models.display()
    );
    TestEnv {
        llama_server,
        models,
        smollm2: std::env::var_os("TIGHTWAD_SMOLLM2").map(PathBuf::from),
        rpc_server: std::env::var_os("RPC_SERVER").map(PathBuf::from),
    }
}

/// [`env`], but with the STOCK llama-server of the same source (`LLAMA_SERVER_STOCK`; `scripts/setup`
/// builds both): for the fallbacks a server without Tightwad's patch must take.
pub fn stock_env() -> TestEnv {
    let stock = PathBuf::from(require_env("LLAMA_SERVER_STOCK"));
    assert!(
        stock.exists(),
        "LLAMA_SERVER_STOCK={} does not exist",
        stock.display()
    );
    TestEnv {
        llama_server: stock,
        ..env()
    }
}

impl TestEnv {
    pub fn model(&self, name: &str) -> PathBuf {
        self.models.join(name)
    }

    /// The real SmolLM2 pair: (target F16, draft Q4_1).
    pub fn smollm2(&self) -> (PathBuf, PathBuf) {
        let dir = self
            .smollm2
            .clone()
            .unwrap_or_else(|| panic!("TIGHTWAD_SMOLLM2 is not set: run ./scripts/test"));
        (
            dir.join("smollm2-target.gguf"),
            dir.join("smollm2-draft.gguf"),
        )
    }
}

/// A free TCP port on loopback (bound then released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A two-worker tokio runtime, for tests that drive async fleet code from a plain `#[test]`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A built binary of this workspace: the variable `var` if set, else `name` next to the test
/// binary (target/<profile>/deps/<test> → target/<profile>/<name>), where `scripts/test`'s
/// `cargo build --bins` puts it.
pub fn workspace_binary(name: &str, var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} missing: build it (cargo build --workspace --bins) or set {var}",
        path.display()
    );
    path
}

/// The llama.cpp source scripts/setup built from (the sdist tarball), and an agent.toml `[build]`
/// table that builds it with setup's tools and its ccache ($CACHE/src/<sdist> → $CACHE/ccache),
/// so an agent's `tightwad build` is mostly cache hits.
pub fn llama_build_source() -> (PathBuf, String) {
    let sdist = PathBuf::from(require_env("TIGHTWAD_LLAMA_SOURCE"));
    let tools = require_env("TIGHTWAD_BUILD_TOOLS");
    let ccache = sdist
        .parent()
        .and_then(Path::parent)
        .expect("cache folder")
        .join("ccache");
    let build = format!(
        "[build]\nextra_path = [\"{tools}\"]\njobs = 2\nccache_dir = \"{}\"\n",
        ccache.display(),
    );
    (sdist, build)
}
