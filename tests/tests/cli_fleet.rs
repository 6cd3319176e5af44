//! The `tightwad` binary against real agents in network namespaces, the way scripts use it:
//! `status --json`, `agent start/stop`, `logs NAME` finding the host itself, and `models copy`,
//! `agent start` and `up` with plain progress lines on a pipe and nothing but JSON with `--json`.
//!
//! The binary is `TIGHTWAD_BIN`, or the `tightwad` cargo built next to this test binary
//! (`scripts/test` builds every binary first: `cargo build --workspace --bins`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tightwad_coordinator::fleet;
use tightwad_e2e::agents::{sha256_file, AgentProcess, AgentSpec};
use tightwad_e2e::cluster::llama_args;
use tightwad_e2e::netns::Lab;
use tightwad_e2e::test_env::{require_env, workspace_binary};

fn tightwad_bin() -> PathBuf {
    workspace_binary("tightwad", "TIGHTWAD_BIN")
}

fn tightwad(config: &Path, args: &[&str]) -> Output {
    let out = Command::new(tightwad_bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("tightwad runs");
    assert!(
        out.status.success(),
        "tightwad {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn fleet_commands_report_json_find_hosts_and_show_copy_progress() {
    let models = PathBuf::from(require_env("TIGHTWAD_MODELS"));
    let mut lab = Lab::new();
    let ns_a = lab.add_namespace();
    let ns_b = lab.add_namespace();
    let models_a = lab.path("models-a");
    let models_b = lab.path("models-b");
    let file = "draft.gguf";
    if std::fs::hard_link(models.join(file), models_a.join(file)).is_err() {
        std::fs::copy(models.join(file), models_a.join(file)).expect("stock alpha");
    }
    let config = lab.dir.path().join("tightwad.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[hosts]]\nname = \"alpha\"\naddress = \"{}:7420\"\n[[hosts]]\nname = \"beta\"\naddress = \"{}:7420\"\n[[pools]]\nname = \"small\"\ncoordinator = \"alpha/server\"\nworkers = [\"beta/rpc\"]\n",
            lab.path("coordinator").display(),
            ns_a.ip,
            ns_b.ip
        ),
    )
    .expect("config");
    let token = || {
        let out = tightwad(&config, &["token", "--ttl", "600", "--json"]);
        json(&out)["token"].as_str().expect("token").to_string()
    };
    let worker = format!(
        "[binaries]\nrpc_server = \"{}\"\n[[process]]\nname = \"rpc\"\nkind = \"rpc-server\"\nargs = [\"-H\", \"0.0.0.0\", \"-p\", \"50052\"]\n",
        require_env("RPC_SERVER")
    );
    // alpha: a llama-server on the small model, the coordinator of the RPC pool `small`.
    let server = format!(
        "[[process]]\nname = \"server\"\nkind = \"llama-server\"\nargs = {}\n",
        llama_args(&models_a.join(file).display().to_string(), 8080, "")
    );
    let _alpha = AgentProcess::start(AgentSpec {
        extra_toml: server,
        ..AgentSpec::new(&ns_a, lab.path("agent-a"), &models_a, Some(token()))
    });
    let _beta = AgentProcess::start_bare(AgentSpec {
        extra_toml: worker,
        ..AgentSpec::new(&ns_b, lab.path("agent-b"), &models_b, Some(token()))
    });

    // status --json enrolls both and says so.
    let status = json(&tightwad(&config, &["status", "--json"]));
    let reachable: Vec<bool> = status
        .as_array()
        .expect("a list of hosts")
        .iter()
        .map(|h| h["reachable"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(reachable, [true, true], "{status}");

    // agent start HOST/NAME on a pipe: a plain line per step on stderr, the state on stdout.
    let started = tightwad(&config, &["agent", "start", "beta/rpc"]);
    let steps = String::from_utf8_lossy(&started.stderr);
    assert!(
        steps.contains("agent start: [1/2] connecting to the agent of beta/rpc\n")
            && steps
                .contains("agent start: [2/2] starting beta/rpc and waiting until it is ready\n")
            && steps.contains("agent start: beta/rpc ready in "),
        "{steps}"
    );
    assert!(!steps.contains('\r'), "no spinner on a pipe: {steps:?}");
    assert!(String::from_utf8_lossy(&started.stdout).starts_with("rpc ready pid="));
    // Again with --json (it runs: a no-op): one object with the process's state, no progress.
    let again = tightwad(&config, &["agent", "start", "beta/rpc", "--json"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let started = json(&again);
    assert_eq!(started["name"], "rpc");
    assert_eq!(started["state"], "ready", "{started}");

    // logs NAME: the coordinator finds beta itself; --json lines name the host.
    let logs = tightwad(&config, &["logs", "rpc", "--json", "-n", "200"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l["host"] == "beta" && l["process"] == "rpc"));
    assert!(
        lines.iter().any(|l| l["line"]
            .as_str()
            .is_some_and(|t| t.contains("started pid"))),
        "{lines:?}"
    );
    let unknown = Command::new(tightwad_bin())
        .arg("-c")
        .arg(&config)
        .args(["logs", "nothing-by-this-name"])
        .output()
        .expect("runs");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no reachable host runs a process"));

    // models copy on a pipe: plain progress lines on stderr (no bar), the summary on stdout.
    let copied = tightwad(
        &config,
        &[
            "models",
            "copy",
            file,
            "--to",
            "beta",
            "--max-rate",
            "40000000",
        ],
    );
    let progress = String::from_utf8_lossy(&copied.stderr);
    assert!(
        progress
            .lines()
            .any(|l| l.starts_with(&format!("{file}: ")) && l.contains("100%")),
        "{progress}"
    );
    assert!(
        !progress.contains('\r'),
        "no bar redraws on a pipe: {progress:?}"
    );
    assert!(String::from_utf8_lossy(&copied.stdout).starts_with(&format!("copied {file} to beta")));
    assert_eq!(
        sha256_file(&models_b.join(file)),
        sha256_file(&models_a.join(file))
    );
    // Again with --json: only the JSON summary, no progress.
    let again = tightwad(
        &config,
        &[
            "models", "copy", file, "--from", "alpha", "--to", "beta", "--json",
        ],
    );
    let summary = json(&again);
    assert_eq!(summary["file_name"], file);
    assert_eq!(summary["to"], "beta");
    assert_eq!(summary["sha256"].as_str().map(str::len), Some(64));
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("MiB"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // logs NAME -f follows: a restart after it started shows up in it. `-n 1` prints the last
    // line at once, which says the agent has subscribed the follower (it subscribes before it
    // sends the tail): the restart comes after that, so it cannot fall before the subscription.
    let mut follow = Command::new(tightwad_bin())
        .arg("-c")
        .arg(&config)
        .args(["logs", "rpc", "-f", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("logs -f runs");
    let followed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = follow.stdout.take().expect("stdout");
    let sink = followed.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut text) = sink.lock() {
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let text_now = || followed.lock().map(|t| t.clone()).unwrap_or_default();
    let wait_until = |what: &str, done: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = text_now();
            if done(&text) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "logs -f: {what} never showed up:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let tail = wait_until("the last line", &|t| t.contains('\n'));
    // The old two-word `HOST NAME` still works, and says to write HOST/NAME.
    let restarted = tightwad(&config, &["agent", "restart", "beta", "rpc", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&restarted.stderr).trim(),
        "warning: `beta rpc` (HOST NAME, two words) is deprecated; write beta/rpc"
    );
    let restarted = json(&restarted);
    assert_eq!(restarted["state"], "ready", "{restarted}");
    wait_until("the restart", &|t| {
        t.get(tail.len()..)
            .is_some_and(|after| after.contains("started pid"))
    });
    let _ = follow.kill();
    let _ = follow.wait();

    // agent stop --json.
    let stopped = json(&tightwad(&config, &["agent", "stop", "beta/rpc", "--json"]));
    assert_eq!(stopped["state"], "stopped", "{stopped}");

    // up on a pipe: doctor's check, the pool's worker, then its coordinator, a line each; then
    // the summary.
    let up = tightwad(&config, &["up", "small"]);
    let steps = String::from_utf8_lossy(&up.stderr);
    assert!(
        steps.contains("up: checking what would start (doctor, offline)\n")
            && steps.contains("up: checked in ")
            && steps.contains("up: [1/2] pool small: starting worker beta/rpc\n")
            && steps.contains("up: [2/2] pool small: starting alpha/server with --rpc ")
            && steps.contains("up: 1 started in "),
        "{steps}"
    );
    assert!(!steps.contains('\r'), "no spinner on a pipe: {steps:?}");
    assert!(String::from_utf8_lossy(&up.stdout).starts_with("pool small: alpha/server ready"));
    tightwad(&config, &["down", "small"]);
    // With --json: the JSON list on stdout, nothing on stderr.
    let up = tightwad(&config, &["up", "small", "--skip-doctor", "--json"]);
    assert!(
        String::from_utf8_lossy(&up.stderr).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert_eq!(json(&up)[0]["state"], "ready");
    tightwad(&config, &["down", "small", "--json"]);
    // The fleet library agrees with what the CLI printed.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _runtime = rt.enter();
    let fleet =
        fleet::Fleet::open(fleet::FleetConfig::load(&config).expect("config")).expect("fleet");
    let host = rt
        .block_on(fleet::logs::find_host(&fleet, "rpc"))
        .expect("beta has rpc");
    assert_eq!(host, "beta");
}
