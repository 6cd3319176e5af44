//! What the `tightwad` binary's story tests share: the binary, scratch folders with the config
//! files a test writes there ([`Sandbox`]), child processes that die with the test, llama-servers,
//! reading a child's output, a pseudo-terminal.
//!
//! Each story file (`cli/tests/<story>.rs`) is its own test binary and uses part of this.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tightwad");

pub fn var(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!("{name} is not set: eval \"$(scripts/setup)\" first (./scripts/test does)"),
    }
}

pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tightwad-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A test's own folder (emptied when it starts) with a `home` inside for the binary's `HOME`, and
/// the config files the test writes there: the set-up every story begins with.
pub struct Sandbox {
    pub dir: PathBuf,
    pub home: PathBuf,
}

impl Sandbox {
    pub fn new(tag: &str) -> Sandbox {
        let dir = scratch(tag);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).expect("home");
        Sandbox { dir, home }
    }

    /// Writes `text` to the file `name` in the folder; its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("config");
        path
    }

    /// A config file `name` whose coordinator state (keys, tokens) stays in the folder:
    /// `state_dir`, then `body`.
    pub fn config(&self, name: &str, body: &str) -> PathBuf {
        self.write(name, &format!("{}{body}", self.state_dir()))
    }

    /// The `state_dir = …` line of [`Sandbox::config`].
    pub fn state_dir(&self) -> String {
        format!(
            "state_dir = \"{}\"\n",
            self.dir.join("coordinator").display()
        )
    }

    /// The binary in the folder with a clean environment (see [`bare`]).
    pub fn tightwad(&self) -> Command {
        bare(&self.dir, &self.home)
    }

    /// `tightwad -c CONFIG ARGS…` with a clean environment, run to its end.
    pub fn run(&self, config: &Path, args: &[&str]) -> Output {
        self.tightwad()
            .arg("-c")
            .arg(config)
            .args(args)
            .output()
            .expect("tightwad runs")
    }

    /// Removes the folder (a failed test leaves it for a look).
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn wait_healthy(url: &str, child: &mut Running, log: &Path) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "{url} exited early ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(r) = http.get(format!("{url}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} not healthy: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn llama_server(dir: &Path, model: &str, slots: u32, ctx: u32) -> (Running, String) {
    let port = free_port();
    let log = dir.join(format!("llama-{port}.log"));
    let file = std::fs::File::create(&log).expect("log");
    let child = Command::new(var("LLAMA_SERVER"))
        .arg("-m")
        .arg(var("TIGHTWAD_MODELS").join(model))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-np", &slots.to_string(), "-t", "1", "-c", &ctx.to_string()])
        .args(["--kv-unified", "--cache-ram", "0", "--no-webui"])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("llama-server starts");
    let mut running = Running(child);
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url, &mut running, &log).await;
    (running, url)
}

/// Collects a child's stdout in the background.
pub fn collect(mut out: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = sink.lock() {
                t.push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
            }
        }
    });
    text
}

pub fn wait_for(text: &Arc<Mutex<String>>, what: &str, seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let now = text.lock().map(|t| t.clone()).unwrap_or_default();
        if now.contains(what) {
            return now;
        }
        assert!(Instant::now() < deadline, "no {what:?} in:\n{now}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_exit(child: &mut Child, seconds: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(Instant::now() < deadline, "the command did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tightwad ARGS...` inside a pseudo-terminal (stdin and stdout are a tty, as for a person).
pub fn in_pty(args: &[&str]) -> Child {
    let line = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux script runs")
}

/// The binary with a clean environment: no config, target or API key from the caller's shell,
/// `HOME` in `home` so nothing is written outside the test's directory.
pub fn bare(dir: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env("HOME", home);
    for var in [
        "TIGHTWAD_CONFIG",
        "TIGHTWAD_TARGET",
        "TIGHTWAD_DRAFT",
        "TIGHTWAD_LISTEN",
        "TIGHTWAD_API_KEY",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}
