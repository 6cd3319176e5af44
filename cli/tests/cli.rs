//! The `tightwad` binary as a person uses it: `init --from` a Python Tightwad config, `chat`
//! through a real pseudo-terminal (util-linux `script`) against a real proxy process and real
//! llama-servers, `logs proxy` showing and following the proxy's own log, `token --json`.
//!
//! Binaries and models come from `eval "$(scripts/setup)"` (LLAMA_SERVER, TIGHTWAD_MODELS); a
//! missing variable fails the test, never skips it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_tightwad");

// More of this binary's tests, in cli/tests/cli/ (not test targets of their own).
#[path = "cli/defaults.rs"]
mod defaults;
#[path = "cli/spellings.rs"]
mod spellings;

fn var(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => panic!("{name} is not set: eval \"$(scripts/setup)\" first (./scripts/test does)"),
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tightwad-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_healthy(url: &str, child: &mut Running, log: &Path) {
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

async fn llama_server(dir: &Path, model: &str, slots: u32, ctx: u32) -> (Running, String) {
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
fn collect(mut out: impl Read + Send + 'static) -> Arc<Mutex<String>> {
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

fn wait_for(text: &Arc<Mutex<String>>, what: &str, seconds: u64) -> String {
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

fn wait_exit(child: &mut Child, seconds: u64) -> std::process::ExitStatus {
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
fn in_pty(args: &[&str]) -> Child {
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

const QUESTION: &str = "Write a short poem about the sea.";

#[tokio::test(flavor = "multi_thread")]
async fn chat_in_a_terminal_shows_the_targets_reply_and_the_speculation_figures() {
    let dir = scratch("chat");
    let (_target, target_url) = llama_server(&dir, "target.gguf", 6, 16384).await;
    let (_draft, draft_url) = llama_server(&dir, "draft.gguf", 1, 4096).await;
    let proxy_port = free_port();
    let config = dir.join("tightwad.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{proxy_port}\"\nstate_dir = \"{}\"\n\n[[pairings]]\nname = \"sea\"\ntarget = \"{target_url}\"\ndraft = \"{draft_url}\"\ndraft_tokens = 4\nadaptive = false\n",
            dir.join("coordinator").display()
        ),
    )
    .expect("config");
    let config_arg = config.to_string_lossy().to_string();
    let proxy_log = dir.join("proxy.log");
    let mut proxy = Running(
        Command::new(BIN)
            .args(["-c", &config_arg, "proxy"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&proxy_log).expect("log"))
            .spawn()
            .expect("proxy starts"),
    );
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    wait_healthy(&proxy_url, &mut proxy, &proxy_log).await;

    // What the target alone says: the reply chat must show, through the proxy and directly.
    let expected: Value = reqwest::Client::new()
        .post(format!("{target_url}/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24, "temperature": 0}))
        .send()
        .await
        .expect("target answers")
        .json()
        .await
        .expect("json");
    let expected = expected["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .trim()
        .to_string();
    assert!(!expected.is_empty());

    // Through the proxy; `/exit` leaves.
    let mut chat = in_pty(&["-c", &config_arg, "chat", "--max-tokens", "24"]);
    let output = collect(chat.stdout.take().expect("stdout"));
    let mut input = chat.stdin.take().expect("stdin");
    wait_for(&output, "> ", 30);
    writeln!(input, "{QUESTION}").expect("type");
    let shown = wait_for(&output, "tokens/round", 180);
    writeln!(input, "/exit").expect("type");
    let status = wait_exit(&mut chat, 30);
    eprintln!("{shown}");
    assert!(status.success(), "{status}: {shown}");
    assert!(
        shown.contains(&expected),
        "expected {expected:?} in:\n{shown}"
    );
    let figures = shown
        .lines()
        .find(|l| l.contains("tokens/round"))
        .expect("figures line");
    let number_before = |word: &str| -> u64 {
        let at = figures
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {figures}"));
        figures[..at]
            .trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {word} in {figures}"))
    };
    assert!(number_before(" rounds") > 0, "{figures}");
    assert!(number_before(" drafted") > 0, "{figures}");
    assert!(number_before(" tokens,") > 0, "{figures}");
    assert!(figures.contains("tok/s"), "{figures}");

    // Straight to the target; end of input (Ctrl-D) leaves.
    let mut direct = in_pty(&["-c", &config_arg, "chat", "--direct", "--max-tokens", "24"]);
    let output = collect(direct.stdout.take().expect("stdout"));
    let mut input = direct.stdin.take().expect("stdin");
    wait_for(&output, "> ", 30);
    writeln!(input, "{QUESTION}").expect("type");
    let shown = wait_for(&output, "direct, no speculation", 180);
    drop(input);
    let status = wait_exit(&mut direct, 30);
    assert!(status.success(), "{status}: {shown}");
    assert!(
        shown.contains(&expected),
        "expected {expected:?} in:\n{shown}"
    );

    // The proxy's own log, as JSON lines: the chat's generation is there.
    let logs = Command::new(BIN)
        .args(["-c", &config_arg, "logs", "proxy", "--json", "-n", "2000"])
        .output()
        .expect("logs runs");
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["line"].as_str().is_some_and(|t| t.contains("rounds="))),
        "{lines:?}"
    );

    // Followed live: a request made after `logs proxy -f -n 0` started shows up in it, and
    // nothing logged before it started does. Nothing tells when its first poll has marked where
    // the log stood (a request before that is history, rightly not shown), so the request is
    // repeated until one shows up.
    let history_seq = lines
        .iter()
        .filter_map(|l| l["seq"].as_u64())
        .max()
        .expect("the log so far has lines");
    let mut follow = Running(
        Command::new(BIN)
            .args([
                "-c",
                &config_arg,
                "logs",
                "proxy",
                "-f",
                "-n",
                "0",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("logs -f runs"),
    );
    let followed = collect(follow.0.stdout.take().expect("stdout"));
    let shown = |what: &str| followed.lock().map(|t| t.contains(what)).unwrap_or(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shown("rounds=") {
        assert!(Instant::now() < deadline, "no request showed up in logs -f");
        let status = reqwest::Client::new()
            .post(format!("{proxy_url}/v1/completions"))
            .json(&json!({"model": "sea", "prompt": "The sea", "max_tokens": 8}))
            .send()
            .await
            .expect("proxy answers")
            .status();
        assert!(status.is_success());
        // `-f` polls every second: a request after its first poll shows up within about that.
        let shown_by = Instant::now() + Duration::from_secs(5);
        while !shown("rounds=") && Instant::now() < shown_by {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let followed_text = followed.lock().map(|t| t.clone()).unwrap_or_default();
    // Whole lines only (the last may still be being written).
    let whole = &followed_text[..followed_text.rfind('\n').map_or(0, |i| i + 1)];
    let followed_lines: Vec<Value> = whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        followed_lines
            .iter()
            .all(|l| l["seq"].as_u64() > Some(history_seq)),
        "-n 0 printed history (lines up to seq {history_seq}): {followed_lines:?}"
    );
    assert!(
        follow.0.try_wait().ok().flatten().is_none(),
        "-f keeps running"
    );

    // bench: per-prompt progress lines on stderr (a pipe, so no bar), the table on stdout, the
    // JSON report in the --out file; with `--json` alone the report is stdout and stderr stays
    // quiet. The old `--json FILE` still writes the file, and says to write `--json --out FILE`.
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "The sea is\nOnce upon a time\n").expect("prompts");
    let bench = |output: &[&str]| {
        let out = Command::new(BIN)
            .args([
                "bench",
                "--proxy",
                &proxy_url,
                "--target",
                &target_url,
                "--model",
                "sea",
            ])
            .args(["--max-tokens", "8", "--warmup", "0"])
            .args(output)
            .arg("--prompts")
            .arg(&prompts)
            .output()
            .expect("bench runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let report_file = dir.join("bench.json");
    let report_path = report_file.to_string_lossy().to_string();
    let table = bench(&["--json", "--out", &report_path]);
    let progress = String::from_utf8_lossy(&table.stderr);
    assert!(
        progress.contains(": 1/2") && progress.contains(": 2/2"),
        "{progress}"
    );
    assert!(!progress.contains("warning"), "{progress}");
    assert!(String::from_utf8_lossy(&table.stdout).contains("speedup"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("JSON");
    assert_eq!(report["prompts"].as_array().map(Vec::len), Some(2));
    let piped = bench(&["--json"]);
    let report: Value = serde_json::from_slice(&piped.stdout).expect("bench --json prints JSON");
    assert_eq!(report["prompts"].as_array().map(Vec::len), Some(2));
    let quiet = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !quiet.contains("1/2") && !quiet.contains("2/2") && !quiet.contains("warning: `"),
        "no progress with --json: {quiet}"
    );
    std::fs::remove_file(&report_file).expect("remove the report");
    let old = bench(&["--json", &report_path]);
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: `tightwad bench --json {report_path}` is deprecated; use `--json --out {report_path}`"
        )),
        "{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("JSON");
    assert_eq!(report["prompts"].as_array().map(Vec::len), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The predecessor's `configs/cluster.yaml` shape: a coordinator with local GPUs, two workers,
/// models, binaries, and a proxy in front (keys from its config.py).
const CLUSTER_YAML: &str = r#"
coordinator:
  host: 0.0.0.0
  port: 8080
  backend: hip
  gpus:
    - name: "7900 XTX"
      vram_gb: 24
  extra_args: ["--no-mmap"]
workers:
  - host: 192.168.1.20
    ssh_user: me
    model_dir: /srv/models
    gpus:
      - name: "RTX 4070 Ti Super"
        vram_gb: 16
        rpc_port: 50052
  - host: 192.168.1.30
    peer_port: 9191
    gpus:
      - {name: "RTX 3060", vram_gb: 12, rpc_port: 50052}
      - {name: "RTX 2070", vram_gb: 8, rpc_port: 50053}
models:
  qwen3-32b:
    path: /models/Qwen3-32B-Q4_K_M.gguf
    ctx_size: 8192
    predict: 4096
    flash_attn: true
    default: true
  llama-70b:
    path: /models/Llama-3.3-70B-Q4_K_M.gguf
binaries:
  coordinator: llama-server
  rpc_server: rpc-server
ram_reclaim: auto
proxy:
  host: 0.0.0.0
  port: 8088
  max_draft_tokens: 32
  fallback_on_draft_failure: true
  auth_token: sk-secret
  max_tokens_limit: 8192
  max_body_size: 10MB
  draft:
    url: http://192.168.1.50:8081
    model_name: qwen3-0.6b
    backend: llamacpp
  target:
    url: http://192.168.1.10:8080
    model_name: Qwen3 32B
    backend: llamacpp
"#;

/// The proxy-only shape (its docs' "speculative proxy" example), with drafters, consensus and
/// the parts Tightwad deliberately has no counterpart for.
const PROXY_YAML: &str = r#"
proxy:
  port: 9000
  max_draft_tokens: auto
  consensus_mode: majority
  chat_template: chatml
  allow_private_upstream: true
  fallback_on_draft_failure: false
  draft:
    url: http://10.0.0.3:11434
    model_name: qwen3:0.6b
    backend: ollama
  drafters:
    - {url: "http://10.0.0.4:8081", model_name: small-a, backend: llamacpp}
    - {url: "http://10.0.0.5:8081", model_name: small-b, backend: llamacpp}
  target:
    url: http://10.0.0.2:8080/
    model_name: big
    backend: llamacpp
peer:
  port: 9191
  auth_token: peer-secret
quality_gate:
  verifier: {url: "http://10.0.0.2:8080", model_name: big, backend: llamacpp}
  agents: [{url: "http://10.0.0.3:11434", model_name: small}]
"#;

fn convert(dir: &Path, name: &str, yaml: &str) -> (Value, PathBuf) {
    let from = dir.join(format!("{name}.yaml"));
    std::fs::write(&from, yaml).expect("yaml");
    let out = dir.join(format!("{name}.toml"));
    let run = Command::new(BIN)
        .arg("-c")
        .arg(&out)
        .args(["init", "--json", "--from"])
        .arg(&from)
        .output()
        .expect("init runs");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).expect("init --json prints JSON");
    (report, out)
}

fn not_carried(report: &Value) -> Vec<String> {
    report["not_carried"]
        .as_array()
        .expect("not_carried list")
        .iter()
        .map(|n| {
            assert!(
                n["reason"].as_str().is_some_and(|r| r.len() > 10),
                "every key gets a reason: {n}"
            );
            n["key"].as_str().expect("key").to_string()
        })
        .collect()
}

#[test]
fn init_from_converts_python_configs_into_configs_every_loader_accepts() {
    let dir = scratch("init-from");

    let (report, out) = convert(&dir, "cluster", CLUSTER_YAML);
    let config = tightwad_serve::config::ProxyConfig::load(&out).expect("the proxy loads it");
    config.validate().expect("valid");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8088");
    assert_eq!(config.api_keys, vec!["sk-secret".to_string()]);
    assert_eq!(config.max_tokens_limit, Some(8192));
    assert_eq!(config.max_body_bytes, 10 << 20);
    let p = &config.pairings[0];
    assert_eq!(p.name.as_deref(), Some("Qwen3-32B"));
    assert_eq!(p.target, "http://192.168.1.10:8080");
    assert_eq!(p.draft.as_deref(), Some("http://192.168.1.50:8081"));
    assert_eq!(p.draft_tokens, 8);
    let fleet =
        tightwad_coordinator::fleet::FleetConfig::load(&out).expect("the fleet commands load it");
    let hosts: Vec<(&str, &str)> = fleet
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.address.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            ("coordinator", "127.0.0.1:7420"),
            ("192.168.1.20", "192.168.1.20:7420"),
            ("192.168.1.30", "192.168.1.30:7420")
        ]
    );
    let layout =
        tightwad_coordinator::cluster::layout::Layout::load(&out).expect("up/doctor load it");
    assert_eq!(layout.pools.len(), 1);
    assert_eq!(layout.pools[0].name, "qwen3-32b");
    assert_eq!(layout.pools[0].workers.len(), 3, "one rpc-server per GPU");
    assert_eq!(report["pools"], json!(["qwen3-32b"]));
    assert_eq!(report["hosts"].as_array().map(Vec::len), Some(3));
    let skipped = not_carried(&report);
    for key in [
        "proxy.max_draft_tokens",
        "ram_reclaim",
        "binaries.coordinator",
        "workers[0].ssh_user",
        "workers[1].peer_port",
        "coordinator.backend",
        "models.llama-70b",
    ] {
        assert!(
            skipped.iter().any(|k| k == key),
            "{key} not reported: {skipped:?}"
        );
    }
    assert!(!skipped
        .iter()
        .any(|k| k.starts_with("proxy.target") || k == "proxy.draft"));
    let text = std::fs::read_to_string(&out).expect("written");
    assert!(
        text.contains("\"-m\", \"/models/Qwen3-32B-Q4_K_M.gguf\"")
            && text.contains("\"--no-mmap\""),
        "the coordinator's agent process is written out:\n{text}"
    );

    let (report, out) = convert(&dir, "proxy", PROXY_YAML);
    let config = tightwad_serve::config::ProxyConfig::load(&out).expect("the proxy loads it");
    config.validate().expect("valid");
    assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
    let p = &config.pairings[0];
    assert_eq!(p.target, "http://10.0.0.2:8080");
    assert_eq!(
        p.draft.as_deref(),
        Some("http://10.0.0.4:8081"),
        "an Ollama draft is replaced by the first llama.cpp drafter"
    );
    assert_eq!(
        p.drafts,
        ["http://10.0.0.5:8081"],
        "the other drafters are carried over: the pairing measures them and drafts with the best"
    );
    // The predecessor listened on the LAN without a token: the converted config carries a key.
    assert_eq!(config.api_keys.len(), 1, "a network listen without a key");
    assert_eq!(
        report["api_key"].as_str(),
        Some(config.api_keys[0].as_str())
    );
    let skipped = not_carried(&report);
    assert!(
        !skipped.iter().any(|k| k.starts_with("proxy.drafters")),
        "drafters are carried, not dropped: {skipped:?}"
    );
    for key in [
        "proxy.draft.backend",
        "proxy.consensus_mode",
        "proxy.chat_template",
        "proxy.allow_private_upstream",
        "proxy.fallback_on_draft_failure",
        "peer",
        "quality_gate",
    ] {
        assert!(
            skipped.iter().any(|k| k == key),
            "{key} not reported: {skipped:?}"
        );
    }

    // Never over an existing file without --force; bad YAML is an error that writes nothing.
    let again = Command::new(BIN)
        .arg("-c")
        .arg(&out)
        .args(["init", "--from"])
        .arg(dir.join("cluster.yaml"))
        .output()
        .expect("init runs");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(
        tightwad_serve::config::ProxyConfig::load(&out)
            .expect("unchanged")
            .listen
            .to_string(),
        "0.0.0.0:9000"
    );
    std::fs::write(dir.join("bad.yaml"), "proxy: [unclosed").expect("yaml");
    let bad = Command::new(BIN)
        .arg("-c")
        .arg(dir.join("bad.toml"))
        .args(["init", "--from"])
        .arg(dir.join("bad.yaml"))
        .output()
        .expect("init runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a valid YAML config"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(!dir.join("bad.toml").exists());

    // `token --json` from the converted config (its own state dir).
    let tokened = dir.join("token.toml");
    std::fs::write(
        &tokened,
        format!("state_dir = \"{}\"\n", dir.join("coordinator").display()),
    )
    .expect("config");
    let token = Command::new(BIN)
        .arg("-c")
        .arg(&tokened)
        .args(["token", "--ttl", "60", "--json"])
        .output()
        .expect("token runs");
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token: Value = serde_json::from_slice(&token.stdout).expect("JSON");
    assert_eq!(token["ttl_s"], 60);
    assert!(token["command"]
        .as_str()
        .is_some_and(|c| c.starts_with("tightwad-agent --join ")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tightwad proxy` with its target down, stderr piped: it answers at once (before: silent for
/// 10 s while it probed), the warning names the cause at the URL and the fix, the log has no
/// colour codes, and `--log-format json` writes one JSON object a line.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_with_its_target_down_serves_at_once_and_says_why_in_plain_logs() {
    let dir = scratch("down");
    for json in [false, true] {
        let port = free_port();
        let dead = format!("http://127.0.0.1:{}", free_port());
        let mut args = vec![
            "proxy".to_string(),
            "--target".into(),
            dead.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if json {
            args.extend(["--log-format".into(), "json".into()]);
        }
        let log = dir.join(format!("proxy-{json}.log"));
        let started = Instant::now();
        let _proxy = Running(
            Command::new(BIN)
                .args(&args)
                .current_dir(&dir)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("proxy starts"),
        );
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}");
        loop {
            if let Ok(r) = http.get(format!("{url}/live")).send().await {
                assert_eq!(r.status(), 200);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the proxy did not answer within 3 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = http
            .get(format!("{url}/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(r.status(), 503);
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("connection refused") || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            text.contains(&format!("connection refused at {dead}"))
                && text.contains("llama-server"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in a piped log: {text:?}"
        );
        if json {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            }
        }
    }
}

/// The agent takes `--log-format json` too.
#[test]
fn the_agent_logs_json_lines_when_asked() {
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join("debug/tightwad-agent");
    let agent = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("debug/tightwad-agent"))
        .filter(|p| p.exists())
        .unwrap_or(agent);
    assert!(agent.exists(), "build the agent first: {}", agent.display());
    let dir = scratch("agent-json");
    let port = free_port();
    let mut child = Command::new(&agent)
        .args([
            "--state-dir",
            &dir.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent starts");
    let err = collect(child.stderr.take().expect("stderr"));
    let text = wait_for(&err, "\"level\"", 20);
    let _ = child.kill();
    let _ = child.wait();
    // Whole lines only (the last may still be being written).
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let lines: Vec<&str> = whole.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "{text}");
    for line in lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

/// The binary with a clean environment: no config, target or API key from the caller's shell,
/// `HOME` in `home` so nothing is written outside the test's directory.
fn bare(dir: &Path, home: &Path) -> Command {
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

/// `tightwad proxy` reads `./tightwad.toml` like every other command (before: "no target
/// configured"); without a file, the proxy and the fleet commands say which file they looked for,
/// exit 2, and create no coordinator keys.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_reads_tightwad_toml_and_commands_without_one_say_where_they_looked() {
    let dir = scratch("cwdconfig");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let port = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("tightwad.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\n\n[[pairings]]\nname = \"m\"\ntarget = \"{dead}\"\n"
        ),
    )
    .expect("config");
    let log = dir.join("proxy.log");
    let mut proxy = Running(
        bare(&dir, &home)
            .arg("proxy")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("proxy starts"),
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/live"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break;
        }
        if let Ok(Some(status)) = proxy.0.try_wait() {
            panic!(
                "the proxy exited ({status}) instead of reading ./tightwad.toml: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the proxy did not listen on the file's address: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let models: Value = http
        .get(format!("http://127.0.0.1:{port}/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("JSON");
    assert_eq!(models["data"][0]["id"], "m", "{models}");
    drop(proxy);

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("empty dir");
    for args in [
        &["proxy"][..],
        &["status"],
        &["doctor"],
        &["models", "list"],
    ] {
        let out = bare(&empty, &home).args(args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("looked for tightwad.toml")
                && stderr.contains(&empty.join("tightwad.toml").display().to_string()),
            "{args:?} does not say which file it looked for: {stderr}"
        );
        assert!(
            !home.join(".tightwad").exists(),
            "{args:?} created coordinator state without a config file"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Errors name each cause once (before: `cannot read nope.toml: No such file or directory (os
/// error 2): No such file or directory (os error 2)`), show a non-GGUF file's first bytes as text
/// (before: `magic [108, 105, 115, 116]`), exit 2, and the exit codes are in `--help`.
#[test]
fn errors_print_each_cause_once_and_exit_codes_are_documented() {
    let dir = scratch("errors");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("home");

    let out = bare(&dir, &home)
        .args(["-c", "nope.toml", "proxy"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read nope.toml"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is printed more than once: {stderr}"
    );

    std::fs::write(dir.join("list.txt"), "listen = 1\nmore text here\n").expect("file");
    let out = bare(&dir, &home)
        .args(["inspect", "list.txt"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not a GGUF file (starts with \"list\")") && !stderr.contains("[108"),
        "{stderr}"
    );

    let help = bare(&dir, &home).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes:")
            && help.contains("0  ok")
            && help.contains("1  a check failed")
            && help.contains("2  usage or configuration error"),
        "{help}"
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    assert!(
        readme.contains("**Exit codes**")
            && readme.contains("| 1 | a check failed")
            && readme.contains("| 2 | usage or configuration error"),
        "the README does not document the exit codes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tightwad doctor` fails (exit 1, `ok: false`) when a configured target does not answer
/// (before: a warning, "live checks skipped", exit 0), and the hint for an agent that does not
/// answer names the UDP port and the host each in its place (before: "check that UDP 127.0.0.1
/// reaches it").
#[test]
fn doctor_fails_on_a_target_or_agent_that_does_not_answer() {
    let dir = scratch("doctordown");
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let state = format!("state_dir = \"{}\"\n", dir.join("coordinator").display());

    let dead = format!("http://127.0.0.1:{}", free_port());
    let pairing = dir.join("pairing.toml");
    std::fs::write(
        &pairing,
        format!("{state}\n[[pairings]]\nname = \"m\"\ntarget = \"{dead}\"\n"),
    )
    .expect("config");
    let out = bare(&dir, &home)
        .arg("-c")
        .arg(&pairing)
        .args(["doctor", "--json"])
        .output()
        .expect("doctor runs");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    let target = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| {
            c["category"] == "network" && c["subject"].as_str().is_some_and(|s| s.contains(&dead))
        })
        .unwrap_or_else(|| panic!("no network check for the target: {report:#}"));
    assert_eq!(target["status"], "fail", "{target:#}");

    // An agent that does not answer: a pending join token so the doctor tries to connect.
    let port = free_port();
    let hosts = dir.join("hosts.toml");
    std::fs::write(
        &hosts,
        format!("{state}\n[[hosts]]\nname = \"gpu-box\"\naddress = \"127.0.0.1:{port}\"\n"),
    )
    .expect("config");
    let token = bare(&dir, &home)
        .arg("-c")
        .arg(&hosts)
        .args(["token", "--json"])
        .output()
        .expect("token runs");
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let out = bare(&dir, &home)
        .arg("-c")
        .arg(&hosts)
        .args(["doctor", "--json"])
        .output()
        .expect("doctor runs");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let host = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["category"] == "host" && c["subject"] == "gpu-box")
        .unwrap_or_else(|| panic!("no host check: {report:#}"));
    assert_eq!(host["status"], "fail", "{host:#}");
    let hint = host["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!("UDP port {port} on 127.0.0.1")),
        "the hint does not put the port and the host in their places: {hint}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
