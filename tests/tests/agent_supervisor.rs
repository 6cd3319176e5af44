//! The supervisor with real llama-server and rpc-server processes, driven over QUIC.
//!
//! Lives in the harness crate, not beside the agent: the agent is started as a binary in a network
//! namespace and enrolled through the coordinator's fleet code, so this tests both ends together
//! (the agent crate depends on no coordinator code, not even in its tests).

use tightwad_e2e::agents::*;
use tightwad_e2e::netns::*;
use tightwad_e2e::test_env::*;

use std::time::{Duration, Instant};
use tightwad_protocol::client::Client;
use tightwad_protocol::messages::{ProcessState, ProcessStatus, Reply};

fn processes_toml(models: &std::path::Path) -> String {
    let target = models.join("target.gguf");
    format!(
        r#"
[[process]]
name = "target"
kind = "llama-server"
args = ["-m", "{target}", "--host", "127.0.0.1", "--port", "8080", "-c", "256", "-t", "1", "-np", "1"]

[[process]]
name = "stuck"
kind = "llama-server"
args = ["-m", "{target}", "--host", "127.0.0.1", "--port", "8081", "-c", "256", "-t", "1"]
# The health check looks at a port nothing listens on: the server never becomes ready.
port = 9
ready_timeout_s = 3

[[process]]
name = "rpc"
kind = "rpc-server"
args = ["-H", "127.0.0.1", "-p", "50052"]
"#,
        target = target.display()
    )
}

struct Setup {
    _lab: Lab,
    agent: AgentProcess,
    client: Client,
    rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let rt = runtime();
    let mut lab = Lab::new();
    let ns = lab.add_namespace();
    let models = lab.path("models");
    stock_models(&models, &["target.gguf"]);
    let client_and_agent = {
        let _runtime = rt.enter();
        let fleet = fleet_for(&coordinator_config(
            lab.dir.path(),
            &lab.path("coordinator"),
            &[("alpha", &format!("{}:7420", ns.ip))],
        ));
        let token = issue_token(&fleet);
        let agent = AgentProcess::start(AgentSpec {
            ns: &ns,
            state_dir: lab.path("agent"),
            models: models.clone(),
            join: Some(token),
            extra_toml: processes_toml(&models),
        });
        let client = rt
            .block_on(fleet.connect(fleet.config.host("alpha").expect("host")))
            .expect("connect");
        (client, agent)
    };
    Setup {
        _lab: lab,
        agent: client_and_agent.1,
        client: client_and_agent.0,
        rt,
    }
}

