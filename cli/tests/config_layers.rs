//! How `tightwad proxy` layers its settings (issue 17 item 8), with the real binary: the file,
//! then `TIGHTWAD_*` variables, then flags, each over the one before for the same key; a mistake
//! named where it was made (the file and line, the variable, the flag) even when another layer
//! overrides some other key; and a reload (`tightwad reload`, as SIGHUP) reading the same layers.
//!
//! The pairings' targets are closed ports: the proxy serves at once and probes in the
//! background, and these tests read only its settings (`/v1/models`, `/v1/tightwad/stats`).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{free_port, BIN};

/// `tightwad ARGS` in `dir` with `env` and no other `TIGHTWAD_*` variable of the caller's.
fn tightwad(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TIGHTWAD_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).env("RUST_LOG", "info");
    command
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    tightwad(dir, args, env).output().expect("tightwad runs")
}

/// A proxy process, killed when the test ends however it ends.
struct Proxy {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// `tightwad proxy ARGS` listening on `port` (the layers say so), once `/v1/models` answers.
    async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)], port: u16) -> Proxy {
        let log = dir.join(format!("proxy-{port}.log"));
        let mut command = tightwad(dir, &[&["proxy"], args].concat(), env);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("tightwad proxy starts");
        let mut proxy = Proxy {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/v1/models", proxy.url)).await {
                if r.status().is_success() {
                    return proxy;
                }
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("the proxy exited ({status}):\n{}", proxy.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not answer:\n{}",
                proxy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Value {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .expect("the proxy answers")
            .json()
            .await
            .expect("JSON")
    }

    /// The one pairing's settings as the proxy runs them.
    async fn pairing(&self) -> Value {
        self.get("/v1/tightwad/stats").await["pairings"][0].clone()
    }

    async fn models(&self) -> Vec<String> {
        let v = self.get("/v1/models").await;
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect()
    }
}

fn pairing_file(port: u16, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\n\n[[pairings]]\nname = \"m\"\ntarget = \"http://127.0.0.1:9\"\ndraft = \"http://127.0.0.1:10\"\ndraft_tokens = 2\n{extra}"
    )
}

/// One key (`draft_tokens`) set in every layer: the flag wins over the variable, the variable
/// over the file, and the file's other keys stay. Before, the pairing variables needed `-c`
/// and `--draft-tokens` was the only way over a file.
#[tokio::test(flavor = "multi_thread")]
async fn each_layer_overrides_the_one_below_for_the_same_key() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    std::fs::write(dir.path().join("tightwad.toml"), pairing_file(port, "")).expect("config");

    let proxy = Proxy::start(dir.path(), &[], &[], port).await;
    assert_eq!(proxy.pairing().await["draft_tokens"], 2);
    drop(proxy);

    let env = [("TIGHTWAD_PAIRING_DRAFT_TOKENS", "5")];
    let proxy = Proxy::start(dir.path(), &[], &env, port).await;
    let pairing = proxy.pairing().await;
    assert_eq!(pairing["draft_tokens"], 5, "{pairing}");
    assert_eq!(proxy.models().await, vec!["m".to_string()]);
    drop(proxy);

    let proxy = Proxy::start(
        dir.path(),
        &["--draft-tokens", "7", "--model", "flagged"],
        &env,
        port,
    )
    .await;
    let pairing = proxy.pairing().await;
    assert_eq!(pairing["draft_tokens"], 7, "{pairing}");
    assert_eq!(proxy.models().await, vec!["flagged".to_string()]);

    // A top-level key the same way: the variable moves the listener off the file's port.
    drop(proxy);
    let other = free_port();
    let listen = format!("127.0.0.1:{other}");
    let proxy = Proxy::start(dir.path(), &[], &[("TIGHTWAD_LISTEN", &listen)], other).await;
    assert_eq!(proxy.pairing().await["draft_tokens"], 2);
}

/// A mistake is named where it was made: the file's line even while a variable overrides
/// another key (before, an override lost the line), the variable when the variable is wrong, the
/// flag or the line for a value that cannot run (before, neither), and a pairing setting with
/// nothing to set says how to give a target. Exit code 2 each time.
#[test]
fn a_mistake_is_named_where_it_was_made() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("tightwad.toml"),
        "listen = \"127.0.0.1:1\"\n\n[[pairings]]\ntarget = \"http://127.0.0.1:9\"\ndraft_tokens = \"four\"\n",
    )
    .expect("config");
    let out = run(
        dir.path(),
        &["proxy"],
        &[
            ("TIGHTWAD_MAX_BODY_BYTES", "2048"),
            ("TIGHTWAD_PAIRING_DRAFT", "http://127.0.0.1:10"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tightwad.toml, line 5: pairings[0].draft_tokens"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("tightwad.toml"),
        "[[pairings]]\ntarget = \"http://127.0.0.1:9\"\n",
    )
    .expect("config");
    let out = run(
        dir.path(),
        &["proxy"],
        &[("TIGHTWAD_PAIRING_DRAFT_TOKENS", "many")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TIGHTWAD_PAIRING_DRAFT_TOKENS: pairings[0].draft_tokens")
            && !stderr.contains("line"),
        "{stderr}"
    );

    // A value of the right type that cannot run: named where it was set as well.
    let out = run(dir.path(), &["proxy", "--draft-tokens", "12"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--draft-tokens: pairing 0: draft_tokens must be between 1 and 8"),
        "{stderr}"
    );
    std::fs::write(
        dir.path().join("tightwad.toml"),
        "[[pairings]]\ntarget = \"http://127.0.0.1:9\"\ndraft_tokens = 12\n",
    )
    .expect("config");
    let out = run(dir.path(), &["proxy"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tightwad.toml, line 3: pairing 0: draft_tokens must be between 1 and 8"),
        "{stderr}"
    );

    let empty = tempfile::tempdir().expect("dir");
    let out = run(
        empty.path(),
        &["proxy", "--draft-tokens", "3"],
        &[("TIGHTWAD_PAIRING_ADAPTIVE", "false")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TIGHTWAD_PAIRING_ADAPTIVE, --draft-tokens need a target")
            && stderr.contains("--target"),
        "{stderr}"
    );
}

/// `tightwad reload` (what SIGHUP does) reads the same three layers: the proxy's variable still
/// sets its key over the edited file, and a mistake in the edited file is refused with its line.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_reads_the_same_layers_and_names_the_line() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let file = dir.path().join("tightwad.toml");
    std::fs::write(&file, pairing_file(port, "")).expect("config");
    let env = [("TIGHTWAD_PAIRING_DRAFT_TOKENS", "5")];
    let proxy = Proxy::start(dir.path(), &[], &env, port).await;
    assert_eq!(proxy.pairing().await["draft_tokens"], 5);

    std::fs::write(&file, pairing_file(port, "aliases = [\"gpt-4o\"]\n")).expect("config");
    let out = run(dir.path(), &["reload", "--proxy", &proxy.url], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(proxy.models().await.contains(&"gpt-4o".to_string()));
    assert_eq!(
        proxy.pairing().await["draft_tokens"],
        5,
        "the variable still acts"
    );

    std::fs::write(&file, pairing_file(port, "adaptive = \"sometimes\"\n")).expect("config");
    let out = run(dir.path(), &["reload", "--proxy", &proxy.url], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("tightwad.toml, line 8: pairings[0].adaptive"),
        "{stderr}"
    );
    assert!(proxy.models().await.contains(&"gpt-4o".to_string()));
}