fn process(setup: &Setup, name: &str) -> ProcessStatus {
    let status = setup.rt.block_on(setup.client.status()).expect("status");
    status
        .processes
        .into_iter()
        .find(|p| p.name == name)
        .expect("process listed")
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn logs(setup: &Setup, name: &str) -> String {
    setup.rt.block_on(async {
        let mut stream = setup.client.logs(name, 500, false).await.expect("logs");
        let mut text = String::new();
        while let Some(reply) = stream.next_reply().await.expect("log frame") {
            if let Reply::LogLines(lines) = reply {
                for line in lines {
                    text.push_str(&line.line);
                    text.push('\n');
                }
            }
        }
        text
    })
}

#[test]
fn llama_server_starts_restarts_after_a_crash_and_stops() {
    let setup = setup();
    let started = setup
        .rt
        .block_on(setup.client.start_process("target", None))
        .expect("start target");
    assert_eq!(started.state, ProcessState::Ready, "{started:?}");
    assert_eq!(started.port, Some(8080));
    let first_pid = started.pid.expect("pid");
    assert!(pid_alive(first_pid));
    assert!(
        logs(&setup, "target").contains("started pid"),
        "supervisor lines in the log"
    );
    // Starting again is a no-op; starting again with other arguments is refused.
    let same = setup
        .rt
        .block_on(setup.client.start_process("target", None))
        .expect("idempotent start");
    assert_eq!(same.pid, Some(first_pid));
    let err = setup
        .rt
        .block_on(
            setup
                .client
                .start_process("target", Some(vec!["-np".into(), "2".into()])),
        )
        .expect_err("other arguments while running");
    assert!(err.to_string().contains("already running"), "{err}");

    // Kill the child behind the supervisor's back: it comes back.
    std::process::Command::new("kill")
        .args(["-9", &first_pid.to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    let restarted = loop {
        let p = process(&setup, "target");
        if p.restarts >= 1 && p.state == ProcessState::Ready {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "never restarted: {p:?}\n{}",
            logs(&setup, "target")
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let second_pid = restarted.pid.expect("pid");
    assert_ne!(first_pid, second_pid);
    assert!(
        restarted
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("crashed")),
        "{restarted:?}"
    );
    let text = logs(&setup, "target");
    assert!(text.contains("restarting in"), "{text}");

    let stopped = setup
        .rt
        .block_on(setup.client.stop_process("target"))
        .expect("stop");
    assert_eq!(stopped.state, ProcessState::Stopped);
    assert!(
        !pid_alive(second_pid),
        "llama-server still running after stop"
    );
    assert!(logs(&setup, "target").contains("stopped pid"));
    let log_file = setup.agent.state_dir.join("logs").join("target.log");
    assert!(std::fs::read_to_string(log_file)
        .expect("log file")
        .contains("started pid"));
}

#[test]
fn readiness_timeout_is_reported_and_the_process_is_stopped() {
    let setup = setup();
    let err = setup
        .rt
        .block_on(setup.client.start_process("stuck", None))
        .expect_err("must time out");
    let text = err.to_string();
    assert!(
        text.contains("not ready within 3s") && text.contains("GET http://127.0.0.1:9/health"),
        "{text}"
    );
    let p = process(&setup, "stuck");
    assert_eq!(p.state, ProcessState::Failed);
    assert!(p.pid.is_none());
    let log = logs(&setup, "stuck");
    let pid: u32 = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("started pid ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|p| p.parse().ok())
        })
        .expect("started pid line");
    assert!(!pid_alive(pid), "timed-out server left running");
}

#[test]
fn bad_flags_are_refused_before_start_quoting_the_binary() {
    let setup = setup();
    let llama = require_env("LLAMA_SERVER");
    let args = |flag: &str| {
        Some(vec![
            flag.to_string(),
            "1".into(),
            "--port".into(),
            "8080".into(),
        ])
    };
    let err = setup
        .rt
        .block_on(setup.client.start_process("target", args("--np")))
        .expect_err("--np refused");
    let text = err.to_string();
    assert!(
        text.contains("\"--np\"") && text.contains(&llama) && text.contains("did you mean \"-np\""),
        "{text}"
    );
    assert!(
        text.contains("--parallel"),
        "quotes the binary's own help line: {text}"
    );
    let err = setup
        .rt
        .block_on(setup.client.start_process("target", args("--draft-max")))
        .expect_err("removed flag refused");
    assert!(err.to_string().contains("--spec-draft-n-max"), "{err}");
    let p = process(&setup, "target");
    assert_eq!(p.state, ProcessState::Stopped, "{p:?}");
    assert!(
        !logs(&setup, "target").contains("started pid"),
        "nothing was started"
    );
    // The agent is fine and the right spelling starts.
    let ok = setup.rt.block_on(setup.client.start_process(
        "target",
        Some(vec![
            "-m".into(),
            setup.agent.models.join("target.gguf").display().to_string(),
            "-np".into(),
            "1".into(),
            "-c".into(),
            "256".into(),
            "--port".into(),
            "8080".into(),
        ]),
    ));
    assert_eq!(ok.expect("valid flags start").state, ProcessState::Ready);
}

#[test]
fn rpc_server_is_ready_on_its_port_and_logs_its_banner() {
    let setup = setup();
    let started = setup
        .rt
        .block_on(setup.client.start_process("rpc", None))
        .expect("start rpc");
    assert_eq!(started.state, ProcessState::Ready);
    assert_eq!(started.port, Some(50052));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !logs(&setup, "rpc").contains("RPC server v") {
        assert!(
            Instant::now() < deadline,
            "no banner: {}",
            logs(&setup, "rpc")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let restarted = setup
        .rt
        .block_on(setup.client.restart_process("rpc"))
        .expect("restart");
    assert_eq!(restarted.state, ProcessState::Ready);
    assert_ne!(restarted.pid, started.pid);
}
